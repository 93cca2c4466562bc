"""One full inner step of Algorithm 1 and a whole short run, in ms per synthetic image.

    pytest bench/test_bench_step.py --benchmark-only

Fashion-MNIST shape (10 classes of 1x28x28 images, random pixels: the cost does not depend on the content),
the paper's step: activation policy with P=8 of N=12 windows, CFC, l1 matching over the conv weights, a real
batch of 64 per class. ``loop`` is the per-class reference step, ``batched`` the vmapped one.
"""
import time

import pytest
import torch

from timing import DEVICE, sync
from udd_fast import Distiller, RealData, RegionConfig, UDDConfig

# case -> (ipc, ConvNet width)
CASES = {"fmnist-ipc10-w128": (10, 128), "fmnist-ipc1-w32": (1, 32)}


def fmnist_like(per_class=100):
    g = torch.Generator().manual_seed(0)
    return RealData.from_tensors(torch.rand(10 * per_class, 1, 28, 28, generator=g),
                                 torch.arange(10).repeat_interleave(per_class), (0.2861,), (0.3530,), "fashion-mnist")


def config(ipc, width, **kw):
    return UDDConfig(ipc=ipc, width=width, metric="l1", regions=RegionConfig(policy="activation", p=8), **kw)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("step", ["loop", "batched"])
@pytest.mark.parametrize("case", list(CASES))
def test_inner_step(benchmark, case, step, precision):
    ipc, width = CASES[case]
    d = Distiller(fmnist_like(), config(ipc, width, step=step, precision=precision), DEVICE)
    d.seed()
    syn = d.init_synthetic().requires_grad_(True)
    net = d.new_network()
    bank = d.class_embeddings(net, syn)

    def run():
        syn.grad = None
        d.matching_gradient(net, syn, bank, step=0)
        sync()

    cpu_big = DEVICE == "cpu" and width > 32
    benchmark.group = f"inner step {case} {DEVICE}"
    benchmark.extra_info.update(device=DEVICE, images=syn.shape[0], step=step, precision=precision)
    benchmark.pedantic(run, rounds=1 if cpu_big else 3, warmup_rounds=0 if cpu_big else 1)
    benchmark.extra_info["ms_per_image"] = benchmark.stats.stats.mean * 1e3 / syn.shape[0]


@pytest.mark.parametrize("step", ["loop", "batched"])
def test_whole_run(benchmark, step):
    """Throughput of a short run (1 outer x 5 inner, with network updates): synthetic images updated per second."""
    cfg = config(1, 32 if DEVICE == "cpu" else 128, outer=1, inner=5, net_batches=2, step=step,
                 precision="fp32" if DEVICE == "cpu" else "bf16")
    data = fmnist_like()

    def run():
        Distiller(data, cfg, DEVICE).run(progress=False)
        sync()

    benchmark.group = f"whole run fmnist-ipc1 {DEVICE}"
    benchmark.pedantic(run, rounds=1, warmup_rounds=1)
    updates = 10 * cfg.ipc * cfg.inner * cfg.outer
    benchmark.extra_info.update(device=DEVICE, precision=cfg.precision, width=cfg.width,
                                ms_per_image=benchmark.stats.stats.mean * 1e3 / updates,
                                images_per_s=updates / benchmark.stats.stats.mean)


@pytest.mark.parametrize("processes", [1, 2])
def test_torchrun_processes(benchmark, tmp_path, processes):
    """Classes split over torchrun processes (gloo on CPU, NCCL on GPU): Fashion-MNIST IPC=1, 1 x 6 iterations,
    the per-class loop. On CPU the cores are shared out (threads per process = cores / processes)."""
    import json
    import os
    import socket
    import subprocess
    import sys

    if DEVICE == "cuda" and torch.cuda.device_count() < processes:
        pytest.skip(f"needs {processes} GPUs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
           "127.0.0.1", "--master_port", str(port), "-m", "udd_fast", "distill", "--dataset", "fashion-mnist",
           "--ipc", "1", "--preset", "paper", "--outer", "1", "--inner", "6", "--width", "32" if DEVICE == "cpu" else "128",
           "--step", "loop", "--precision", "fp32", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}

    def run():
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

    benchmark.group = f"torchrun processes fmnist-ipc1 {DEVICE}"
    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    wall = json.loads((out / "metrics.json").read_text())["distill_wall_s"]  # the distillation loop alone
    updates = 10 * 6
    benchmark.extra_info.update(device=DEVICE, processes=processes, ms_per_image=wall * 1e3 / updates,
                                images_per_s=updates / wall)
