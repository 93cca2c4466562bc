"""Crash-safe checkpoints and --resume: a killed run, resumed, ends exactly like an uninterrupted one."""
import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from udd_fast import Distiller, RegionConfig, SyntheticSet
from udd_fast.errors import UDDError

from tiny import fixed_net_config, tiny_data

TESTS = Path(__file__).parent
SCRIPT = f"""
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {str(TESTS)!r})
from test_resume import config
from tiny import tiny_data
from udd_fast import Distiller
Distiller(tiny_data(), config(), out_dir=sys.argv[1]).run(progress=False, resume=True)
"""


def config(**kw):
    return fixed_net_config(**{**dict(outer=8, inner=3, net_batches=1, net_batch=8, cfc=True, lr_img=1.0,
                                      checkpoint_every=1, dsa="color_crop_cutout",
                                      regions=RegionConfig(policy="jitter", p=3)), **kw})


def launch(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert launch(whole).wait(timeout=300) == 0
    proc = launch(killed)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.uniform(0, 0.3))  # somewhere inside a later outer iteration, or during a checkpoint write
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "synset.safetensors").exists()
    assert launch(killed).wait(timeout=300) == 0
    a = SyntheticSet.load(whole / "synset.safetensors").images
    b = SyntheticSet.load(killed / "synset.safetensors").images
    assert torch.equal(a, b)


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    cfg = config(outer=3)
    whole = Distiller(tiny_data(), cfg, out_dir=tmp_path / "a").run(progress=False)
    run = tmp_path / "b"
    Distiller(tiny_data(), cfg, out_dir=run).run(progress=False)
    newest = run / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[:200])  # truncated: the previous checkpoint (outer 2) is used
    with pytest.warns(UserWarning, match="unreadable"):
        resumed = Distiller(tiny_data(), cfg, out_dir=run).run(progress=False, resume=True)
    assert torch.equal(whole.images, resumed.images)
    (run / "checkpoint.prev.pt").write_bytes(b"not a checkpoint")
    newest.write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(UDDError, match="no readable checkpoint"):
        Distiller(tiny_data(), cfg, out_dir=run).run(progress=False, resume=True)


def test_resume_with_other_settings_is_refused(tmp_path):
    Distiller(tiny_data(), config(outer=1), out_dir=tmp_path).run(progress=False)
    with pytest.raises(UDDError, match="other settings.*lr_img"):
        Distiller(tiny_data(), config(outer=1, lr_img=2.0), out_dir=tmp_path).run(progress=False, resume=True)


def test_a_checkpoint_older_than_a_region_setting_resumes_as_its_default(tmp_path):
    """A setting added to RegionConfig after a run was checkpointed counts as its default, as a top-level one does."""
    from udd_fast import checkpoint

    cfg = config(outer=1)
    Distiller(tiny_data(), cfg, out_dir=tmp_path).run(progress=False)
    state = checkpoint.load(tmp_path)
    saved = json.loads(state["config"])
    del saved["regions"]["crop_draw"]
    checkpoint.save(tmp_path, {**state, "config": json.dumps(saved)})
    Distiller(tiny_data(), cfg, out_dir=tmp_path).run(progress=False, resume=True)
    own = cfg.replace(regions=replace(cfg.regions, crop_draw="own"))
    with pytest.raises(UDDError, match="other settings.*regions"):
        Distiller(tiny_data(), own, out_dir=tmp_path).run(progress=False, resume=True)
