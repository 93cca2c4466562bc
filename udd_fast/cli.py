"""Command line: ``python -m udd_fast distill | evaluate | baseline | reproduce | show``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from udd_fast.config import CPU_QUICK_NOTES, PRESETS, preset
from udd_fast.data import DATASETS, load_dataset
from udd_fast.distiller import Distiller
from udd_fast.errors import UDDError
from udd_fast.evaluate import EvalProtocol, evaluate, evaluate_images, herding_coreset, random_baseline
from udd_fast.models import MODELS
from udd_fast.regions import POLICIES
from udd_fast.reproduce import PROTOCOLS, STUDIES, Harness
from udd_fast.synset import SyntheticSet

DATASET_CHOICES = [*DATASETS, "imagefolder"]


def _load(args, train: bool):
    """The training or test split. An image folder's training split is streamed from disk (``--data-root``);
    its test split (``--test-root``) is decoded into memory once, since every evaluation epoch reads it."""
    if args.dataset != "imagefolder":
        return load_dataset(args.dataset, train, args.data_root, args.size)
    root = args.data_root if train else (args.test_root or args.data_root)
    return load_dataset("imagefolder", train, root, args.size, classes=args.classes, stream=train,
                        num_workers=args.workers)


def _protocol(args) -> EvalProtocol:
    return EvalProtocol(model=args.eval_model, epochs=args.epochs, repeats=args.repeats)


def _fmt(r: dict) -> str:
    return f"{r['mean']:.2f} ± {r['std']:.2f} % ({r['train_images']} training images, mUE {r['mue']:.3f})"


def cmd_distill(args) -> dict:
    train = _load(args, True)
    cfg = preset(args.preset, args.dataset, args.ipc)
    changes = {k: v for k, v in {"model": args.model, "factor": args.factor, "outer": args.outer, "inner": args.inner,
                                 "width": args.width, "seed": args.seed, "lam": args.lam,
                                 "checkpoint_every": args.checkpoint_every, "step": args.step,
                                 "precision": args.precision}.items() if v is not None}
    if args.model is not None and args.width is None:
        changes["width"] = None  # the model's standard width (ResNetAp-10: 64), not ConvNet's 128
    if args.no_cfc:
        changes["cfc"] = False
    if args.policy is not None:
        changes["regions"] = {"policy": None if args.policy == "none" else args.policy}
    if args.lowest_p is not None:
        changes.setdefault("regions", {})["p"] = args.lowest_p
    cfg = cfg.replace(**changes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    distiller = Distiller(train, cfg, args.device, out)
    syn = distiller.run(progress=not args.quiet, resume=args.resume)
    if distiller.rank > 0:  # under torchrun, rank 0 writes and evaluates
        return {}
    syn.grid_png(out / "grid.png")
    if syn.factor > 1:
        syn.grid_png(out / "grid_decoded.png", decoded=True)
    metrics = {"dataset": args.dataset, "ipc": args.ipc, "preset": args.preset, "form": syn.form(),
               "distill_wall_s": distiller.wall_time, "processes": distiller.world, **distiller.memory,
               "config": json.loads(cfg.to_json())}
    print(f"distilled {len(syn.labels)} images in {distiller.wall_time:.0f} s -> {out / 'synset.safetensors'}")
    if args.evaluate:
        test = _load(args, False)
        proto = _protocol(args)
        metrics["udd"] = evaluate(syn, test, proto, device=args.device, progress=not args.quiet)
        print(f"distilled set ({syn.form()}): {_fmt(metrics['udd'])}")
        if args.baseline:
            metrics["random"] = random_baseline(train, test, args.ipc, proto, args.device)
            print(f"Random real, ipc {args.ipc}: {_fmt(metrics['random'])}")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def cmd_evaluate(args) -> dict:
    syn = SyntheticSet.load(args.path)
    args.dataset = args.dataset or syn.dataset
    test = _load(args, False)
    expand = {"yes": True, "no": False, "saved": None}[args.expand]
    result = evaluate(syn, test, _protocol(args), expand, args.device, progress=not args.quiet)
    print(f"{args.path}: {_fmt(result)}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def cmd_baseline(args) -> dict:
    train, test = _load(args, True), _load(args, False)
    train.check_ipc(args.ipc)
    proto = _protocol(args)
    if args.method == "random":
        result = random_baseline(train, test, args.ipc, proto, args.device)
    else:
        result = evaluate_images(*herding_coreset(train, args.ipc), test, proto, args.device, progress=not args.quiet)
    print(f"{args.method}, ipc {args.ipc}: {_fmt(result)}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


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
    harness = Harness(args.dataset, args.protocol, args.work, args.table, args.device, overrides, evaluation,
                      args.data_root, progress=not args.quiet)
    table = harness.run(args.ipc, keys)
    print(f"table: {table.md} (+ .json)")
    return table.data


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m udd_fast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, dataset_required=True):
        q.add_argument("--dataset", choices=DATASET_CHOICES, required=dataset_required)
        q.add_argument("--data-root", default=None, help="folder with the dataset (default: ./data or $UDD_FAST_DATA)")
        q.add_argument("--size", type=int, default=224, help="image size for imagefolder datasets")
        q.add_argument("--test-root", help="imagefolder: the test split's folder (default: --data-root)")
        q.add_argument("--classes", help="imagefolder: a file with one class folder per line, or a shipped "
                                         "list (imagenet10, imagenet100)")
        q.add_argument("--workers", type=int, help="imagefolder: decoding threads (default: up to 4)")
        q.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    def protocol(q):
        q.add_argument("--epochs", type=int, default=300)
        q.add_argument("--repeats", type=int, default=3)
        q.add_argument("--eval-model", choices=MODELS, default="convnet")

    d = sub.add_parser("distill", help="distill a dataset into a synthetic set")
    common(d)
    d.add_argument("--ipc", type=int, required=True, help="synthetic images per class")
    d.add_argument("--preset", choices=PRESETS, default="cpu-quick", help="paper (GPU) or " + CPU_QUICK_NOTES.replace("%", "%%"))
    d.add_argument("--out", required=True, help="run directory")
    d.add_argument("--policy", choices=[*POLICIES, "none"], help="region policy ('none': IDC-style)")
    d.add_argument("--lowest-p", type=int, help="P: the lowest-scoring windows kept per image (of N=12)")
    d.add_argument("--no-cfc", action="store_true", help="drop the CFC loss")
    d.add_argument("--lam", type=float, help="CFC loss weight")
    d.add_argument("--factor", type=int, help="multi-formation factor")
    d.add_argument("--outer", type=int)
    d.add_argument("--inner", type=int)
    d.add_argument("--model", choices=MODELS, help="distillation network (default: convnet)")
    d.add_argument("--width", type=int)
    d.add_argument("--seed", type=int)
    d.add_argument("--checkpoint-every", type=int, help="outer iterations between checkpoints (OUT/checkpoint.pt)")
    d.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint in --out")
    d.add_argument("--step", choices=["loop", "batched"],
                   help="classes one at a time (loop, the reference) or all in one vmapped pass (batched: "
                        "meant for GPUs; slower than the loop on CPU)")
    d.add_argument("--precision", choices=["fp32", "bf16"], help="bf16: network passes under bfloat16 autocast")
    d.add_argument("--evaluate", action="store_true", help="evaluate the result when done")
    d.add_argument("--baseline", action="store_true", help="with --evaluate, also score random real images")
    protocol(d)
    d.set_defaults(func=cmd_distill)

    e = sub.add_parser("evaluate", help="train fresh networks on a synthetic set and test them")
    e.add_argument("path")
    common(e, dataset_required=False)
    e.add_argument("--expand", choices=["saved", "yes", "no"], default="saved",
                   help="train on the set expanded by its candidate windows (default: as saved)")
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
    r.add_argument("--protocol", choices=list(PROTOCOLS), default="cpu-quick")
    r.add_argument("--study", nargs="+", choices=list(STUDIES), default=["main"],
                   help="main: Table 1 rows and ablations; forms: S alone / expanded / multi-formation; "
                        "windows: Table 5; cross-arch: Table 6")
    r.add_argument("--rows", nargs="+", help="run only these row keys (see udd_fast/reproduce.py)")
    r.add_argument("--work", default="runs/reproduce", help="synthetic sets and checkpoints go here")
    r.add_argument("--table", help="the table's path without suffix (default: WORK/<dataset>-<protocol>/table)")
    r.add_argument("--outer", type=int, help="override the protocol's outer iterations")
    r.add_argument("--inner", type=int, help="override the protocol's inner steps")
    r.add_argument("--width", type=int, help="override the distillation network's width")
    r.add_argument("--epochs", type=int, help="override the evaluation epochs")
    r.add_argument("--repeats", type=int, help="override the evaluation repeats")
    r.set_defaults(func=cmd_reproduce)

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
    except UDDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if not getattr(args, "quiet", True):
        print(f"done in {time.time() - start:.0f} s")
    return 0
