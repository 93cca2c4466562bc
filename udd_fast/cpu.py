"""What makes network passes fast on a CPU: two layers in forms that suit it, and an allocator setting.

- :func:`avg_pool` and :func:`instance_norm` are the CPU forms of the ConvNet's and ResNetAp's pooling and
  norm layers (:mod:`udd_fast.ops` routes CPU tensors here; :mod:`udd_fast.reference` holds the plain forms
  they are tested against). Under bf16 autocast they keep the whole block (conv, norm, ReLU, pool) and its
  double backward in bf16.
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
import os
import platform

import torch
import torch.nn.functional as F

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
