"""The CPU path before and after, side by side in one run: the ``cpu-quick`` inner step (Fashion-MNIST IPC=1,
window mining, matching and network update) and one training batch of the evaluation network (ConvNet-3
width 128, batch 256, forward, backward and SGD step).

    pytest bench/test_bench_speedup.py --benchmark-only -s

- ``old``: fp32, torch's ``avg_pool2d`` and fp32 group norm (``ops``' reference layers), the real batches'
  gradients under ``torch.func.grad``, malloc as glibc sets it: the path before the layers' CPU forms,
  ``losses.real_gradients`` and ``udd_fast.cpu.keep_freed_memory``;
- ``composite-norm-fp32``: ``new-fp32`` with the norm's derivatives as ATen's composite, not the extension's
  kernels (the path before ``udd_fast.cpu.fused_instance_norm``);
- ``relu-apart-fp32``: ``new-fp32`` with the ReLU after each norm as its own op (``F.relu`` and its
  ``threshold_backward`` passes), not folded into the norm's kernels;
- ``new-fp32``: the layers' CPU forms (the norm's backward and double backward, with the ReLU after it, as the
  extension's kernels), the real gradients by plain autograd, freed memory kept, in fp32;
- ``new-bf16``: the same under bf16 autocast, what ``precision="auto"`` picks on a CPU with AMX or AVX-512
  BF16 (on a CPU without, the row shows what it would cost).

The allocator setting lasts for a process, so every path runs in a fresh process of its own (this file run
as a script), alternating the paths for :data:`ROUNDS` rounds; a row is the best of its path's
timed calls. CPU only: on CUDA the layers keep torch's kernels and the allocator is CUDA's.
"""
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from timing import DEVICE

PATHS = ("old", "composite-norm-fp32", "relu-apart-fp32", "new-fp32", "new-bf16")
TARGETS = {"cpu-quick-step": 10, "eval-batch": 256}  # target -> images per call (synthetic; training)
FMNIST_SHAPE = SimpleNamespace(channels=1, size=28, num_classes=10)  # what training_batch reads of a dataset
ROUNDS, CALLS = 2, 3  # processes per path; timed calls per process, after one untimed


def measure(target: str, path: str) -> dict:
    """Run in a fresh process: the best of CALLS timed calls of ``target`` on ``path``, and the page faults
    of the fastest."""
    from udd_fast import Distiller, cpu, distiller, ops, preset
    from udd_fast.cpu import keep_freed_memory
    from udd_fast.evaluate import protocol, training_batch

    precision = "bf16" if path == "new-bf16" else "fp32"
    if path == "old":
        ops._cpu_form = lambda t: False  # the reference layers only; crop_resize keeps its extension as before
        distiller.real_gradients = lambda *a: None  # grad_match then takes them under torch.func.grad
    if path == "composite-norm-fp32":
        ops._fused_norm = lambda: False
    if path == "relu-apart-fp32":
        norm_alone = cpu.fused_instance_norm

        def norm_then_relu(x, w, b, eps, relu=False):
            y = norm_alone(x, w, b, eps)
            return torch.relu(y) if relu else y
        cpu.fused_instance_norm = norm_then_relu
    if target == "cpu-quick-step":
        from test_bench_step import fmnist_like
        from timing import inner_step

        cfg = preset("cpu-quick", "fashion-mnist", 1).replace(precision=precision, step="loop")
        call, _ = inner_step(Distiller(fmnist_like(), cfg, "cpu"))  # the distiller keeps freed memory
    else:
        keep_freed_memory()  # as the evaluation's training does (the old path's environment turns it off)
        batch = training_batch(protocol("dsa"), FMNIST_SHAPE, torch.device("cpu"))

        def call():
            batch(precision)
    call()
    best = (float("inf"), 0)
    for _ in range(CALLS):
        faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        call()
        best = min(best, (time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    return {"seconds": best[0], "page_faults": best[1], "precision": precision, "threads": torch.get_num_threads(),
            "keep_freed_memory": keep_freed_memory()}


@pytest.fixture(scope="module")
def side_by_side() -> dict:
    """target -> path -> the best measurement over its processes."""
    out = {}
    for target in TARGETS:
        runs = {p: [] for p in PATHS}
        for _ in range(ROUNDS):
            for path in PATHS:
                env = {**os.environ, "UDD_FAST_KEEP_FREED_MEMORY": "0" if path == "old" else "1"}
                done = subprocess.run([sys.executable, __file__, target, path], env=env, capture_output=True,
                                      text=True, check=True, cwd=Path(__file__).parent)
                runs[path].append(json.loads(done.stdout.strip().splitlines()[-1]))
        out[target] = {p: min(r, key=lambda m: m["seconds"]) for p, r in runs.items()}
    return out


@pytest.mark.skipif(DEVICE == "cuda", reason="the CPU path; on CUDA the layers keep torch's kernels")
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_cpu_path_side_by_side(benchmark, side_by_side, target, path):
    m, old = side_by_side[target][path], side_by_side[target]["old"]
    benchmark.group = f"old against new CPU path, {target}"
    benchmark.pedantic(lambda: None, rounds=1)
    benchmark.extra_info.update(device="cpu", ms_per_image=m["seconds"] * 1e3 / TARGETS[target],
                                speedup_vs_old=old["seconds"] / m["seconds"], **m)
    print(f"\n{target} {path}: {m['seconds']:.3f} s per call, {m['page_faults']} page faults, "
          f"x{old['seconds'] / m['seconds']:.2f} against old ({m['threads']} threads)")


if __name__ == "__main__":
    print(json.dumps(measure(*sys.argv[1:3])))
