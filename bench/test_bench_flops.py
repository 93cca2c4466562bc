"""How close one inner step comes to this machine's limit, and where its time goes.

    pytest bench/test_bench_flops.py --benchmark-only -s

- the FLOPs of one inner step (window mining, matching, network update), counted by
  ``torch.utils.flop_counter.FlopCounterMode``, for the ``cpu-quick`` and ``idc`` presets at Fashion-MNIST
  IPC=1 in fp32 and bf16, and the GFLOP/s the step achieves. The count is the network's work (convolutions
  and linear layers): it is taken with ``ops``' reference layers, since the CPU form of average pooling is a
  GEMM that the counter would add (9 GFLOP of ``cpu-quick``'s 167) though it replaces a pass of additions;
- beside it, in the same run, the machine's measured peak: one 3x3 convolution of a ConvNet-3 middle layer
  (256 x 128 x 14 x 14 -> 128 channels, forward) in fp32 and in bf16;
- the step's ops sorted by self time (``torch.profiler``), printed: what the step spends outside convolutions.
"""
import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from test_bench_step import fmnist_like
from timing import DEVICE, conv_gemm_share, inner_step, sync
from udd_fast import Distiller, ops, preset
from udd_fast.cpu import keep_freed_memory

CONV_INPUT, CONV_OUT = (256, 128, 14, 14), 128
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def conv_peak() -> dict[str, float]:
    """GFLOP/s of the reference convolution in each dtype: the best of 5 timed calls after 2 warm-ups, with
    freed memory kept as in the step (the output's page faults are not the convolution's)."""
    keep_freed_memory()
    peak = {}
    for name, dtype in DTYPES.items():
        x = torch.randn(CONV_INPUT, device=DEVICE, dtype=dtype)
        w = torch.randn(CONV_OUT, CONV_INPUT[1], 3, 3, device=DEVICE, dtype=dtype)
        flops = 2 * CONV_INPUT[0] * CONV_OUT * CONV_INPUT[2] * CONV_INPUT[3] * CONV_INPUT[1] * 9
        times = []
        for i in range(7):
            sync()
            t = time.perf_counter()
            F.conv2d(x, w, padding=1)
            sync()
            times.append(time.perf_counter() - t)
        peak[name] = flops / min(times[2:]) / 1e9
    return peak


def step_setup(name: str, precision: str):
    cfg = preset(name, "fashion-mnist", 1).replace(precision=precision, step="loop")
    step, _ = inner_step(Distiller(fmnist_like(), cfg, DEVICE))
    return cfg, step


@pytest.mark.parametrize("precision", list(DTYPES))
@pytest.mark.parametrize("name", ["cpu-quick", "idc"])
def test_step_against_peak(benchmark, conv_peak, name, precision):
    cfg, step = step_setup(name, precision)
    backend = ops.get_backend()
    ops.set_backend("reference")
    try:
        with FlopCounterMode(display=False) as fc:
            step()
    finally:
        ops.set_backend(backend)
    flops = fc.get_total_flops()
    benchmark.group = f"inner step against the conv peak, fmnist ipc1 {DEVICE}"
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    seconds = benchmark.stats.stats.mean
    achieved = flops / seconds / 1e9
    benchmark.extra_info.update(device=DEVICE, width=cfg.width, precision=precision, gflop_per_step=flops / 1e9,
                                step_s=seconds, gflop_per_s=achieved, conv_peak_gflop_per_s=conv_peak,
                                share_of_peak=achieved / conv_peak[precision], ms_per_image=seconds * 1e3 / 10)
    print(f"\n{name} {precision}: {flops / 1e9:.1f} GFLOP per step in {seconds:.2f} s = {achieved:.1f} GFLOP/s; "
          f"conv peak fp32 {conv_peak['fp32']:.0f}, bf16 {conv_peak['bf16']:.0f} GFLOP/s: "
          f"{100 * achieved / conv_peak[precision]:.0f} % of the {precision} peak")


@pytest.mark.parametrize("precision", list(DTYPES))
@pytest.mark.parametrize("name", ["cpu-quick", "idc"])
def test_step_profile(benchmark, name, precision, capsys):
    """The step's 15 most expensive ops by self time, and the share of its time outside convolution and GEMM
    kernels (printed and recorded; the row times the profiled step)."""
    from torch.profiler import ProfilerActivity, profile

    _, step = step_setup(name, precision)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as p:
        benchmark.pedantic(step, rounds=1)
    key = "self_cuda_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
    benchmark.group = f"step profile, fmnist ipc1 {DEVICE}"
    outside = 1 - conv_gemm_share(p) if DEVICE == "cpu" else None
    benchmark.extra_info.update(device=DEVICE, precision=precision, outside_conv_gemm=outside,
                                ms_per_image=benchmark.stats.stats.mean * 1e3 / 10)
    with capsys.disabled():
        print(f"\n{name} step, {precision}, ops by self time"
              + (f"; {100 * outside:.0f} % of it outside convolution and GEMM kernels:" if outside is not None else ":"))
        print(p.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=40))
