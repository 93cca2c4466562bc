"""What makes network passes fast on a CPU: two layers in forms that suit it, and an allocator setting.

- :func:`avg_pool` and :func:`instance_norm` are the CPU forms of the ConvNet's and ResNetAp's pooling and
  norm layers (:mod:`udd_fast.ops` routes CPU tensors here; :mod:`udd_fast.reference` holds the plain forms
  they are tested against). Under bf16 autocast they keep the whole block (conv, norm, ReLU, pool) and its
  double backward in bf16. :func:`fused_instance_norm` is the norm (and the ReLU after it) with its backward and
  double backward as two kernels of the compiled extension, where ATen's are a composite of map-sized ops.
- :func:`keep_freed_memory` stops glibc's malloc from handing freed blocks back to the kernel. A network
  pass on CPU allocates and frees activation buffers of megabytes many times a second; glibc serves large
  blocks with ``mmap`` and returns them on ``free``, so every new buffer is zero-filled again, one page fault
  per 4 KiB page: over 100,000 faults per ``cpu-quick`` step, and nearly half of an evaluation batch's time
  under bf16 (0.35 s, 0.19 s with the setting; ``bench/test_bench_speedup.py`` shows the paths). What
  PyTorch's CPU tuning guide gets from jemalloc or tcmalloc, without a dependency.
  ``UDD_FAST_KEEP_FREED_MEMORY=0`` leaves malloc as it is.
"""
from __future__ import annotations

import ctypes
import math
import os
import platform

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc <malloc.h>
_applied: bool | None = None


def _pool_matrix(w: int, k: int, like: torch.Tensor) -> torch.Tensor:
    """(k * w, w // k), entries 0 or 1/k^2: column j averages the k x k block j of k image rows of width w laid
    end to end (input columns past k * (w // k) belong to no block)."""
    col = torch.arange(k * w, device=like.device) % w
    block = (col[:, None] // k == torch.arange(w // k, device=like.device)[None]) & (col < k * (w // k))[:, None]
    return block.to(like.dtype) / (k * k)


def avg_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`udd_fast.reference.avg_pool` as one matrix product.

    Each group of k rows is contiguous, so a free reshape lays it out as one row of k * W, and a constant
    (k W, W / k) matrix averages its blocks: a single GEMM on the CPU's vector and AMX units, forward +
    backward 2-3x (fp32) and 7-8x (bf16) faster than the NCHW ``avg_pool2d`` kernels at a ConvNet's first block
    (``bench/test_bench_layers.py``). Its gradient is a product with the same matrix, so the double backward
    of gradient matching stays on GEMMs too. 1/4 and 1/16 are exact in bf16, so the result is rounded once,
    as ``avg_pool2d``'s is."""
    ho = x.shape[-2] // k
    rows = x[..., :ho * k, :].reshape(*x.shape[:-2], ho, k * x.shape[-1])
    return rows @ _pool_matrix(x.shape[-1], k, x)


def instance_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """:func:`udd_fast.reference.instance_norm` with ``weight`` and ``bias`` in ``x``'s dtype, outside autocast.

    Autocast hands group norm the bf16 map with fp32 weight and bias, so the kernel returns its mean and
    inverse deviation in fp32; the twice-differentiable backward that gradient matching records then
    multiplies bf16 maps by fp32 statistics, which promotes every map-sized intermediate to fp32 and casts
    it back. In one dtype all of it stays bf16: value, backward and double backward 1.4x faster in the bench.
    The kernel still sums the moments in fp32 and rounds only the stored statistics. (CUDA keeps the
    reference: the norm is not where a GPU step goes.)"""
    with torch.autocast(x.device.type, enabled=False):
        return F.group_norm(x, x.shape[1], weight.to(x.dtype), bias.to(x.dtype), eps)


class _FusedNormBackward(torch.autograd.Function):
    """The backward of instance norm (and of the ReLU after it, given its output ``y``) as one kernel, and its
    own backward (what matching's second differentiation runs) as one more (``csrc/cpu/instance_norm_kernel.cpp``
    holds the formulas). In the form ``torch.func.grad`` takes (forward without ``ctx``), since the synthetic
    side's gradients come from it."""

    @staticmethod
    def forward(grad, x, mean, rstd, weight, y):
        return torch.ops.udd_fast.instance_norm_backward(grad, x, mean, rstd, weight, y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, u, uw, ub):
        grad, x, mean, rstd, weight, y = ctx.saved_tensors
        u = torch.zeros_like(x) if u is None else u
        gx, gg, gw = torch.ops.udd_fast.instance_norm_double_backward(u, uw, ub, grad, x, mean, rstd, weight, y)
        # ReLU's mask is constant almost everywhere: y gets no gradient
        return gg, gx, None, None, gw, None


class _FusedNorm(torch.autograd.Function):
    """``group_norm(x, C, weight, bias)``, then ReLU in place when ``relu``, by ATen's forward kernels,
    differentiated by :class:`_FusedNormBackward` (the statistics are constants there: their dependence on ``x``
    is in its formulas; the ReLU's output is its mask)."""

    @staticmethod
    def forward(x, weight, bias, eps, relu):
        n, c = x.shape[:2]
        y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, math.prod(x.shape[2:]), c, eps)
        return y.relu_() if relu else y, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, _, relu = inputs
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(x, output[1], output[2], weight, output[0] if relu else None)

    @staticmethod
    def backward(ctx, g, _mean, _rstd):
        x, mean, rstd, weight, y = ctx.saved_tensors
        dx, dw, db = _FusedNormBackward.apply(g, x, mean, rstd, weight, y)
        return dx, dw, db, None, None


def fused_instance_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
                        relu: bool = False) -> torch.Tensor:
    """:func:`instance_norm` (then ReLU, when ``relu``) with its backward and double backward each one kernel of
    the compiled extension (two passes over each row of H x W values) instead of ATen's composite of some
    twenty map-sized ops, and ReLU's two ``threshold_backward`` passes folded into them: the block's share of a
    matching step outside its convolution, on CPU. Same dtype rule as :func:`instance_norm`; needs the
    extension. Works under ``torch.func.grad``; has no batching rule for ``torch.func.vmap`` (:mod:`udd_fast.ops`
    routes vmapped maps to :func:`instance_norm`)."""
    from udd_fast import _extension  # noqa: F401  (loading it registers the kernels)

    with torch.autocast(x.device.type, enabled=False):
        return _FusedNorm.apply(x, weight.to(x.dtype), bias.to(x.dtype), eps, relu)[0]


def keep_freed_memory(device: torch.device | str = "cpu") -> bool:
    """For work on ``device``: when it is the CPU, make glibc's malloc serve every allocation from its heap (no
    ``mmap``) and keep freed memory there (trim only past 2 GiB free at the top), for the rest of the process:
    the process then holds the peak of its heap until it exits. Once per process; returns whether it is in
    effect (False off glibc, e.g. on macOS or musl, or under ``UDD_FAST_KEEP_FREED_MEMORY=0``, where nothing
    changes). The distiller and the evaluation call it with their device; other devices leave malloc as it is
    (their tensors do not come from it)."""
    global _applied
    if torch.device(device).type != "cpu":
        return bool(_applied)
    if _applied is None:
        _applied = False
        wanted = os.environ.get("UDD_FAST_KEEP_FREED_MEMORY", "1") != "0"
        if wanted and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(None)
            _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _applied


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (else what the platform says)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
