"""Command line: ``python -m udd_fast distill | evaluate | baseline | reproduce | prepare | show``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from udd_fast.cache import CachedData, prepare, wait_for_cache
from udd_fast.config import CPU_QUICK_NOTES, INITS, PRESETS, UDDConfig, preset
from udd_fast.coreset import herding_coreset
from udd_fast.data import DATASETS, common_size, load_dataset
from udd_fast.distiller import Distiller
from udd_fast import checkpoint
from udd_fast.errors import Interrupted, UDDError
from udd_fast.files import atomic_write, check_writable
from udd_fast.evaluate import (DEFAULT_PROTOCOLS, PROTOCOLS as EVAL_PROTOCOLS, EvalProtocol, evaluate,
                               evaluate_against_init, evaluate_images, protocol, random_baseline)
from udd_fast.models import MODELS
from udd_fast.regions import POLICIES
from udd_fast.reproduce import BUDGETS, STUDIES, Harness
from udd_fast.synset import SyntheticSet
from udd_fast.unreadable import MAX_SHARE as MAX_UNREADABLE

DATASET_CHOICES = [*DATASETS, "imagefolder"]


def _load(args, train: bool):
    """The training or test split. An image folder's training split is streamed from disk (``--data-root``),
    or read from a decoded cache (``--cache``, built from ``--data-root`` first when one is given: by one
    process under torchrun while the others wait); its test split (``--test-root``) is decoded into memory
    once, since every evaluation epoch reads it."""
    cache = getattr(args, "cache", None)
    if cache and args.dataset != "imagefolder":
        raise UDDError(f"--cache is for imagefolder datasets; {args.dataset} is held in memory already")
    if args.dataset != "imagefolder":
        return load_dataset(args.dataset, train, args.data_root, num_workers=args.workers)
    if cache and train:
        if args.data_root and (not dist.is_initialized() or dist.get_rank() == 0):
            size = args.size or common_size(args.data_root, args.classes) or 224
            prepare(args.data_root, cache, size, args.classes, args.workers, progress=not args.quiet,
                    max_unreadable=args.max_unreadable, retry_unreadable=args.retry_unreadable)
        elif args.data_root:
            wait_for_cache(cache)  # on disk, not in a barrier: decoding may outlast a collective's timeout
        data = CachedData(cache, classes=args.classes, size=args.size, max_unreadable=args.max_unreadable)
        args.size = data.size  # the test split, loaded next, at the cache's size
        return data
    root = args.data_root if train else (args.test_root or args.data_root)
    if root is None and cache:
        raise UDDError("with --cache and no --data-root, pass --test-root for the evaluation's test images")
    data = load_dataset("imagefolder", train, root, args.size, classes=args.classes, stream=train,
                        num_workers=args.workers, max_unreadable=args.max_unreadable,
                        retry_unreadable=args.retry_unreadable, progress=not args.quiet)
    args.size = data.size  # the test split, loaded next, at the training split's size
    return data


def _protocols(args) -> list[EvalProtocol]:
    """The evaluation protocols asked for, with the command line's overrides."""
    model = {"model": args.eval_model, "width": None} if args.eval_model not in (None, "convnet") else {}
    return [protocol(name, epochs=args.epochs, repeats=args.repeats, precision=args.eval_precision, **model)
            for name in args.protocols]


def _fmt(r: dict) -> str:
    return f"{r['mean']:.2f} ± {r['std']:.2f}"


def _report(title: str, rows: dict[str, dict], columns: list[str]) -> None:
    """Print one line per protocol: the accuracy of each column's set, and the gain where there is one."""
    print(title)
    print(f"  {'protocol':<9}" + "".join(f"{c:>18}" for c in columns) + ("       gain" if "init" in columns else ""))
    for name, cells in rows.items():
        line = f"  {name:<9}" + "".join(f"{_fmt(cells[c]) if c in cells else '—':>18}" for c in columns)
        if "gain" in cells:
            line += f"  {cells['gain']:+7.2f}"
        print(line)


def check_out(out: Path, resume: bool, overwrite: bool) -> Path:
    """Before any work: ``out`` must be writable, and must not hold another run unless it is to be resumed or
    replaced (``overwrite`` removes its checkpoints, so that a later --resume cannot mix the two runs)."""
    held = [n for n in ("synset.safetensors", checkpoint.NAME, "checkpoint.prev.pt") if (out / n).exists()]
    if held and not (resume or overwrite):
        raise UDDError(f"{out} already holds a run ({held[0]}); add --resume to continue it, --overwrite to replace "
                       "it, or choose another --out")
    if overwrite and not resume and (not dist.is_initialized() or dist.get_rank() == 0):
        for name in (checkpoint.NAME, "checkpoint.prev.pt", "checkpoint.tmp"):
            (out / name).unlink(missing_ok=True)
    return check_writable(out)


def cmd_distill(args) -> dict:
    out = check_out(Path(args.out), args.resume, args.overwrite)
    train = _load(args, True)
    cfg = preset(args.preset, args.dataset, args.ipc, train.size, train.num_classes)
    changes = {k: v for k, v in {"model": args.model, "factor": args.factor, "outer": args.outer, "inner": args.inner,
                                 "width": args.width, "seed": args.seed, "lam": args.lam,
                                 "checkpoint_every": args.checkpoint_every, "step": args.step,
                                 "precision": args.precision, "lr_img": args.lr_img, "init": args.init,
                                 "net_update": args.net_update}.items()
               if v is not None}
    if args.model is not None and args.width is None:
        changes["width"] = None  # the model's standard width (ResNetAp-10: 64), not ConvNet's 128
    if args.no_cfc:
        changes["cfc"] = False
    if args.policy is not None:
        changes["regions"] = {"policy": None if args.policy == "none" else args.policy}
    if args.lowest_p is not None:
        changes.setdefault("regions", {})["p"] = args.lowest_p
    if args.crop_share is not None:
        changes.setdefault("regions", {})["crop_share"] = args.crop_share
    if args.crops_on_top:
        changes.setdefault("regions", {})["crops_on_top"] = True
    if args.crop_draw is not None:
        changes.setdefault("regions", {})["crop_draw"] = args.crop_draw
    if args.crop_sample is not None:
        changes.setdefault("regions", {})["crop_sample"] = args.crop_sample
    cfg = cfg.replace(**changes)
    distiller = Distiller(train, cfg, args.device, out, reprobe=args.precision_probe)
    syn = distiller.run(progress=not args.quiet, resume=args.resume)
    if distiller.rank > 0:  # under torchrun, rank 0 writes and evaluates
        return {}
    syn.grid_png(out / "grid.png")
    if syn.factor > 1:
        syn.grid_png(out / "grid_decoded.png", decoded=True)
    metrics = {"dataset": args.dataset, "ipc": args.ipc, "preset": args.preset, "form": syn.form(),
               "distill_wall_s": distiller.wall_time, "processes": distiller.world, **distiller.memory,
               "precision": distiller.precision, "precision_probe": distiller.probe,
               "config": json.loads(cfg.to_json())}
    print(f"distilled {len(syn.labels)} images in {distiller.wall_time:.0f} s -> {out / 'synset.safetensors'} "
          f"(its initialisation: {out / 'init.safetensors'})")
    if args.evaluate:
        test = _load(args, False)
        protocols = _protocols(args)
        scored = evaluate_against_init(syn, distiller.init_set, test, protocols, device=args.device,
                                       progress=not args.quiet)
        metrics["moved_px"] = scored.pop("moved")
        metrics["evaluation"] = scored
        if args.baseline:
            for proto in protocols:
                scored[proto.name]["random"] = random_baseline(train, test, args.ipc, proto, args.device)
        columns = ["set", "init"] + (["random"] if args.baseline else [])
        _report(f"accuracy % ({syn.form()}; S moved {metrics['moved_px']:.4f} px on average from its "
                f"initialisation{'; random: ' + str(args.ipc) + ' real images per class' if args.baseline else ''})",
                scored, columns)
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=1), "metrics")
    return metrics


def cmd_evaluate(args) -> dict:
    syn = SyntheticSet.load(args.path)
    args.dataset = args.dataset or syn.dataset
    test = _load(args, False)
    expand = {"yes": True, "no": False, "saved": None}[args.expand]
    init_path = Path(args.init) if args.init else Path(args.path).with_name("init.safetensors")
    init = SyntheticSet.load(init_path) if (args.init or init_path.exists()) and not args.no_init else None
    if init is not None and (init.images.shape != syn.images.shape or init.factor != syn.factor):
        raise UDDError(f"{init_path} is not this set's initialisation (shape {tuple(init.images.shape)}, factor "
                       f"{init.factor} vs {tuple(syn.images.shape)}, {syn.factor}); pass --init or --no-init")
    protocols = _protocols(args)
    if init is None:
        result = {p.name: {"set": evaluate(syn, test, p, expand, args.device, progress=not args.quiet)}
                  for p in protocols}
    else:
        result = evaluate_against_init(syn, init, test, protocols, expand, args.device, progress=not args.quiet)
    moved = result.pop("moved", None)
    title = f"{args.path} ({syn.form()}): accuracy %"
    if moved is not None:
        title += f"; beside its initialisation {init_path} (S moved {moved:.4f} px on average)"
    _report(title, result, ["set", "init"] if init is not None else ["set"])
    if args.json:
        atomic_write(args.json, json.dumps({"moved_px": moved, "evaluation": result}, indent=1))
    return result


def cmd_baseline(args) -> dict:
    train, test = _load(args, True), _load(args, False)
    train.check_ipc(args.ipc)
    result = {}
    for proto in _protocols(args):
        if args.method == "random":
            result[proto.name] = {"set": random_baseline(train, test, args.ipc, proto, args.device)}
        else:
            result[proto.name] = {"set": evaluate_images(*herding_coreset(train, args.ipc), test, proto, args.device,
                                                         progress=not args.quiet)}
    _report(f"{args.method}, ipc {args.ipc}: accuracy %", result, ["set"])
    if args.json:
        atomic_write(args.json, json.dumps(result, indent=1))
    return result


def cmd_prepare(args) -> None:
    start = time.time()
    size = args.size or common_size(args.data_root, args.classes) or 224
    cache = prepare(args.data_root, args.cache, size, args.classes, args.workers, progress=not args.quiet,
                    max_unreadable=args.max_unreadable, retry_unreadable=args.retry_unreadable)
    data = CachedData(cache)
    print(f"{len(data)} images of {data.num_classes} classes at {data.size} px in {cache} ({data.nbytes / 2**30:.2f} "
          f"GiB, {time.time() - start:.0f} s)")


def cmd_show(args) -> None:
    syn = SyntheticSet.load(args.path)
    out = args.out or str(Path(args.path).with_suffix(".png"))
    syn.grid_png(out, args.scale, args.decoded)
    print(f"{syn.dataset}: {len(syn.labels)} images ({syn.form()}) -> {out}")


def cmd_reproduce(args) -> dict:
    keys = list(dict.fromkeys(args.rows or [k for study in args.study for k in STUDIES[study]]))
    overrides = {k: v for k, v in {"outer": args.outer, "inner": args.inner, "width": args.width}.items()
                 if v is not None}
    evaluation = {k: v for k, v in {"epochs": args.epochs, "repeats": args.repeats}.items() if v is not None}
    harness = Harness(args.dataset, args.budget, args.work, args.table, args.device, overrides, evaluation,
                      args.data_root, progress=not args.quiet, protocols=args.protocols, precision=args.precision)
    table = harness.run(args.ipc, keys)
    print(f"table: {table.md} (+ .json)")
    return table.data


def cmd_estimate(args) -> list[dict]:
    from udd_fast.estimate import describe, estimate

    overrides = {k: v for k, v in {"width": args.width}.items() if v is not None}
    results = []
    for ipc in args.ipc:
        results.append(estimate(args.dataset, args.preset, ipc, args.device, args.steps, overrides,
                                progress=not args.quiet))
        print(describe(results[-1]), flush=True)
    if args.json:
        atomic_write(args.json, json.dumps(results, indent=1))
    return results


def cmd_diagnose(args) -> dict:
    from udd_fast import diagnose

    train = _load(args, True)
    synset = SyntheticSet.load(args.set) if args.set else None
    if synset is not None:
        args.ipc = [synset.ipc]
    result, text = {}, []
    for ipc in args.ipc:
        cfg = preset(args.preset, args.dataset, ipc, train.size, train.num_classes)
        if synset is not None:
            cfg = UDDConfig.from_json(json.dumps(synset.config)) if synset.config else cfg
        if args.width:
            cfg = cfg.replace(width=args.width)
        result[f"ipc{ipc}"] = diagnose.diagnose(train, cfg, synset, after=args.after)
        text.append(diagnose.render(args.dataset, cfg, result[f"ipc{ipc}"]))
        print(text[-1], flush=True)
    if args.out:
        from udd_fast.reproduce import machine

        head = f"# diagnose\n\n`python -m udd_fast {' '.join(sys.argv[1:])}` ({machine()})\n\n"
        atomic_write(Path(args.out).with_suffix(".md"), head + "\n".join(text))
        atomic_write(Path(args.out).with_suffix(".json"), json.dumps(result, indent=1))
    return result


def unreadable_options(q) -> None:
    q.add_argument("--max-unreadable", type=float, default=MAX_UNREADABLE,
                   help="imagefolder: the largest share of image files that may be unreadable (left out, listed in "
                        "one line) before the folder is refused (default: %(default)s)")
    q.add_argument("--retry-unreadable", action="store_true",
                   help="imagefolder: decode the files found unreadable before once more (after replacing them)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m udd_fast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, dataset_required=True):
        q.add_argument("--dataset", choices=DATASET_CHOICES, required=dataset_required)
        q.add_argument("--data-root", default=None, help="folder with the dataset (default: ./data or $UDD_FAST_DATA)")
        q.add_argument("--size", type=int, help="image size for imagefolder datasets (default: the cache's; else the images' own "
                                             "size when they are square and share one; else 224)")
        q.add_argument("--test-root", help="imagefolder: the test split's folder (default: --data-root)")
        q.add_argument("--classes", help="imagefolder: a file with one class folder per line, or a shipped "
                                         "list (imagenet10, imagenet100)")
        q.add_argument("--workers", type=int, help="imagefolder: decoding threads (default: up to 4)")
        unreadable_options(q)
        q.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    def protocol(q):
        q.add_argument("--protocols", nargs="+", choices=list(EVAL_PROTOCOLS), default=list(DEFAULT_PROTOCOLS),
                       help="evaluation protocols (default: %(default)s): " + "; ".join(
                           p.describe().replace("%", "%%") for p in EVAL_PROTOCOLS.values()))
        q.add_argument("--epochs", type=int, help="override every protocol's training epochs")
        q.add_argument("--repeats", type=int, help="override every protocol's number of networks")
        q.add_argument("--eval-model", choices=MODELS, help="evaluation network (default: convnet, width 128)")
        q.add_argument("--eval-precision", choices=["fp32", "bf16", "auto"],
                       help="evaluation networks' passes in fp32 (default), under bf16 autocast, or auto: bf16 "
                            "where the hardware has it (a GPU with bf16; a CPU with AMX or AVX-512 BF16) and timed "
                            "batches say it is faster")

    d = sub.add_parser("distill", help="distill a dataset into a synthetic set")
    common(d)
    d.add_argument("--ipc", type=int, required=True, help="synthetic images per class")
    d.add_argument("--cache", help="imagefolder: sample real images from this decoded cache (see prepare); with "
                                   "--data-root it is built or finished first")
    d.add_argument("--preset", choices=PRESETS, default="cpu-quick",
                   help="idc: IDC's condensation; paper: UDD on IDC's step (GPU); cpu-quick: "
                        + CPU_QUICK_NOTES.replace("%", "%%")
                        + " cpu-hour: cpu-quick run about an hour a CIFAR-10 run on 2 cores (10 x 100 iterations at "
                        "IPC=1, 4 x 50 above)")
    d.add_argument("--out", required=True, help="run directory")
    d.add_argument("--policy", choices=[*POLICIES, "none"], help="region policy ('none': IDC-style)")
    d.add_argument("--lowest-p", type=int, help="P: the lowest-scoring windows kept per image (of N=12)")
    d.add_argument("--crop-share", type=float, help="weight of an image's P crops, together, in the synthetic "
                                                    "batch's loss (default: the preset's)")
    d.add_argument("--crops-on-top", action="store_true",
                   help="each image keeps the weight it has without regions and its crops add --crop-share on top "
                        "(instead of taking it from the image); on CIFAR-10 at 300 steps it scores higher under both "
                        "protocols (README, Results)")
    d.add_argument("--crop-draw", choices=("parent", "own"),
                   help="the DSA draw the crops pass in matching: their image's, which the real batch gets too "
                        "(default), or one of their own")
    d.add_argument("--crop-sample", type=float,
                   help="share of each class's chosen crops in a step's batch, drawn at random and weighted up so "
                        "the loss is an unbiased estimate of the whole batch's (default 1: all, as the paper); the "
                        "crops' cost shrinks with it")
    d.add_argument("--no-cfc", action="store_true", help="drop the CFC loss")
    d.add_argument("--lr-img", type=float, help="image learning rate in pixel units, per class step (default: the "
                                                "preset's, IDC's per dataset and IPC)")
    d.add_argument("--init", choices=INITS, help="initialisation: each class's first real images (IDC), random "
                                                 "ones, herding-selected ones, or noise")
    d.add_argument("--lam", type=float, help="CFC loss weight")
    d.add_argument("--factor", type=int, help="multi-formation factor")
    d.add_argument("--outer", type=int)
    d.add_argument("--inner", type=int)
    d.add_argument("--model", choices=MODELS, help="distillation network (default: convnet)")
    d.add_argument("--width", type=int)
    d.add_argument("--seed", type=int)
    d.add_argument("--checkpoint-every", type=int, help="outer iterations between checkpoints (OUT/checkpoint.pt)")
    d.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint in --out")
    d.add_argument("--overwrite", action="store_true", help="replace the run --out already holds (its set is kept "
                                                            "until the new one is written; its checkpoints go)")
    d.add_argument("--step", choices=["loop", "batched"],
                   help="classes one at a time (loop, the reference) or all in one vmapped pass (batched: "
                        "meant for GPUs; slower than the loop on CPU)")
    d.add_argument("--net-update", choices=["split", "repeat"],
                   help="under torchrun: each process passes its share of every network-update batch (split, the "
                        "default) or all of it (repeat: the set is then bit-identical to one process's)")
    d.add_argument("--precision", choices=["fp32", "bf16", "auto"],
                   help="bf16: network passes under bfloat16 autocast; auto: the faster of fp32 and bf16, timed on "
                        "the first steps and remembered for this machine and this shape of run in the cache "
                        "directory ($UDD_FAST_CACHE, else ~/.cache/udd_fast), so later runs start without timing (fp32 "
                        "without a bf16 hardware path; being timed, it can differ between machines: metrics.json "
                        "records it); default: the preset's")
    d.add_argument("--precision-probe", action="store_true",
                   help="with precision auto: time fp32 and bf16 again even when a choice is remembered, and "
                        "remember the new one")
    d.add_argument("--evaluate", action="store_true", help="evaluate the result when done")
    d.add_argument("--baseline", action="store_true", help="with --evaluate, also score random real images")
    protocol(d)
    d.set_defaults(func=cmd_distill)

    e = sub.add_parser("evaluate", help="train fresh networks on a synthetic set and test them")
    e.add_argument("path")
    common(e, dataset_required=False)
    e.add_argument("--expand", choices=["saved", "yes", "no"], default="saved",
                   help="train on the set expanded by its candidate windows (default: as saved)")
    e.add_argument("--init", help="the set's initialisation, scored beside it (default: init.safetensors next to "
                                   "the set, when there is one)")
    e.add_argument("--no-init", action="store_true", help="score the set alone")
    e.add_argument("--json", help="write the result here")
    protocol(e)
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("baseline", help="score a coreset of real images (random or herding)")
    common(b)
    b.add_argument("--ipc", type=int, required=True)
    b.add_argument("--method", choices=["random", "herding"], default="random")
    b.add_argument("--json")
    protocol(b)
    b.set_defaults(func=cmd_baseline)

    r = sub.add_parser("reproduce", help="distil and evaluate the paper's comparisons into a resumable table")
    r.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    r.add_argument("--data-root", default=None)
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    r.add_argument("--budget", choices=list(BUDGETS), default="cpu-quick",
                   help="the preset every row starts from (cpu-quick: 2 CPU cores; paper: a GPU)")
    r.add_argument("--protocols", nargs="+", choices=list(EVAL_PROTOCOLS), default=list(DEFAULT_PROTOCOLS),
                   help="evaluation protocols every row is scored under (default: %(default)s)")
    r.add_argument("--study", nargs="+", choices=list(STUDIES), default=["main"],
                   help="main: Table 1 rows and ablations; forms: S alone / expanded / multi-formation; "
                        "windows: Table 5; cross-arch: Table 6")
    r.add_argument("--rows", nargs="+", help="run only these row keys (see udd_fast/reproduce.py)")
    r.add_argument("--work", default="runs/reproduce", help="synthetic sets and checkpoints go here")
    r.add_argument("--table", help="the table's path without suffix (default: WORK/<dataset>-<protocol>/table)")
    r.add_argument("--outer", type=int, help="override the preset's outer iterations")
    r.add_argument("--inner", type=int, help="override the preset's inner steps")
    r.add_argument("--width", type=int, help="override the distillation network's width")
    r.add_argument("--epochs", type=int, help="override every evaluation protocol's epochs")
    r.add_argument("--repeats", type=int, help="override every evaluation protocol's number of networks")
    r.add_argument("--precision", choices=["fp32", "bf16", "auto"],
                   help="fix the precision of distillation and evaluation for these rows (default: the budget's, "
                        "auto); rows added on another machine stay comparable to the table's in fp32")
    r.set_defaults(func=cmd_reproduce)

    t = sub.add_parser("estimate", help="time a few inner steps of a preset (random images of the dataset's "
                                        "shape) and project the whole distillation's time here")
    t.add_argument("--dataset", choices=DATASETS, default="cifar10")
    t.add_argument("--preset", choices=PRESETS, default="paper")
    t.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    t.add_argument("--steps", type=int, default=3, help="timed inner steps per IPC, after one untimed")
    t.add_argument("--width", type=int, help="override the distillation network's width")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--json", help="write the estimates here")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_estimate)

    g = sub.add_parser("diagnose", help="which windows each policy picks (how flat they are) and how large CFC's "
                                        "image gradient is against matching's, on a preset's initialisation")
    common(g)
    g.add_argument("--ipc", type=int, nargs="+", default=[1])
    g.add_argument("--preset", choices=PRESETS, default="cpu-quick")
    g.add_argument("--set", help="a distilled synthetic set: measure the windows on its images instead of the "
                                 "initialisation (its own settings; --ipc and --preset are then not used)")
    g.add_argument("--width", type=int, help="override the distillation network's width")
    g.add_argument("--after", type=int, default=50, help="network updates before CFC's share is measured again "
                                                         "(default: %(default)s)")
    g.add_argument("--out", help="write OUT.md and OUT.json")
    g.set_defaults(func=cmd_diagnose)

    c = sub.add_parser("prepare", help="decode an image folder once into a memory-mapped cache for distill --cache")
    c.add_argument("--data-root", required=True, help="the ImageFolder: one folder of images per class")
    c.add_argument("--cache", required=True, help="the cache directory (an interrupted prepare resumes in it)")
    c.add_argument("--classes", help="a file with one class folder per line, or a shipped list (imagenet10, "
                                     "imagenet100); default: every class folder")
    c.add_argument("--size", type=int, help="shorter side resized to this, then center-cropped (default: the "
                                            "images' own size when they are square and share one; else 224)")
    c.add_argument("--workers", type=int, help="decoding threads (default: every core)")
    unreadable_options(c)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_prepare)

    s = sub.add_parser("show", help="save a PNG grid of a synthetic set")
    s.add_argument("path")
    s.add_argument("--out")
    s.add_argument("--scale", type=int, default=3)
    s.add_argument("--decoded", action="store_true", help="show the decoded training images")
    s.set_defaults(func=cmd_show)
    return p


def _distributed(args) -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group, NCCL with one GPU per process, else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        return
    if args.device.startswith("cuda"):
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(args.device)
    dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    if dist.get_rank() > 0:
        args.quiet = True


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    start = time.time()
    try:
        if args.command == "distill":
            _distributed(args)
        args.func(args)
    except Interrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130  # as a shell reports a run stopped by Ctrl-C
    except UDDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if not getattr(args, "quiet", True):
        print(f"done in {time.time() - start:.0f} s")
    return 0
