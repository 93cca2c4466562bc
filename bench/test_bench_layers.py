"""The two network layers with a CPU form (``udd_fast.cpu``) against torch's own (``udd_fast.reference``), in ms
per image, at the first block of the ConvNet-3 of Fashion-MNIST (64 maps of 32 x 32), batch 64.

    pytest bench/test_bench_layers.py --benchmark-only

- ``avg_pool``: forward + backward, fp32 and bf16 (``avg_pool2d`` against one GEMM);
- ``instance_norm``: what gradient matching asks of it, in fp32 and under bf16 autocast: forward, backward with
  a graph, and the backward of that (under autocast the reference runs in fp32, the CPU forms in bf16); the
  CPU form as ATen's composite (``cpu``) and with its two derivatives as the extension's kernels (``fused``);
- ``instance_norm_relu``: the same with the ReLU after it, as a ConvNet block has them: each form followed by
  ``F.relu``, and ``folded``, the fused norm taking the ReLU into its kernels (``relu=True``).

CPU only: on CUDA both layers keep torch's kernels. Freed memory is kept (``udd_fast.cpu.keep_freed_memory``),
as in a distillation or evaluation process, so that page faults do not blur the rows.
"""
import pytest
import torch
import torch.nn.functional as F

from timing import DEVICE, timed
from udd_fast import _extension, cpu, reference

SHAPE = (64, 64, 32, 32)
cpu.keep_freed_memory()


def pool_call(fn, dtype):
    x = torch.randn(SHAPE, dtype=dtype, requires_grad=True)
    g = torch.randn(SHAPE[0], SHAPE[1], SHAPE[2] // 2, SHAPE[3] // 2, dtype=dtype)
    return lambda: torch.autograd.grad(fn(x, 2), x, g)


def norm_call(fn, dtype):
    x = torch.randn(SHAPE, requires_grad=True)
    w, b = torch.rand(SHAPE[1]) + 0.5, torch.randn(SHAPE[1])

    def call():
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
            h = x.to(dtype) * 1  # a map in the dtype a conv returns
            y = fn(h, w, b)
        gx, = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), x)

    return call


@pytest.mark.skipif(DEVICE == "cuda", reason="the CPU forms; on CUDA the layers keep torch's kernels")
@pytest.mark.parametrize("form", ["reference", "cpu", "fused", "folded"])
@pytest.mark.parametrize("case", ["avg_pool-fp32", "avg_pool-bf16", "instance_norm-fp32-double-backward",
                                  "instance_norm-bf16-double-backward", "instance_norm_relu-fp32-double-backward",
                                  "instance_norm_relu-bf16-double-backward"])
def test_layer(benchmark, case, form):
    relu = case.startswith("instance_norm_relu")
    if form in ("fused", "folded") and (case.startswith("avg_pool") or
                                        not _extension.has_op("instance_norm_double_backward", "relu_out")):
        pytest.skip("the fused forms are the norm's, and need the compiled extension")
    if form == "folded" and not relu:
        pytest.skip("folded is the norm with the ReLU after it")
    dtype = torch.bfloat16 if "bf16" in case else torch.float32
    benchmark.group = f"layer {case}, {SHAPE[0]} x {SHAPE[1]} x {SHAPE[2]} x {SHAPE[3]}, cpu"
    if case.startswith("avg_pool"):
        call = pool_call({"reference": reference, "cpu": cpu}[form].avg_pool, dtype)
    elif form == "folded":
        call = norm_call(lambda h, w, b: cpu.fused_instance_norm(h, w, b, relu=True), dtype)
    else:
        norm = {"reference": reference.instance_norm, "cpu": cpu.instance_norm, "fused": cpu.fused_instance_norm}[form]
        call = norm_call((lambda h, w, b: F.relu(norm(h, w, b))) if relu else norm, dtype)
    timed(benchmark, call, SHAPE[0], rounds=5)
