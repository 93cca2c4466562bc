"""torchrun: classes split over 2 gloo processes give the same synthetic set as one process."""
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from udd_fast import SyntheticSet

TESTS = Path(__file__).parent
SCRIPT = TESTS / "distill_tiny.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distill(out: Path, processes: int, step: str, policy: str) -> torch.Tensor:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(SCRIPT), str(out), step, policy]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return SyntheticSet.load(out / "synset.safetensors").images


# jitter and vote draw noise per image: keyed by (seed, step, global image index), not by the position of the
# image in this process's batch, so that the split of the classes over processes cannot change it.
@pytest.mark.parametrize("step,policy", [("loop", "activation"), ("batched", "activation"), ("loop", "jitter"),
                                         ("loop", "vote")])
def test_two_processes_equal_one(tmp_path, step, policy):
    one = distill(tmp_path / "one", 1, step, policy)
    two = distill(tmp_path / "two", 2, step, policy)
    if step == "loop":  # every class computed the same way, wherever it runs: bit-identical
        assert torch.equal(one, two)
    else:  # vmap over 2 instead of 4 classes may round differently
        assert torch.allclose(one, two, atol=1e-5)
    assert not (tmp_path / "two" / "checkpoint.tmp").exists()
