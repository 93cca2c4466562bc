"""What UDD's regions add to an inner step, against the IDC-style step of the same run.

    pytest bench/test_bench_udd_cost.py --benchmark-only -s

The `cpu-quick` preset at Fashion-MNIST and CIFAR-10 shapes (random pixels: the cost does not depend on the
content), IPC=1 and IPC=10, in the precision ``auto`` takes on this machine; UDD is the preset (jitter policy,
P=8 of 12 windows, crops in the synthetic batch, CFC), IDC-style the same with ``policy=None, cfc=False``, and
UDD with ``crop_sample=0.1`` (a tenth of the chosen crops in each step's batch).
Each row is ms per stored synthetic image of one whole step (window mining, matching, network update; the
median of five steps, the three methods' steps taken in turn so that the machine's drift falls on all of them
alike); within a group the ratio of two rows is UDD's extra cost, printed as ``x`` IDC-style's step. Printed beside it: the
step's parts, and how many images the synthetic batch of a class holds (the crops multiply it by 1 + P at
factor 1, 1 + P per tile at factor 2).
"""
import statistics
import time

import pytest

from timing import DEVICE, inner_step, sync
from udd_fast import Distiller, preset
from udd_fast.estimate import shaped_like
from udd_fast.losses import resolve_precision
from udd_fast.regions import crops_kept

CASES = [("fashion-mnist", 1), ("fashion-mnist", 10), ("cifar10", 1), ("cifar10", 10)]
METHODS = {"idc-style": {"regions": {"policy": None}, "cfc": False}, "udd": {},
           # a tenth of each class's chosen crops per step, drawn at random and weighted up (crop_sample)
           "udd-crop-sample-0.1": {"regions": {"crop_sample": 0.1}}}


def parts(d, syn, net, opt, bank) -> dict[str, float]:
    """Seconds of each part of one step, in the loop's order."""
    times = {}
    sync()
    t = time.perf_counter()
    d.underutilized_windows(net, syn, 0)
    sync()
    times["windows"] = time.perf_counter() - t
    t = time.perf_counter()
    syn.grad = None
    d.matching_gradient(net, syn, bank, 0)  # mines the windows again: matching = this minus windows
    sync()
    times["matching"] = time.perf_counter() - t - times["windows"]
    t = time.perf_counter()
    d.train_network(net, opt, syn)
    sync()
    times["update"] = time.perf_counter() - t
    return times


ROUNDS = 5  # timed steps per method, in alternation, after one untimed step each


@pytest.fixture(scope="module")
def side_by_side():
    """``measure(dataset, ipc)``: each method's median step over :data:`ROUNDS` rounds, the methods' steps taken
    in turn within every round (idc-style, udd, udd-crop-sample-0.1, then again), so that this machine's drift
    (up to 1.6x over hours) and its step-to-step noise (about 10 %) fall on every method alike; then each
    method's parts. Cached per case, so the three rows of a case come from one measurement."""
    cache = {}

    def measure(dataset, ipc):
        if (dataset, ipc) not in cache:
            runs = {}
            for method, overrides in METHODS.items():
                cfg = preset("cpu-quick", dataset, ipc).replace(**overrides)
                cfg = cfg.replace(precision=resolve_precision(cfg.precision, DEVICE))
                d = Distiller(shaped_like(dataset, 100, DEVICE), cfg, DEVICE)
                step, state = inner_step(d)
                step()  # untimed: allocations and caches
                runs[method] = (d, step, state, [])
            for _ in range(ROUNDS):
                for d, step, state, seconds in runs.values():
                    start = time.perf_counter()
                    step()
                    seconds.append(time.perf_counter() - start)
            cache[dataset, ipc] = {m: (d, statistics.median(seconds), parts(d, *state))
                                   for m, (d, step, state, seconds) in runs.items()}
        return cache[dataset, ipc]

    return measure


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dataset,ipc", CASES)
def test_udd_step_against_idc_style(benchmark, side_by_side, dataset, ipc, method):
    rows = side_by_side(dataset, ipc)
    d, seconds, split = rows[method]
    cfg, idc_seconds = d.cfg, rows["idc-style"][1]
    stored = d.num_classes * cfg.ipc
    benchmark.group = f"UDD against IDC-style, cpu-quick {dataset} ipc{ipc} {DEVICE}"
    benchmark.pedantic(lambda: None, rounds=1)  # the row carries the side-by-side medians
    n = cfg.ipc * cfg.factor ** 2
    per_class = n + (crops_kept(n, cfg.regions.p, cfg.regions.crop_sample) if cfg.regions.policy else 0)
    benchmark.extra_info.update(device=DEVICE, precision=cfg.precision, ms_per_image=seconds * 1e3 / stored,
                                step_s=seconds, against_idc_style=seconds / idc_seconds,
                                synthetic_batch_per_class=per_class, **{f"{k}_s": v for k, v in split.items()})
    print(f"\n{dataset} ipc{ipc} {method} ({cfg.precision}): step {seconds:.2f} s = "
          f"{seconds * 1e3 / stored:.1f} ms per stored image, x{seconds / idc_seconds:.2f} IDC-style's step; "
          f"windows {split['windows']:.2f} s, matching {split['matching']:.2f} s, network update "
          f"{split['update']:.2f} s; {per_class} synthetic images per class")
