"""The command line: one-line errors that name the fix, and a small run through every command."""
import json
import subprocess
import sys

import pytest
import torch

from udd_fast.cli import main
from udd_fast.synset import SyntheticSet


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "udd_fast", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,needle", [
    (["distill", "--dataset", "fashion-mnist", "--ipc", "1", "--preset", "turbo", "--out", "x"], "invalid choice"),
    (["distill", "--dataset", "imagenet", "--ipc", "1", "--out", "x"], "invalid choice"),
    (["distill", "--dataset", "fashion-mnist", "--ipc", "7000", "--out", "{tmp}"], "ipc=7000"),
    (["distill", "--dataset", "fashion-mnist", "--ipc", "1", "--lowest-p", "13", "--out", "{tmp}"], "P=13"),
    (["distill", "--dataset", "fashion-mnist", "--ipc", "1", "--preset", "paper", "--crops-on-top", "--out", "{tmp}"],
     "set crop_share"),
    (["evaluate", "{tmp}/missing.safetensors"], "no synthetic set"),
    (["evaluate", "{tmp}/missing.safetensors", "--protocols", "fancy"], "invalid choice"),
])
def test_bad_input_is_one_line(tmp_path, args, needle):
    r = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error") or "error:" in ln]) == 1


def test_image_too_small_for_windows(tmp_path, monkeypatch, capsys):
    from udd_fast import cli
    from udd_fast.data import RealData

    tiny = RealData.from_tensors(torch.rand(40, 1, 4, 4), torch.arange(40) % 10, name="tiny")
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: tiny)
    assert main(["distill", "--dataset", "mnist", "--ipc", "1", "--out", str(tmp_path), "--quiet"]) == 2
    assert "too small for windows" in capsys.readouterr().err


def test_distill_evaluate_show_on_a_tiny_dataset(tmp_path, monkeypatch, capsys):
    from udd_fast import cli
    from udd_fast.data import RealData

    g = torch.Generator().manual_seed(0)
    tiny = RealData.from_tensors(torch.rand(40, 1, 12, 12, generator=g), torch.arange(40) % 4, name="tiny")
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: tiny)
    out = tmp_path / "run"
    assert main(["distill", "--dataset", "mnist", "--ipc", "1", "--out", str(out), "--outer", "1", "--inner", "2",
                 "--width", "8", "--step", "batched", "--precision", "bf16", "--evaluate", "--baseline", "--epochs", "2",
                 "--repeats", "2", "--crops-on-top", "--crop-draw", "own", "--crop-sample", "0.5", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["config"]["step"], metrics["config"]["precision"]) == ("batched", "bf16")
    assert metrics["config"]["regions"]["crops_on_top"] and metrics["config"]["regions"]["crop_share"] == 0.2
    assert metrics["config"]["regions"]["crop_draw"] == "own" and metrics["config"]["regions"]["crop_sample"] == 0.5
    assert {"evaluation", "moved_px", "form", "distill_wall_s", "config"} <= set(metrics)
    assert set(metrics["evaluation"]) == {"plain", "dsa"}  # both protocols by default, each with the init beside
    for name, scored in metrics["evaluation"].items():
        assert {"set", "init", "random", "gain"} <= set(scored) and scored["set"]["protocol"]["name"] == name
        assert scored["set"]["train_images"] == 4 * 4 and len(scored["set"]["accs"]) == 2  # factor 2: 4 tiles each
        assert scored["init"]["train_images"] == 4 * 4 and scored["random"]["train_images"] == 4
        assert scored["gain"] == pytest.approx(scored["set"]["mean"] - scored["init"]["mean"])
    assert metrics["moved_px"] > 0
    report = capsys.readouterr().out
    assert "plain" in report and "dsa" in report and "gain" in report
    assert (out / "grid.png").exists() and (out / "synset.safetensors").exists() and (out / "init.safetensors").exists()
    assert main(["evaluate", str(out / "synset.safetensors"), "--expand", "yes", "--epochs", "1", "--repeats", "1",
                 "--protocols", "plain", "idc", "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    scored = json.loads((tmp_path / "e.json").read_text())["evaluation"]
    assert set(scored) == {"plain", "idc"} and scored["idc"]["set"]["train_images"] == 16 * 13
    assert scored["idc"]["init"]["train_images"] == 16 * 13  # the init found beside the set, in the same form
    assert main(["evaluate", str(out / "synset.safetensors"), "--no-init", "--epochs", "1", "--repeats", "1",
                 "--json", str(tmp_path / "f.json"), "--quiet"]) == 0
    assert set(json.loads((tmp_path / "f.json").read_text())["evaluation"]["plain"]) == {"set"}
    assert main(["show", str(out / "synset.safetensors"), "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").exists()
    assert main(["baseline", "--dataset", "mnist", "--ipc", "2", "--method", "herding", "--epochs", "1",
                 "--repeats", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "herding, ipc 2" in out and "plain" in out and "dsa" in out


@pytest.mark.parametrize("command", ["distill", "evaluate", "baseline", "show", "reproduce", "estimate", "prepare"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["folders", "batches"])
def test_distill_cifar10_from_either_layout_on_disk(tmp_path, layout, capsys):
    """`distill --dataset cifar10 --data-root DIR` on the JPEG class-folder layout and on torchvision's python
    batches, with CIFAR-10's defaults: mse matching, IDC's CIFAR image lr, flips, its published statistics."""
    from test_data import write_cifar_batches, write_folder

    from udd_fast.data import DATASETS

    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if layout == "folders":
        write_folder(tmp_path / "train", names, per_class=4, ext="jpg")
        write_folder(tmp_path / "test", names, per_class=1, ext="jpg")
    else:
        write_cifar_batches(tmp_path, per_class=1)
    out = tmp_path / "run"
    assert main(["distill", "--dataset", "cifar10", "--data-root", str(tmp_path), "--ipc", "1", "--out", str(out),
                 "--outer", "1", "--inner", "1", "--width", "8", "--precision", "fp32", "--evaluate", "--baseline",
                 "--epochs", "1", "--repeats", "1", "--protocols", "plain", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["config"]["metric"], metrics["config"]["lr_img"]) == ("mse", pytest.approx(3 * 5e-3 / 10))
    assert metrics["evaluation"]["plain"]["set"]["train_images"] == 40
    syn = SyntheticSet.load(out / "synset.safetensors")
    assert syn.dataset == "cifar10" and syn.mean == DATASETS["cifar10"][4] and syn.images.shape == (10, 3, 32, 32)


def test_auto_precision_is_timed_once_per_machine_and_shape(tmp_path, monkeypatch):
    """``--precision auto`` times fp32 and bf16 on the first run only (where bf16 has a hardware path: forced
    here); the next run of the same shape starts without timing and says where its choice came from;
    ``--precision-probe`` times again."""
    from udd_fast import cli, distiller
    from udd_fast.data import RealData

    tiny = RealData.from_tensors(torch.rand(40, 1, 12, 12), torch.arange(40) % 4, name="tiny")
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: tiny)
    monkeypatch.setattr(distiller, "bf16_is_fast", lambda device_type: True)
    timed = []
    monkeypatch.setattr(distiller.Distiller, "step_seconds", lambda self, syn, p, probe: timed.append(p) or 1.0)
    runs = []
    for extra in ([], [], ["--precision-probe"]):
        out = tmp_path / f"run{len(runs)}"
        assert main(["distill", "--dataset", "mnist", "--ipc", "1", "--out", str(out), "--outer", "1", "--inner", "1",
                     "--width", "8", "--precision", "auto", "--quiet", *extra]) == 0
        runs.append((len(timed), json.loads((out / "metrics.json").read_text())["precision_probe"]))
        timed.clear()
    (first, probe), (second, recalled), (third, again) = runs
    assert first == third == 6 and second == 0  # one untimed step and two timed ones per precision
    assert "remembered" not in probe and recalled["remembered"] and recalled["chosen"] == probe["chosen"]
    assert "remembered" not in again


def test_estimate_projects_the_whole_run(tmp_path, capsys):
    out = tmp_path / "estimate.json"
    assert main(["estimate", "--dataset", "cifar10", "--preset", "idc", "--ipc", "1", "--steps", "2", "--width", "8",
                 "--json", str(out), "--quiet", "--device", "cpu"]) == 0
    r, = json.loads(out.read_text())
    assert len(r["steps_timed"]) == 2 and r["step_s"] > 0 and (r["outer"], r["inner"]) == (2000, 100)
    assert r["distill_hours"] == pytest.approx(r["step_s"] * 200_000 / 3600)
    assert "h of distillation" in capsys.readouterr().out
