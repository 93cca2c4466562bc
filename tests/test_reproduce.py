"""The experiment harness: the paper protocol end to end at toy size, resuming, refusing other settings."""
import json
import shutil
from dataclasses import replace

import pytest
import torch

from udd_fast import Distiller, reproduce
from udd_fast.cli import main
from udd_fast.data import load_dataset
from udd_fast.errors import UDDError
from udd_fast.reproduce import ROW, STUDIES, Harness, render

TINY = {"outer": 1, "inner": 2, "width": 8}
TINY_EVAL = {"epochs": 1, "repeats": 2, "width": 8}
QUICK = {**TINY, "init": "real"}  # herding trains a network first: not needed to test resuming


@pytest.fixture(autouse=True)
def small_splits(monkeypatch):
    """2000 training and 500 test images keep the harness's many trainings and evaluations quick."""
    def load(name, train=True, root=None):
        d = load_dataset(name, train, root, download=False)
        n = 2000 if train else 500
        return type(d)(d.images[:n], d.labels[:n], d.mean, d.std, d.name, d.flip, d.num_classes)
    monkeypatch.setattr(reproduce, "load_dataset", load)


def harness(tmp_path, budget="paper", **kw):
    return Harness("fashion-mnist", budget, tmp_path / "work", tmp_path / "results" / "t", "cpu",
                   kw.pop("overrides", TINY), kw.pop("eval_overrides", TINY_EVAL), progress=False, **kw)


def test_paper_budget_end_to_end(tmp_path):
    """The paper budget's loop (batched step, auto precision, l1, jitter) runs every kind of row into a table and figures,
    every row under both protocols, every distilled row beside its initialisation."""
    table = harness(tmp_path).run([1], ["udd-f1-expanded", "idc-style", "udd@alexnet", "random"])
    rows = table.data["rows"]
    # a row evaluating another row's set puts that row on record first
    assert list(rows) == [f"ipc1/{k}" for k in ["udd-f1", "udd-f1-expanded", "idc-style", "udd", "udd@alexnet",
                                                 "random"]]
    cfg = rows["ipc1/udd"]["config"]
    assert (cfg["step"], cfg["precision"], cfg["metric"], cfg["outer"], cfg["inner"]) == ("batched", "auto", "l1", 1, 2)
    assert rows["ipc1/udd"]["precision"] in ("fp32", "bf16")  # what the auto probe chose
    assert cfg["regions"]["policy"] == "jitter" and cfg["cfc"]
    assert rows["ipc1/idc-style"]["config"]["regions"]["policy"] is None and not rows["ipc1/idc-style"]["config"]["cfc"]
    # sizes are counted honestly: factor 1 set of 10 images expanded by 12 windows each
    assert rows["ipc1/udd-f1"]["train_images"] == 10
    assert rows["ipc1/udd-f1-expanded"]["train_images"] == 130
    assert "distill_wall_s" not in rows["ipc1/udd-f1-expanded"] and rows["ipc1/udd-f1"]["distill_wall_s"] > 0
    assert rows["ipc1/udd"]["train_images"] == 10 * cfg["factor"] ** 2
    assert table.data["settings"]["protocols"]["plain"]["augment"] == "shift"
    assert rows["ipc1/udd"]["paper"] == 82.3 and rows["ipc1/random"]["paper"] == 51.4
    for key, r in rows.items():
        assert set(r["eval"]) == {"plain", "dsa"} and 0 < r["mue"] <= 1 and r["eval_wall_s"] > 0
        assert all(len(e["accs"]) == 2 for e in r["eval"].values())
        if key != "ipc1/random":  # a distilled set: its initialisation, scored the same way, and the gain
            assert set(r["init"]) == {"plain", "dsa"} and r["moved_px"] > 0
            assert r["init"]["plain"]["train_images"] == r["train_images"]
            assert r["gain"]["dsa"] == pytest.approx(r["eval"]["dsa"]["mean"] - r["init"]["dsa"]["mean"])
    # rows starting from the same images share one evaluation of them; the expanded form has its own
    assert rows["ipc1/udd"]["init"] == rows["ipc1/idc-style"]["init"]
    assert rows["ipc1/udd-f1-expanded"]["init"]["plain"]["train_images"] == 130
    assert len(table.data["inits"]) == 2 * 4  # (f1, f1 expanded, f2, f2 on alexnet) x 2 protocols
    md = table.md.read_text()
    assert "(set of `udd-f1`)" in md and "82.3 (UDD)" in md and "| plain % | init | gain |" in md
    assert "| DC (paper only; not run here) |" in md and "93.5" in md
    assert "the IDC-style ablation under `plain` at this budget" in md and "### Cross-architecture, IPC=1" in md
    assert json.loads(table.json.read_text()) == table.data
    figs = [f["file"] for f in table.data["figures"]]
    assert figs == ["t-acc-vs-mue.png", "t-grids-ipc1.png", "t-windows-ipc1.png"]
    for f in figs:
        assert (table.path.parent / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f in md
    # resumed on a machine without the sets (a committed table): the figures drawn from them are kept
    shutil.rmtree(tmp_path / "work")
    assert harness(tmp_path).run([1], ["random"]).data["figures"] == table.data["figures"]


def test_resumes_instead_of_recomputing(tmp_path, monkeypatch):
    h = harness(tmp_path, "cpu-quick", overrides=QUICK, eval_overrides={**TINY_EVAL, "repeats": 1})
    h.run([1], ["random", "idc-style"])
    first = h.table.data["rows"]["ipc1/random"]
    monkeypatch.setattr(reproduce, "random_baseline", lambda *a, **k: pytest.fail("recomputed a finished row"))
    again = harness(tmp_path, "cpu-quick", overrides=QUICK, eval_overrides={**TINY_EVAL, "repeats": 1})
    again.run([1], ["random", "idc-style"])
    assert again.table.data["rows"]["ipc1/random"] == first
    assert len(again.table.data["commands"]) == 2
    # a set whose evaluation was interrupted is evaluated again without distilling it again
    done = again.table.data["rows"].pop("ipc1/idc-style")
    monkeypatch.setattr(reproduce.Distiller, "run", lambda *a, **k: pytest.fail("distilled a saved set"))
    redone = again.result(1, ROW["idc-style"])
    assert redone["train_images"] == 40 and redone["init"] == done["init"] and redone["moved_px"] == done["moved_px"]
    with pytest.raises(UDDError, match="other settings"):
        harness(tmp_path, "cpu-quick", overrides=QUICK, eval_overrides={**TINY_EVAL, "repeats": 3})
    with pytest.raises(UDDError, match="other settings"):
        harness(tmp_path, "cpu-quick", overrides=QUICK, eval_overrides={**TINY_EVAL, "repeats": 1},
                protocols=["plain", "idc"])


def test_a_resumed_row_counts_the_steps_before_its_interruption(tmp_path, monkeypatch):
    """A row cut short and resumed reports what its set cost in all: this process's time and the steps timed in
    the checkpoint's history."""
    kw = dict(overrides={**QUICK, "outer": 2}, protocols=["plain"], eval_overrides={**TINY_EVAL, "repeats": 1})
    h = harness(tmp_path, "cpu-quick", **kw)
    path = h.set_path(1, ROW["idc-style"])
    Distiller(h.train, h.config(1, ROW["idc-style"]), "cpu", path.parent).run(progress=False)
    path.unlink()  # the set is gone, its final checkpoint is left: the row resumes after its last step
    history = json.loads((path.parent / "history.json").read_text())
    before = sum(r["seconds"] for r in history)
    monkeypatch.setattr(reproduce.time, "time", lambda: 0.0)  # this process adds nothing measurable
    made = h.run([1], ["idc-style"]).data["rows"]["ipc1/idc-style"]
    assert made["resumed"] and len(history) == 4 and before > 0
    assert made["distill_wall_s"] == pytest.approx(before)


def test_a_fixed_precision_joins_a_table_made_in_the_budgets(tmp_path):
    """Rows added on another machine can fix the precision (distillation and evaluation) without starting another
    table; each such row says so, and the table says which."""
    kw = dict(overrides=QUICK, protocols=["plain"], eval_overrides={**TINY_EVAL, "repeats": 1})
    made = harness(tmp_path, "cpu-quick", **kw).run([1], [])  # a table on disk, made in the budget's precision
    assert made.json.exists() and made.data["settings"]["protocols"]["plain"]["precision"] == "auto"
    h = harness(tmp_path, "cpu-quick", precision="fp32", **kw)
    assert h.config(1, ROW["udd"]).precision == "fp32" and h.evaluations(1)["plain"].precision == "fp32"
    assert harness(tmp_path, "cpu-quick", **kw).config(1, ROW["udd"]).precision == "auto"
    rows = h.run([1], ["random"]).data["rows"]
    assert rows["ipc1/random"]["precision_fixed"] == "fp32"
    assert "fixed by `--precision` (the others: the budget's): `random` fp32." in render(h.table.data)


def test_studies_and_errors(tmp_path):
    assert all(k in ROW for keys in STUDIES.values() for k in keys)
    quick = reproduce.BUDGETS["cpu-quick"]
    assert quick.evaluation_at(1) == {"precision": "auto"}
    assert quick.evaluation_at(10) == {"precision": "auto", "epochs": 100, "repeats": 2}
    h = harness(tmp_path, "cpu-quick")
    assert h.evaluations(10)["plain"].epochs == 1 and h.evaluations(1)["dsa"].repeats == 2  # overrides come last
    assert h.evaluations(1, "alexnet")["plain"].model == "alexnet"
    assert {ROW[k].changes["regions"]["p"] for k in STUDIES["windows"] if k != "udd"} == {3, 5}
    with pytest.raises(UDDError, match="unknown rows"):
        harness(tmp_path).run([1], ["nope"])
    with pytest.raises(UDDError, match="unknown budget"):
        Harness("fashion-mnist", "gpu-fast", tmp_path)
    with pytest.raises(UDDError, match="unknown evaluation protocol"):
        harness(tmp_path, protocols=["plain", "fancy"])
    assert main(["reproduce", "--rows", "nope", "--work", str(tmp_path), "--quiet"]) == 2


def test_render_marks_a_loss_to_the_ablation():
    scores = {"plain": {"mean": 70.0, "std": 0.5}, "dsa": {"mean": 72.0, "std": 0.5}}
    row = {"ipc": 1, "label": "x", "train_images": 40, "eval": scores, "init": scores, "gain": {"plain": 0, "dsa": 0},
           "moved_px": 0.01, "mue": 0.9, "eval_wall_s": 1.0, "distill_wall_s": 2.0, "source": "udd", "paper": 82.3,
           "paper_method": "UDD"}
    protocols = {n: reproduce.asdict(reproduce.protocol(n)) for n in ("plain", "dsa")}
    # a command resumed after interruptions is one line: first start, how many runs, how the last one ended
    commands = [{"command": "reproduce a", "started": "t1", "machine": "m"},
                {"command": "reproduce b", "started": "t2", "machine": "m"},
                {"command": "reproduce a", "started": "t3", "machine": "m", "finished": "t4"}]
    data = {"dataset": "fashion-mnist", "budget": "cpu-quick", "commands": commands, "figures": [],
            "settings": {"overrides": {}, "protocols": protocols, "larger": [10, {"epochs": 100}]},
            "rows": {"ipc1/udd": row, "ipc1/idc-style": {**row, "eval": {**scores, "plain": {"mean": 71.0, "std": 0.5}},
                                                          "source": "idc-style"}}}
    md = render(data)
    assert md.count("- `reproduce") == 2
    assert "- `reproduce a` (started t1, run 2 times, finished t4; m)" in md
    assert "- `reproduce b` (started t2, interrupted or still running; m)" in md
    assert "UDD does not beat the IDC-style ablation under `plain` at this budget: -1.00 points" in md
    assert 'From IPC=10 on, every protocol changes: `{"epochs": 100}`' in md
    assert "`plain`: convnet (width 128), 300 epochs" in md and "random shifts of up to 4 px" in md


def test_budget_rows_give_the_gap_against_steps(tmp_path):
    def row(key, steps, plain, dsa):
        scores = {"plain": {"mean": plain, "std": 0.5}, "dsa": {"mean": dsa, "std": 0.4}}
        return {"ipc": 1, "label": key, "train_images": 40, "eval": scores, "init": scores, "mue": 0.9,
                "gain": {"plain": 0, "dsa": 0}, "moved_px": 0.01, "eval_wall_s": 1.0, "distill_wall_s": 2.0,
                "source": key, "config": {"outer": steps // 100, "inner": 100},
                "step_s_median": 4.0 if key.startswith("udd") else 3.0}

    rows = {"ipc1/udd": row("udd", 300, 30.0, 33.0), "ipc1/idc-style": row("idc-style", 300, 31.0, 32.5),
            "ipc1/udd-s1000": row("udd-s1000", 1000, 35.0, 36.0),
            "ipc1/idc-style-s1000": row("idc-style-s1000", 1000, 34.5, 36.5), "ipc1/random": row("random", 0, 15, 15),
            "ipc1/udd-no-cfc": row("udd-no-cfc", 300, 28.0, 31.0)}
    points = reproduce.budget_points(rows, 1, ["plain", "dsa"])
    assert sorted((p["group"], p["steps"], p["mean"]) for p in points if p["group"].endswith("(plain)")) == [
        ("idc-style (plain)", 300, 31.0), ("idc-style (plain)", 1000, 34.5), ("udd (plain)", 300, 30.0),
        ("udd (plain)", 1000, 35.0)]
    protocols = {n: reproduce.asdict(reproduce.protocol(n)) for n in ("plain", "dsa")}
    md = render({"dataset": "cifar10", "budget": "cpu-quick", "commands": [], "figures": [], "rows": rows,
                 "settings": {"overrides": {}, "protocols": protocols, "larger": None}})
    assert "### Budget, IPC=1: UDD against the IDC-style ablation at equal steps" in md
    assert "| 300 | -1.00 | +0.50 |" in md and "| 1000 | +0.50 | -0.50 |" in md
    # each change against its control, under both protocols: a gain only where both differences exceed the noise
    assert "| CFC | `udd` | `udd-no-cfc` | +2.00 ± 0.71 | +2.00 ± 0.57 | gain |" in md
    assert "| the regions and CFC (UDD against IDC-style) | `udd` | `idc-style` | -1.00 ± 0.71 | +0.50 ± 0.57 | neither |" in md
    # at equal wall time: UDD's 300 steps take 1/3 h, when IDC-style (3 s a step) is 1/7 of the way to 1,000 steps
    assert "| `udd` | 300 | 0.33 | -1.50 | -0.07 |" in md and "| `udd` | 1000 | 1.11 | — | — |" in md
    assert [p["hours"] for p in points if p["group"] == "udd (plain)"] == [pytest.approx(1 / 3), pytest.approx(10 / 9)]
    reproduce.figures.accuracy_vs_steps(points, tmp_path / "b.png", title="t")
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    reproduce.figures.accuracy_vs_hours(points, tmp_path / "h.png", title="t")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_paper_budget_on_cifar10_at_both_ipcs(tmp_path):
    """The paper's CIFAR-10 protocol (mse, IDC's CIFAR image lr, 2,000 real images per network update, jitter,
    CFC) end to end at toy size, from CIFAR-10's python batches on disk, at IPC=1 and IPC=10."""
    from test_data import write_cifar_batches

    write_cifar_batches(tmp_path / "data", per_class=8)
    h = Harness("cifar10", "paper", tmp_path / "work", tmp_path / "results" / "c10", "cpu", {**TINY, "inner": 1},
                {**TINY_EVAL, "repeats": 1}, data_root=tmp_path / "data", progress=False, protocols=["plain"])
    table = h.run([1, 10], ["udd", "idc-style"])
    rows = table.data["rows"]
    assert list(rows) == ["ipc1/udd", "ipc1/idc-style", "ipc10/udd", "ipc10/idc-style"]
    cfg = rows["ipc10/udd"]["config"]
    assert (cfg["metric"], cfg["net_batches"], cfg["lr_img"]) == ("mse", 32, pytest.approx(5e-3))
    assert rows["ipc10/udd"]["train_images"] == 400 and rows["ipc1/udd"]["paper"] == 54.6
    assert rows["ipc10/idc-style"]["paper"] == 67.5 and "88.1" in table.md.read_text()


def test_hypothesis_and_budget_rows_change_what_they_say():
    from types import SimpleNamespace

    h = SimpleNamespace(budget=reproduce.BUDGETS["cpu-quick"], dataset="cifar10", overrides={}, precision=None)
    base, lr = Harness.config(h, 1, ROW["idc-style"]), Harness.config(h, 1, ROW["idc-style-lr1.2"])
    assert lr.lr_img == pytest.approx(1.2 * base.lr_img) and lr.replace(lr_img=base.lr_img) == base
    assert (base.outer * base.inner, base.regions.policy, base.cfc) == (300, None, False)
    on_top = Harness.config(h, 1, ROW["udd-on-top"])
    assert on_top.regions.crops_on_top and on_top.regions.crop_share == 0.2
    assert Harness.config(h, 1, ROW["udd-random"]).regions.policy == "random"
    assert Harness.config(h, 1, ROW["udd-layer0"]).regions.layer == 0 and "udd-layer0" in STUDIES["hypotheses"]
    own = Harness.config(h, 1, ROW["udd-on-top-own-draw"])
    assert own.replace(regions=replace(own.regions, crop_draw="parent")) == on_top
    assert ROW["idc-style-f1-expanded"].source == "idc-style-f1" and ROW["idc-style-f1-expanded"].expand
    steps = {k: (Harness.config(h, 1, ROW[k]).outer, Harness.config(h, 1, ROW[k]).inner) for k in reproduce.BUDGET_ROWS}
    assert steps == {f"{k}-s{n}": (n // 100, 100) for k in ("udd", "udd-on-top", "idc-style") for n in (1000, 3000)}
    assert [k for k in STUDIES["budget"] if "on-top" in k] == []  # run by --rows when the crops on top win
    assert Harness.config(h, 1, ROW["idc-style-s3000"]).replace(outer=3) == base


def test_longer_budget_rows_continue_the_shorter_runs(tmp_path, monkeypatch):
    """A budget row continues the finished run of its method with the most steps below its own (the base row,
    then the shorter budget rows), and ends with the set a run from step 0 gives; the cost it reports is the
    whole run's. With lr_img decaying (the step then depends on the run's length) it starts from scratch."""
    rows = {key: reproduce.Row(key, key, changes={"outer": outer, "inner": 2}) for key, outer in (("udd-s4", 2),
                                                                                                 ("udd-s8", 4))}
    for key, row in rows.items():
        monkeypatch.setitem(ROW, key, row)
    monkeypatch.setattr(reproduce, "BUDGET_ROWS", list(rows))
    overrides = {**QUICK, "inner": 2}
    kw = dict(overrides=overrides, protocols=["plain"], eval_overrides={**TINY_EVAL, "repeats": 1})
    h = harness(tmp_path / "a", "cpu-quick", **kw)
    made = h.run([1], ["udd", "udd-s4", "udd-s8"]).data["rows"]
    assert made["ipc1/udd-s4"]["continued"]["from"] == "udd" and made["ipc1/udd-s8"]["continued"]["from"] == "udd-s4"
    assert made["ipc1/udd-s8"]["continued"]["outer"] == 2
    assert made["ipc1/udd-s8"]["distill_wall_s"] > made["ipc1/udd-s8"]["continued"]["distill_wall_s"] > 0
    alone = harness(tmp_path / "b", "cpu-quick", **kw)
    alone.run([1], ["udd-s8"])
    assert "continued" not in alone.table.data["rows"]["ipc1/udd-s8"]
    sets = [x.set_path(1, ROW["udd-s8"]) for x in (h, alone)]
    from udd_fast.synset import SyntheticSet

    assert torch.equal(*(SyntheticSet.load(p).images for p in sets))
    history = [json.loads((p.parent / "history.json").read_text()) for p in sets]
    assert [r["match"] for r in history[0]] == [r["match"] for r in history[1]] and len(history[0]) == 8
    decayed = h.config(1, ROW["udd-s8"]).replace(lr_decay=(0.5,))
    assert h.continue_shorter(1, ROW["udd-s8"], decayed, tmp_path / "c") is None
