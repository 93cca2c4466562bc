"""The experiment harness: distil, evaluate and tabulate the paper's comparisons, resumably.

A *table* is a JSON file (and the markdown rendered from it) holding one result per (IPC, row). Every row is
scored under each evaluation protocol of the table (default ``plain`` and ``dsa``), and every distilled row
beside its own initialisation, scored the same way: its gain is the difference, and ``moved_px`` says how far
distillation moved the stored pixels. Every row is written as soon as it is done, and a rerun skips the rows
already there, so an interrupted table continues where it stopped; a distillation killed half-way continues
from its last checkpoint. Rows that evaluate an existing set (the expanded form, other architectures) reuse
that row's saved synthetic set. A *budget* (``cpu-quick`` or ``paper``) fixes the preset every row starts
from and how the evaluation protocols are shortened for larger sets.

Studies (groups of rows; a row shared by two studies is run once):

- ``main``: paper Table 1 and its ablations: UDD, UDD per policy, UDD without CFC, the IDC-style ablation
  (no regions, no CFC), Herding and Random coresets, beside the paper's numbers.
- ``forms``: what downstream networks train on (S alone, S expanded by its 12 windows, multi-formation).
- ``windows``: paper Table 5, the candidate windows: N=4 of each size, N=8, N=12.
- ``cross-arch``: paper Table 6, the UDD and IDC-style sets evaluated on ConvNet, ResNet18, VGG11, AlexNet.
- ``hypotheses``: why the regions do or do not help, each row against its control: the crops' weight (added on
  top of the tiles' IDC-style weight, against IDC-style with a step as large), the windows on the stored image
  at factor 1 with the networks trained on what was matched (S expanded by its windows, for UDD and for
  IDC-style alike), the policy (against P random windows), and CFC.
- ``budget``: UDD and IDC-style at growing numbers of steps (the budget's own, then :data:`BUDGET_STEPS`). A
  longer run goes on from the final checkpoint of the same method's shorter one (:meth:`Harness.continue_shorter`),
  so 300, 1,000 and 3,000 steps cost 3,000 steps per method, not 4,300.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from udd_fast import checkpoint, figures
from udd_fast.config import CPU_QUICK_NOTES, UDDConfig, preset
from udd_fast.coreset import herding_coreset, real_network
from udd_fast.cpu import cpu_model
from udd_fast.data import load_dataset
from udd_fast.distiller import Distiller
from udd_fast.errors import UDDError
from udd_fast.files import atomic_write
from udd_fast.evaluate import (DEFAULT_PROTOCOLS, EvalProtocol, evaluate, evaluate_images, moved, protocol,
                               random_baseline)
from udd_fast.formation import decode
from udd_fast.losses import bf16_units
from udd_fast.regions import candidate_windows, select_windows
from udd_fast.synset import SyntheticSet

# Published accuracies (%) by method and IPC: UDD paper Table 1 (DC, IDC and UDD rows as reported there).
PAPER = {"fashion-mnist": {"Random": {1: 51.4, 10: 73.8, 50: 82.5}, "DC": {1: 70.5, 10: 82.3, 50: 83.6},
                           "IDC": {1: 81.0, 10: 86.0, 50: 86.2}, "UDD": {1: 82.3, 10: 86.6, 50: 86.8},
                           "Full dataset": {1: 93.5, 10: 93.5, 50: 93.5}},
         "cifar10": {"Random": {1: 14.4, 10: 26.0, 50: 43.4}, "Herding": {1: 21.5, 10: 31.6, 50: 40.4},
                     "IDC": {1: 50.6, 10: 67.5, 50: 74.5}, "UDD": {1: 54.6, 10: 68.9, 50: 75.4},
                     "Full dataset": {1: 88.1, 10: 88.1, 50: 88.1}},
         "cifar100": {"Random": {1: 4.2, 10: 14.6, 50: 30.0}, "Herding": {1: 8.4, 10: 17.3, 50: 33.7},
                      "IDC": {10: 44.8}, "UDD": {1: 27.9, 10: 45.8, 50: 51.3},
                      "Full dataset": {1: 56.2, 10: 56.2, 50: 56.2}}}


@dataclass(frozen=True)
class Budget:
    """How every row of a table is distilled (a preset) and how its evaluation protocols are shortened."""

    preset: str
    notes: str
    evaluation: dict = field(default_factory=dict)  # changes to every evaluation protocol
    larger: tuple[int, dict] | None = None    # from this IPC on, these further changes

    def evaluation_at(self, ipc: int) -> dict:
        return {**self.evaluation, **(self.larger[1] if self.larger and ipc >= self.larger[0] else {})}


BUDGETS = {
    # evaluation costs ~1.7 ms per training image per epoch on 2 CPU cores: at IPC=10 (400 decoded images) 300
    # epochs x 3 networks would take about 10 minutes per protocol and row
    "cpu-quick": Budget("cpu-quick", CPU_QUICK_NOTES + " Evaluation: every protocol as named, with bf16 autocast "
                        "where the CPU has it (same accuracy within noise: IDC's set under `plain`, 70.77 ± 0.37 fp32, "
                        "70.67 ± 0.43 bf16); 100 epochs and 2 networks from IPC=10 on.", {"precision": "auto"},
                        (10, {"epochs": 100, "repeats": 2})),
    "cpu-hour": Budget("cpu-hour", "cpu-hour is cpu-quick run about an hour a CIFAR-10 row on 2 cores: 10 x 100 iterations "
                       "at IPC=1 and 4 x 50 above. " + CPU_QUICK_NOTES + " Evaluation as cpu-quick's.",
                       {"precision": "auto"}, (10, {"epochs": 100, "repeats": 2})),
    "paper": Budget("paper", "The `paper` preset: the UDD paper where it speaks, IDC's public code where it is "
                    "silent (udd_fast/config.py). Meant for a GPU."),
}


@dataclass(frozen=True)
class Row:
    """One line of a table: a distillation (``changes`` to the protocol's config), the evaluation of another
    row's set (``source``, optionally ``expand``-ed or on ``model``), or a coreset baseline."""

    key: str
    label: str
    kind: str = "distill"                 # distill | random | herding
    changes: dict = field(default_factory=dict)
    source: str | None = None
    expand: bool = False
    model: str | None = None
    paper: str | None = None              # the published method this row stands for
    lr_scale: float = 1.0                 # lr_img times this (a control for a change that enlarges the step)


def _windows_row(groups: tuple[float, ...], label: str) -> Row:
    # Table 5 varies N; P keeps UDD's ratio P/N = 8/12
    return Row(f"udd-n{4 * len(groups)}-" + "-".join(f"{g:.2f}" for g in groups), label,
               changes={"regions": {"groups": groups, "p": max(1, round(8 * len(groups) / 3))}})


#: the budget study's longer runs (inner steps at IPC=1; the budget's own rows are its 300)
BUDGET_STEPS = (1000, 3000)

ROWS = [Row("udd", "UDD (the budget's preset: jitter policy, P=8, CFC)", paper="UDD"),
        Row("udd-uniform", "UDD, crops weighted as a plain batch (P/(P+1))", changes={"regions": {"crop_share": None}}),
        Row("udd-activation", "UDD, activation policy", changes={"regions": {"policy": "activation"}}),
        Row("udd-gradient", "UDD, gradient policy", changes={"regions": {"policy": "gradient"}}),
        Row("udd-vote", "UDD, vote of the three policies", changes={"regions": {"policy": "vote"}}),
        Row("udd-no-cfc", "UDD without CFC", changes={"cfc": False}),
        Row("idc-style", "IDC-style ablation (no regions, no CFC)", changes={"regions": {"policy": None}, "cfc": False},
            paper="IDC"),
        Row("herding", "Herding coreset", kind="herding", paper="Herding"),
        Row("random", "Random real images", kind="random", paper="Random"),
        Row("udd-f1", "UDD, factor 1: S alone", changes={"factor": 1}),
        Row("udd-f1-expanded", "UDD, factor 1: S expanded by its 12 windows", source="udd-f1", expand=True),
        Row("idc-style-f1", "IDC-style, factor 1", changes={"factor": 1, "regions": {"policy": None}, "cfc": False}),
        Row("idc-style-f1-expanded", "IDC-style, factor 1: S expanded by its 12 windows", source="idc-style-f1",
            expand=True),
        Row("udd-f1-uniform", "UDD, factor 1, crops weighted as a plain batch: S alone",
            changes={"factor": 1, "regions": {"crop_share": None}}),
        Row("udd-f1-uniform-expanded", "UDD, factor 1, crops weighted as a plain batch: S expanded by its 12 windows "
            "(the networks train on what was matched)", source="udd-f1-uniform", expand=True),
        Row("udd-on-top", "UDD, crops added on top of the tiles' IDC-style weight",
            changes={"regions": {"crops_on_top": True}}),
        Row("idc-style-lr1.2", "IDC-style, lr_img x 1.2 (the step of the crops added on top)",
            changes={"regions": {"policy": None}, "cfc": False}, lr_scale=1.2),
        Row("udd-random", "UDD, P random windows each step (the control for the policy)",
            changes={"regions": {"policy": "random"}}),
        Row("udd-on-top-own-draw", "UDD, crops on top, under a DSA draw of their own (not their images')",
            changes={"regions": {"crops_on_top": True, "crop_draw": "own"}}),
        Row("udd-on-top-sampled", "UDD, crops on top, a tenth of them drawn each step (unbiased)",
            changes={"regions": {"crops_on_top": True, "crop_sample": 0.1}}),
        Row("udd-layer0", "UDD, windows scored on the first block's map (16 x 16 at 32 px), not the last (4 x 4)",
            changes={"regions": {"layer": 0}}),
        *[Row(f"{key}-s{steps}", f"{label}, {steps} steps", changes={**changes, "outer": steps // 100, "inner": 100})
          for steps in BUDGET_STEPS for key, label, changes in (
              ("udd", "UDD", {}), ("udd-on-top", "UDD, crops on top", {"regions": {"crops_on_top": True}}),
              ("idc-style", "IDC-style", {"regions": {"policy": None}, "cfc": False}))],
        *[_windows_row((g,), f"UDD, N=4 windows of size {name}") for g, name in ((1 / 3, "1/3"), (1 / 2, "1/2"),
                                                                                  (2 / 3, "2/3"))],
        _windows_row((1 / 2, 2 / 3), "UDD, N=8 (sizes 1/2, 2/3)"),
        *[Row(f"{src}@{arch}", f"{src} on {arch}", source=src, model=arch)
          for src in ("udd", "idc-style") for arch in ("resnet18", "vgg11", "alexnet")]]
ROW = {r.key: r for r in ROWS}
BUDGET_ROWS = [r.key for r in ROWS if "-s" in r.key and r.key.rsplit("-s", 1)[1].isdigit()]


def budget_base(key: str) -> str:
    """The row a budget row lengthens (``udd-s3000`` -> ``udd``); other keys are their own."""
    return key.rsplit("-s", 1)[0] if key in BUDGET_ROWS else key
WINDOW_ROWS = [r.key for r in ROWS if r.key.startswith(("udd-n4-", "udd-n8-"))]
STUDIES = {
    "main": ["udd", "udd-uniform", "udd-activation", "udd-gradient", "udd-vote", "udd-no-cfc", "idc-style", "herding",
             "random"],
    "forms": ["udd-f1", "udd-f1-expanded", "idc-style-f1", "udd", "idc-style", "random"],
    "windows": WINDOW_ROWS + ["udd"],
    "cross-arch": ["udd", "idc-style"] + [r.key for r in ROWS if "@" in r.key],
    "hypotheses": ["udd", "idc-style", "udd-on-top", "idc-style-lr1.2", "udd-f1-uniform", "udd-f1-uniform-expanded",
                   "idc-style-f1", "idc-style-f1-expanded", "udd-f1", "udd-f1-expanded", "udd-random", "udd-layer0",
                   "udd-on-top-own-draw", "udd-on-top-sampled", "udd-no-cfc"],
    "budget": ["udd", "idc-style"] + [k for k in BUDGET_ROWS if budget_base(k) in ("udd", "idc-style")],
}
CROSS_ARCH = ("convnet", "resnet18", "vgg11", "alexnet")


class Table:
    """A results table on disk: ``<path>.json`` (the record) and ``<path>.md`` (rendered from it)."""

    def __init__(self, path: str | os.PathLike, dataset: str, budget: str, settings: dict):
        self.path = Path(path)
        self.json, self.md = self.path.with_suffix(".json"), self.path.with_suffix(".md")
        head = {"dataset": dataset, "budget": budget, "settings": settings}
        if self.json.exists():
            self.data = json.loads(self.json.read_text())
            saved = {k: self.data.get(k) for k in head}
            if saved != json.loads(json.dumps(head)):
                raise UDDError(f"{self.json} holds a table made with other settings ({saved}); continue it with "
                               "the same ones or choose another --table")
        else:
            self.data = {**head, "rows": {}, "inits": {}, "commands": [], "figures": []}

    def __contains__(self, key: str) -> bool:
        return key in self.data["rows"]

    def __getitem__(self, key: str) -> dict:
        return self.data["rows"][key]

    def put(self, key: str, result: dict) -> None:
        self.data["rows"][key] = result
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for target, text in ((self.json, json.dumps(self.data, indent=1)), (self.md, render(self.data))):
            atomic_write(target, text, "results table")


class Harness:
    """Runs the rows of one dataset and budget into a :class:`Table`, scoring each under ``protocols``; sets and
    checkpoints go to ``work``."""

    def __init__(self, dataset: str, budget: str = "cpu-quick", work: str | os.PathLike = "runs/reproduce",
                 table: str | os.PathLike | None = None, device: str = "cpu", overrides: dict | None = None,
                 eval_overrides: dict | None = None, data_root: str | None = None, progress: bool = True,
                 protocols=DEFAULT_PROTOCOLS, precision: str | None = None):
        if budget not in BUDGETS:
            raise UDDError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
        self.dataset, self.budget, self.device, self.progress = dataset, BUDGETS[budget], device, progress
        self.overrides = overrides or {}
        self.eval_overrides = eval_overrides or {}
        self.protocols = list(protocols)
        self.work = Path(work) / f"{dataset}-{budget}"
        # ``precision`` belongs to the machine, like the device, not to the table: the settings are the budget's
        # (``auto``), and a command that fixes the precision (rows added on a CPU with bf16 units to a table made in
        # fp32 on one without) is recorded with its rows. It applies from here on.
        self.precision = None
        settings = json.loads(json.dumps({"overrides": self.overrides, "larger": self.budget.larger,
                                          "protocols": {n: asdict(p) for n, p in self.evaluations(1).items()}}))
        self.table = Table(table or self.work / "table", dataset, budget, settings)
        self.precision = precision
        self.train = load_dataset(dataset, True, data_root)
        self.test = load_dataset(dataset, False, data_root)

    def evaluations(self, ipc: int, model: str | None = None) -> dict[str, EvalProtocol]:
        """The table's evaluation protocols at ``ipc`` (the budget's changes, then the overrides), by name."""
        arch = {"model": model, "width": None} if model else {}
        numerics = {"precision": self.precision} if self.precision else {}
        return {n: protocol(n, **{**self.budget.evaluation_at(ipc), **self.eval_overrides, **arch, **numerics})
                for n in self.protocols}

    def config(self, ipc: int, row: Row) -> UDDConfig:
        cfg = preset(self.budget.preset, self.dataset, ipc).replace(**self.overrides)
        cfg = cfg.replace(**row.changes, **({"precision": self.precision} if self.precision else {}))
        return cfg.replace(lr_img=cfg.lr_img * row.lr_scale, checkpoint_every=1)

    def run(self, ipcs, keys) -> Table:
        """Every (IPC, row) not yet in the table, in order; then the figures."""
        unknown = [k for k in keys if k not in ROW]
        if unknown:
            raise UDDError(f"unknown rows {unknown}; choose from {', '.join(ROW)}")
        argv = ["python -m udd_fast", *sys.argv[1:]] if sys.argv[0].endswith("__main__.py") else sys.argv
        command = {"command": " ".join(argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
        self.table.data["commands"].append(command)
        self.table.save()
        for ipc in ipcs:
            for key in keys:
                self.result(ipc, ROW[key])
        self.table.data["figures"] = self.figures(sorted({r["ipc"] for r in self.table.data["rows"].values()}))
        command["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        self.table.save()
        return self.table

    def figures(self, ipcs) -> list[dict]:
        """PNGs beside the table: accuracy vs mUE of every row (paper Fig. 7); per IPC, the UDD and IDC-style
        sets side by side (Fig. 11) and a few UDD images with their activation maps and chosen windows (Fig. 3)."""
        stem, made = self.table.path, []

        def keep(suffix: str) -> None:  # drawn before from sets this machine lacks (a table resumed from a commit)
            name = f"{stem.name}-{suffix}.png"
            made.extend(f for f in self.table.data.get("figures", [])
                        if f["file"] == name and stem.with_name(name).exists())

        def add(suffix: str, caption: str, draw, *args, **kw) -> None:
            path = stem.with_name(f"{stem.name}-{suffix}.png")
            draw(*args, path, **kw)
            made.append({"file": path.name, "caption": caption})

        first = self.protocols[0]
        points = [{"label": k.split("/", 1)[1], "mue": r["mue"], "mean": r["eval"][first]["mean"],
                   "std": r["eval"][first]["std"], "group": f"IPC={r['ipc']}"}
                  for k, r in self.table.data["rows"].items() if "@" not in k and first in r["eval"]]
        if points:
            add("acc-vs-mue", f"Accuracy (`{first}` protocol) against mUE of every row's training images (paper "
                "Fig. 7).", figures.accuracy_vs_mue, points,
                title=f"{self.dataset}, {self.table.data['budget']} budget, {first} evaluation")
        for ipc in ipcs:
            curves = budget_points(self.table.data["rows"], ipc, self.protocols)
            if curves:
                add(f"budget-ipc{ipc}", f"IPC={ipc}: accuracy against distillation steps, UDD and the IDC-style "
                    "ablation under each protocol (mean ± std; the gap at each budget is in the table's Budget "
                    "section).", figures.accuracy_vs_steps, curves,
                    title=f"{self.dataset} IPC={ipc}: accuracy against steps")
                timed = [c for c in curves if c.get("hours")]
                if timed:
                    add(f"budget-time-ipc{ipc}", f"IPC={ipc}: the same runs against the hours of distillation they "
                        "take on the table's machine (steps x the median step), for the comparison at equal wall "
                        "time.", figures.accuracy_vs_hours, timed,
                        title=f"{self.dataset} IPC={ipc}: accuracy against distillation hours")
        udd, idc = ROW["udd"], ROW["idc-style"]
        for ipc in ipcs:
            if self.set_path(ipc, udd).exists() and self.set_path(ipc, idc).exists():
                panels = []
                for r in (udd, idc):
                    syn = SyntheticSet.load(self.set_path(ipc, r))
                    panels.append((r.label, syn.images, syn.labels))
                add(f"grids-ipc{ipc}", f"IPC={ipc}: the stored synthetic images of UDD and of the IDC-style "
                    "ablation, one row per class (paper Fig. 11).", figures.side_by_side, panels)
            else:
                keep(f"grids-ipc{ipc}")
            if self.set_path(ipc, udd).exists():
                x, maps, boxes, policy, captions = self.window_figure_inputs(ipc, udd)
                add(f"windows-ipc{ipc}", f"IPC={ipc}: UDD images (decoded), the channel-mean |activation| of a "
                    f"ConvNet trained briefly on real data, and the P windows the {policy} policy finds "
                    "least utilized (the lowest in red; paper Fig. 3).", figures.window_maps, x, maps, boxes,
                    captions=captions)
            else:
                keep(f"windows-ipc{ipc}")
        return made

    def result(self, ipc: int, row: Row) -> dict:
        """The row's result: from the table, or computed now (and recorded)."""
        key = f"ipc{ipc}/{row.key}"
        if key in self.table:
            return self.table[key]
        if self.progress:
            print(f"[{key}] {row.label}", flush=True)
        protos = self.evaluations(ipc, row.model)
        record = {"label": row.label, "ipc": ipc, "paper": PAPER.get(self.dataset, {}).get(row.paper, {}).get(ipc),
                  "paper_method": row.paper, **({"precision_fixed": self.precision} if self.precision else {})}
        start = time.time()
        if row.kind == "random":
            record["eval"] = {n: _scores(random_baseline(self.train, self.test, ipc, p, self.device))
                              for n, p in protos.items()}
        elif row.kind == "herding":
            x, y = herding_coreset(self.train, ipc)
            record["selection_wall_s"] = time.time() - start
            start = time.time()
            record["eval"] = {n: _scores(evaluate_images(x, y, self.test, p, self.device, progress=self.progress))
                              for n, p in protos.items()}
        else:
            source = ROW[row.source] if row.source else row
            if source is not row:
                self.result(ipc, source)  # the set's own row first, so its distillation is on record
            syn, init, made = self.synthetic_set(ipc, source)
            if source is row:
                record.update(made)
                start = time.time()
            expand = row.expand or None
            record["eval"] = {n: _scores(evaluate(syn, self.test, p, expand, self.device, progress=self.progress))
                              for n, p in protos.items()}
            record["init"] = {n: self.init_score(init, expand, p) for n, p in protos.items()}
            record["gain"] = {n: record["eval"][n]["mean"] - record["init"][n]["mean"] for n in protos}
            record.update(moved_px=moved(syn, init), set=str(self.set_path(ipc, source)), source=source.key,
                          form=(replace(syn, expand=True) if row.expand else syn).form())
        first = record["eval"][self.protocols[0]]
        record.update(train_images=first["train_images"], mue=first["mue"], eval_wall_s=time.time() - start)
        self.table.put(key, record)
        if self.progress:
            print(f"[{key}] " + ", ".join(f"{n} {_cell(r)} %" for n, r in record["eval"].items())
                  + f" on {record['train_images']} images", flush=True)
        return record

    def init_score(self, init: SyntheticSet, expand: bool | None, proto: EvalProtocol) -> dict:
        """An initialisation's score under ``proto``, computed once per distinct initialisation and protocol (every
        row starting from the same images shares it) and kept in the table."""
        digest = hashlib.sha256(init.images.numpy().tobytes()).hexdigest()[:16]
        key = f"{digest}/factor{init.factor}/{'expanded' if expand else 'as-is'}/{json.dumps(asdict(proto))}"
        cache = self.table.data.setdefault("inits", {})
        if key not in cache:
            cache[key] = _scores(evaluate(init, self.test, proto, expand, self.device, progress=self.progress))
        return cache[key]

    def set_path(self, ipc: int, row: Row) -> Path:
        return self.work / f"ipc{ipc}" / row.key / "synset.safetensors"

    def synthetic_set(self, ipc: int, row: Row) -> tuple[SyntheticSet, SyntheticSet, dict]:
        """The row's distilled set and its initialisation, distilling it (or continuing its checkpoint) unless it
        is saved."""
        path = self.set_path(ipc, row)
        made, init = path.parent / "made.json", path.with_name("init.safetensors")
        if path.exists() and made.exists() and init.exists():
            return SyntheticSet.load(path), SyntheticSet.load(init), json.loads(made.read_text())
        cfg = self.config(ipc, row)
        resume = (path.parent / "checkpoint.pt").exists() or (path.parent / "checkpoint.prev.pt").exists()
        continued = None if resume else self.continue_shorter(ipc, row, cfg, path.parent)
        distiller = Distiller(self.train, cfg, self.device, path.parent)
        start = time.time()
        syn = distiller.run(progress=self.progress, resume=resume or continued is not None)
        # the initialisation (herding trains a network) is part of the cost of a row
        seconds = sorted(h["seconds"] for h in distiller.history if "seconds" in h)
        info = {"distill_wall_s": time.time() - start, "resumed": resume, "config": json.loads(cfg.to_json()),
                "step_s_median": seconds[len(seconds) // 2] if seconds else None,
                "precision": distiller.precision, "precision_probe": distiller.probe, **distiller.memory}
        if continued:  # the whole cost of the set: the shorter run's steps, then these
            info.update(continued=continued, distill_wall_s=info["distill_wall_s"] + continued["distill_wall_s"])
        elif resume:  # and the steps before the interruption (a continued run's too), as its history timed them
            info["distill_wall_s"] += sum(h["seconds"] for h in distiller.history[:distiller.restored_steps])
        atomic_write(made, json.dumps(info))
        return syn, distiller.init_set, info

    def continue_shorter(self, ipc: int, row: Row, cfg: UDDConfig, out_dir: Path) -> dict | None:
        """A budget row starts where the longest finished run of its method with fewer steps ended (the base row,
        or a shorter budget row), instead of from step 0: its final checkpoint is copied into ``out_dir``, with
        this row's settings, and the run resumes there. That is the run an uninterrupted one would be, step for
        step, because the two settings differ only in the number of outer iterations and lr_img does not decay
        (nothing else depends on the run's length); with a decay it starts from scratch. Returns what it
        continued (the row, its outer iterations, its distillation seconds), or None."""
        if row.key not in BUDGET_ROWS or cfg.lr_decay:
            return None
        base = budget_base(row.key)
        best = None
        for key in [base] + [k for k in BUDGET_ROWS if budget_base(k) == base and k != row.key]:
            shorter = self.config(ipc, ROW[key])
            if shorter.outer >= cfg.outer or shorter.replace(outer=cfg.outer) != cfg:
                continue
            made = self.set_path(ipc, ROW[key]).parent / "made.json"
            state = checkpoint.load(made.parent) if made.exists() else None  # made.json: the run finished
            if state is None or state["outer"] != shorter.outer:
                continue
            if best is None or shorter.outer > best[1]:
                best = (key, shorter.outer, state, json.loads(made.read_text()))
        if best is None:
            return None
        key, outer, state, made = best
        checkpoint.save(out_dir, {**state, "config": cfg.to_json()})
        if self.progress:
            print(f"[ipc{ipc}/{row.key}] continues {key} from its {outer} outer iterations", flush=True)
        return {"from": key, "outer": outer, "distill_wall_s": made.get("distill_wall_s", 0.0)}

    def window_figure_inputs(self, ipc: int, row: Row, per_class: int = 1, classes: int = 4):
        """For a few decoded images of ``row``'s set: the images, their activation maps and their chosen
        windows under a ConvNet briefly trained on real data (what the policy sees early in an outer loop)."""
        syn = SyntheticSet.load(self.set_path(ipc, row))
        cfg = self.config(ipc, row)
        x = decode(syn.images, syn.factor)
        y = syn.labels.repeat_interleave(syn.factor ** 2)
        pick = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(min(classes, int(y.max()) + 1))])
        x, y = x[pick].to(self.device), y[pick].to(self.device)
        net = real_network(self.train, cfg.seed, width=cfg.width or 64)
        windows = candidate_windows(cfg.regions.groups).to(self.device)
        policy = cfg.regions if cfg.regions.policy else replace(cfg.regions, policy="activation")
        index = select_windows(net, x, y, windows, self.train.normalize, policy)
        with torch.no_grad():
            maps = net.feature_maps(self.train.normalize(x))[policy.layer].abs().mean(1)
        return x.cpu(), maps.cpu(), windows[index].cpu(), policy.policy, [f"class {int(c)}" for c in y]


#: (what changes, the row, its control): the rows of the hypotheses study read in pairs
EFFECTS = [("the regions and CFC (UDD against IDC-style)", "udd", "idc-style"),
           ("the crops on top of the tiles' weight, instead of sharing it", "udd-on-top", "udd"),
           ("the crops on top, against a step as large without regions", "udd-on-top", "idc-style-lr1.2"),
           ("the crops on top, against IDC-style", "udd-on-top", "idc-style"),
           ("the policy's windows, against P random ones", "udd", "udd-random"),
           ("the policy on the first block's map, against P random windows", "udd-layer0", "udd-random"),
           ("the policy on the first block's map, against the last block's", "udd-layer0", "udd"),
           ("the crops under a DSA draw of their own, not their images'", "udd-on-top-own-draw", "udd-on-top"),
           ("a tenth of the crops each step, against all of them", "udd-on-top-sampled", "udd-on-top"),
           ("a tenth of the crops on top, against IDC-style", "udd-on-top-sampled", "idc-style"),
           ("CFC", "udd", "udd-no-cfc"),
           ("the regions at factor 1 (windows of the stored image)", "udd-f1", "idc-style-f1"),
           ("the regions at factor 1, networks trained on S and its windows", "udd-f1-expanded",
            "idc-style-f1-expanded"),
           ("factor 2 against factor 1, UDD", "udd", "udd-f1"),
           ("factor 2 against factor 1, IDC-style", "idc-style", "idc-style-f1")]


def _at_hours(points: list[dict], hours: float) -> float | None:
    """The mean accuracy of one method's budget points at ``hours``, linearly interpolated between the two
    points around it (None outside their range)."""
    line = sorted((p["hours"], p["mean"]) for p in points)
    for (h0, m0), (h1, m1) in zip(line, line[1:]):
        if h0 <= hours <= h1:
            return m0 + (m1 - m0) * (hours - h0) / (h1 - h0) if h1 > h0 else m0
    return line[0][1] if len(line) == 1 and line[0][0] == hours else None


def _difference(a: dict | None, b: dict | None) -> tuple[float, float] | None:
    """(mean of a - mean of b, the two stds combined), or None when either is missing."""
    return (a["mean"] - b["mean"], (a["std"] ** 2 + b["std"] ** 2) ** 0.5) if a and b else None


def budget_points(rows: dict, ipc: int, protocols) -> list[dict]:
    """Every row at ``ipc`` of a method that has budget rows, as points of accuracy against its steps, one
    group per (method, protocol)."""
    mine = {k.split("/", 1)[1]: r for k, r in rows.items() if r["ipc"] == ipc}
    methods = {budget_base(k) for k in mine if k in BUDGET_ROWS}
    def steps(r: dict) -> int:
        return r["config"]["outer"] * r["config"]["inner"]

    return [{"label": f"{steps(r)}", "mean": r["eval"][n]["mean"], "std": r["eval"][n]["std"], "steps": steps(r),
             "hours": steps(r) * r["step_s_median"] / 3600 if r.get("step_s_median") else None,
             "group": f"{budget_base(k)} ({n})"}
            for k, r in mine.items() if budget_base(k) in methods and "config" in r for n in protocols if n in r["eval"]]


def machine() -> str:
    """The machine a figure came from: the GPU, or the CPU's model and its bf16 units (timings differ several-fold
    between an Intel Xeon with AMX and an AMD EPYC with AVX-512 BF16 only)."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    cpu = cpu_model()
    units = ", ".join(bf16_units("cpu")) or "no bf16 units"
    return (f"{gpu + '; ' if gpu else ''}{cpu} ({units}); {len(os.sched_getaffinity(0))} CPU cores; torch "
            f"{torch.__version__}; {platform.platform()}")


def _scores(result: dict) -> dict:
    """What a table keeps of an evaluation (its protocol is in the table's settings)."""
    return {k: result[k] for k in ("mean", "std", "accs", "train_images", "mue", "wall_s")}


def _cell(r: dict | None) -> str:
    return "—" if r is None else f"{r['mean']:.2f} ± {r['std']:.2f}"


def command_lines(commands: list[dict]) -> list[str]:
    """One line per distinct command and machine, in the order first run: when it first started, how many times
    it ran (a queue stopped and resumed runs one command many times), and how its last run ended."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for c in commands:
        runs.setdefault((c["command"], c["machine"]), []).append(c)
    lines = []
    for (command, machine), each in runs.items():
        last = each[-1]
        end = f"finished {last['finished']}" if "finished" in last else "interrupted or still running"
        times = f", run {len(each)} times" if len(each) > 1 else ""
        lines.append(f"- `{command}` (started {each[0]['started']}{times}, {end}; {machine})")
    return lines


def render(data: dict) -> str:
    """The markdown of a table record."""
    settings, rows = data["settings"], data["rows"]
    names = list(settings["protocols"])
    ipcs = sorted({r["ipc"] for r in rows.values()})
    out = [f"# {data['dataset']}: the `{data['budget']}` budget", ""]
    out += command_lines(data["commands"])
    out += ["", f"**Budget.** {BUDGETS[data['budget']].notes}", ""]
    if settings["overrides"]:
        out += [f"**Overrides of the budget's preset:** `{json.dumps(settings['overrides'])}`", ""]
    out += ["**Evaluation protocols** (udd_fast/evaluate.py), each on the whole test split:", ""]
    out += [f"- {EvalProtocol(**{k: tuple(v) if isinstance(v, list) else v for k, v in p.items()}).describe()}"
            for p in settings["protocols"].values()]
    out += ["", "Every distilled row is scored beside its own initialisation (`init`, the same images before "
            "distillation, in the same form) under the same protocol; `gain` is the difference of the means, "
            "`moved` the mean |S - S_init| of the stored pixels. mUE: the paper's Appendix E metric of the training "
            f"images under the `{names[0]}` networks (udd_fast/metrics.py). Wall times: seconds on the machine above; "
            "s/step, where given, is the median inner step (robust to a run paused or sharing its cores a while).",
            ""]
    larger = settings.get("larger")
    if larger:
        out += [f"From IPC={larger[0]} on, every protocol changes: `{json.dumps(larger[1])}`.", ""]

    def own(key: str, r: dict) -> bool:  # the row distilled its own set (not another row's)
        return r.get("source") in (None, key.split("/", 1)[1])

    total = sum(r["eval_wall_s"] + r.get("selection_wall_s", 0) + (r.get("distill_wall_s", 0) if own(k, r) else 0)
                for k, r in rows.items())
    out += [f"Total wall time of the rows: {total / 60:.1f} minutes.", ""]
    for ipc in ipcs:
        mine = {k.split("/", 1)[1]: r for k, r in rows.items() if r["ipc"] == ipc}
        head = "".join(f" {n} % | init | gain |" for n in names)
        out += [f"## IPC={ipc}", "", f"| set | training images |{head} moved px | mUE | distillation s | paper % |",
                "|---|---|" + "---|---|---|" * len(names) + "---|---|---|---|"]
        for key, r in mine.items():
            if "@" in key:
                continue
            if not own(f"ipc{ipc}/{key}", r):
                distill = f"(set of `{r['source']}`)"
            elif "selection_wall_s" in r:
                distill = f"{r['selection_wall_s']:.0f} (selection)"
            else:
                distill = f"{r['distill_wall_s']:.0f}" if "distill_wall_s" in r else "—"
                if r.get("step_s_median"):
                    distill += f" ({r['step_s_median']:.2f} s/step)"
            cells = "".join(f" **{_cell(r['eval'].get(n))}** | {_cell(r.get('init', {}).get(n))} | "
                            f"{r['gain'][n]:+.2f} |" if "gain" in r else f" **{_cell(r['eval'].get(n))}** | — | — |"
                            for n in names)
            paper = f"{r['paper']} ({r['paper_method']})" if r.get("paper") is not None else ""
            moved_px = f"{r['moved_px']:.4f}" if "moved_px" in r else "—"
            out.append(f"| {r['label']} | {r['train_images']} |{cells} {moved_px} | {r['mue']:.3f} | {distill} | "
                       f"{paper} |")
        for method in ("DC", "Full dataset"):
            value = PAPER.get(data["dataset"], {}).get(method, {}).get(ipc)
            if value is not None:
                out.append(f"| {method} (paper only; not run here) | |" + " | | |" * len(names) + f" | | | {value} |")
        fixed = {k: r["precision_fixed"] for k, r in mine.items() if "precision_fixed" in r}
        if fixed:
            out += ["", "Distilled and evaluated in a precision fixed by `--precision` (the others: the budget's): "
                    + ", ".join(f"`{k}` {p}" for k, p in fixed.items()) + "."]
        missing = [k for k in STUDIES["main"] if k not in mine]
        out += ["", f"Rows of the `main` study not run yet at this IPC: {', '.join(f'`{k}`' for k in missing)}.", ""] \
            if missing else [""]
        if "udd" in mine and "idc-style" in mine:
            for n in names:
                a, b = mine["udd"]["eval"].get(n), mine["idc-style"]["eval"].get(n)
                if a and b:
                    gap = a["mean"] - b["mean"]
                    verdict = "beats" if gap > 0 else "does not beat"
                    out += [f"UDD {verdict} the IDC-style ablation under `{n}` at this budget: {gap:+.2f} points "
                            f"(means; std {a['std']:.2f} and {b['std']:.2f}).", ""]
        points, by_steps = budget_points(rows, ipc, names), {}
        for p in points:
            by_steps.setdefault(p["steps"], {})[p["group"]] = p
        methods = [m for m in ("udd", "udd-on-top") if any(f"{m} ({n})" in c for c in by_steps.values() for n in names)]
        if methods and any(f"idc-style ({n})" in c for c in by_steps.values() for n in names):
            pairs = [(m, n) for m in methods for n in names]
            out += [f"### Budget, IPC={ipc}: UDD against the IDC-style ablation at equal steps", "",
                    "| steps |" + "".join(f" `{m}` − IDC-style, `{n}` |" for m, n in pairs), "|---|" + "---|" * len(pairs)]
            for steps, cells in sorted(by_steps.items()):
                gaps = [(cells.get(f"{m} ({n})"), cells.get(f"idc-style ({n})")) for m, n in pairs]
                out.append(f"| {steps} |" + "".join(f" {a['mean'] - b['mean']:+.2f} |" if a and b else " — |"
                                                    for a, b in gaps))
            out += [""]
            timed = [p for p in points if p["hours"]]
            lines = []
            for m in methods:
                for steps in sorted({p["steps"] for p in timed if p["group"].startswith(f"{m} (")}):
                    cells = []
                    for n in names:
                        a = next((p for p in timed if p["group"] == f"{m} ({n})" and p["steps"] == steps), None)
                        b = _at_hours([p for p in timed if p["group"] == f"idc-style ({n})"], a["hours"]) if a else None
                        cells.append(f" {a['mean'] - b:+.2f} |" if b is not None else " — |")
                    hours = next(p["hours"] for p in timed if p["group"].startswith(f"{m} (") and p["steps"] == steps)
                    lines.append(f"| `{m}` | {steps} | {hours:.2f} |" + "".join(cells))
            if lines:
                out += ["At equal wall time: each UDD run against IDC-style run for as long (its accuracy interpolated "
                        "linearly between its budgets, in hours of the median step; — outside them).", "",
                        "| method | steps | hours |" + "".join(f" − IDC-style at equal time, `{n}` |" for n in names),
                        "|---|---|---|" + "---|" * len(names), *lines, ""]
        effects = [(what, a, b) for what, a, b in EFFECTS if a in mine and b in mine]
        if effects:
            out += [f"### What each change does, IPC={ipc}", "",
                    "Each row's mean minus its control's, per protocol (± the two stds combined); a change counts as "
                    "a gain only where it is above that under every protocol.", "",
                    "| change | row | against |" + "".join(f" `{n}` |" for n in names) + " under every protocol |",
                    "|---|---|---|" + "---|" * len(names) + "---|"]
            for what, a, b in effects:
                diffs = [_difference(mine[a]["eval"].get(n), mine[b]["eval"].get(n)) for n in names]
                known = [d for d in diffs if d]
                verdict = ("gain" if all(d[0] > d[1] for d in known) else "loss" if all(d[0] < -d[1] for d in known)
                           else "neither") if len(known) == len(names) else "—"
                out.append(f"| {what} | `{a}` | `{b}` |" + "".join(f" {d[0]:+.2f} ± {d[1]:.2f} |" if d else " — |"
                                                                 for d in diffs) + f" {verdict} |")
            out += [""]
        arch = {k: r for k, r in mine.items() if "@" in k}
        if arch:
            out += [f"### Cross-architecture, IPC={ipc} (`{names[0]}` protocol on each network)", "",
                    "| set | " + " | ".join(CROSS_ARCH) + " |", "|---|" + "---|" * len(CROSS_ARCH)]
            for src in sorted({k.split("@")[0] for k in arch}):
                cells = [_cell((mine.get(src if a == "convnet" else f"{src}@{a}") or {}).get("eval", {}).get(names[0]))
                         for a in CROSS_ARCH]
                out.append(f"| {src} | " + " | ".join(cells) + " |")
            out += [""]
    for fig in data.get("figures", []):
        out += [f"![{fig['caption']}]({fig['file']})", "", f"*{fig['caption']}*", ""]
    return "\n".join(out)
