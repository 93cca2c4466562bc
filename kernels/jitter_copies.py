"""M jittered copies of a batch of images in one launch, with counter-based (Philox) noise.

Each Philox call yields four numbers, so a program handles ``BLOCK`` groups of four consecutive elements
(a ``(BLOCK, 4)`` tile: contiguous, coalesced stores) with one counter per group. The counter is
``copy * ceil(numel / 4) + group``, independent of the block size and the grid, so a seed gives the same
noise on every device and launch shape. Grid ``(groups / BLOCK, M)``: copies run in parallel and re-read the
source tile from cache; CIFAR batches (100 x 3x32x32, M = 4..8) give ~300 x M programs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import NUM_WARPS

KINDS = {"gaussian": 0, "uniform": 1, "salt_pepper": 2}
BLOCK = 256  # groups of four per program: 1024 elements, 8 per thread with 4 warps


@triton.jit
def _jitter_copies_kernel(x_ptr, out_ptr, numel, n_groups, D1, D2, D3, s0, s1, s2, s3, strength, seed,
                          KIND: tl.constexpr, CONTIG: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    copy = tl.program_id(1).to(tl.int64)
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    k = tl.arange(0, 4)
    i = g[:, None] * 4 + k[None, :]
    mask = i < numel
    if CONTIG:
        src = i.to(tl.int64)
    else:
        i3 = i % D3
        t = i // D3
        i2 = t % D2
        t = t // D2
        i1 = t % D1
        i0 = t // D1
        src = i0.to(tl.int64) * s0 + i1.to(tl.int64) * s1 + i2.to(tl.int64) * s2 + i3.to(tl.int64) * s3
    x = tl.load(x_ptr + src, mask=mask, other=0.0)
    if F64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)

    counter = copy * n_groups + g
    if KIND == 0:
        r0, r1, r2, r3 = tl.randn4x(seed, counter)
    else:
        r0, r1, r2, r3 = tl.rand4x(seed, counter)
    r = tl.where(k[None, :] == 0, r0[:, None],
                 tl.where(k[None, :] == 1, r1[:, None], tl.where(k[None, :] == 2, r2[:, None], r3[:, None])))
    if KIND == 0:
        y = x + strength * r
    elif KIND == 1:
        y = x + strength * (2.0 * r - 1.0)
    else:
        salt = tl.where(r < strength * 0.5, 1.0, 0.0)
        y = tl.where(r < strength, salt, x)
    tl.store(out_ptr + copy * numel + i, y.to(out_ptr.dtype.element_ty), mask=mask)


def jitter_copies(images: torch.Tensor, m: int, strength: float, kind: str = "gaussian",
                  seed: int = 0) -> torch.Tensor:
    """``m`` jittered copies ``(m, *images.shape)`` of ``images``, same dtype, contiguous.

    gaussian: ``x + strength * N(0, 1)``; uniform: ``x + strength * U(-1, 1)``; salt_pepper: with probability
    ``strength`` a pixel becomes 0 or 1 (equally likely), else it is kept. Same ``seed`` -> same output.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown jitter kind {kind!r}; use one of {tuple(KINDS)}")
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")
    images = images.detach()
    out = torch.empty((m, *images.shape), dtype=images.dtype, device=images.device)
    numel = images.numel()
    if m == 0 or numel == 0:
        return out
    src = images if images.dim() <= 4 else images.contiguous()
    shape4 = [1] * (4 - src.dim()) + list(src.shape) if src.dim() <= 4 else [1, 1, 1, numel]
    stride4 = [0] * (4 - src.dim()) + list(src.stride()) if src.dim() <= 4 else [0, 0, 0, 1]
    n_groups = triton.cdiv(numel, 4)
    _jitter_copies_kernel[(triton.cdiv(n_groups, BLOCK), m)](
        src, out, numel, n_groups, shape4[1], shape4[2], shape4[3], *stride4, float(strength),
        int(seed) & 0x7FFFFFFFFFFFFFFF,
        KIND=KINDS[kind], CONTIG=src.is_contiguous(), F64=images.dtype == torch.float64, BLOCK=BLOCK,
        num_warps=NUM_WARPS)
    return out
