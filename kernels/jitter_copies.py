"""M jittered copies of a batch of images in one launch, with counter-based (Philox4x32-10) noise.

The noise of element e of image i in copy m is a pure function of (key, i, m, e): Philox's counter is
``(e // 4, i, m, i >> 32)`` and its key the 64-bit ``seed``, each call giving the four numbers of four
consecutive elements. ``i`` is the image's *global* index (``first_image`` + its row in the batch), so an
image gets the same noise whatever batch it is in, on every device and launch shape: classes split over
processes give the noise of one process. :func:`udd_fast.reference.jitter_copies` computes the same
definition in plain torch (uniform and salt-and-pepper bit for bit; Gaussian to within the last bits of the
log / sin / cos the backends use).

A program handles ``BLOCK`` groups of four consecutive elements of one image in one copy (a ``(BLOCK, 4)``
tile: contiguous, coalesced stores). The grid is one-dimensional, copy fastest, so the M copies of a tile run
together and re-read their source from cache; no grid dimension limits M.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from udd_fast import reference
from udd_fast.errors import UDDError

from .utils import INT32_MAX, NUM_WARPS, device_guard

KINDS = {"gaussian": 0, "uniform": 1, "salt_pepper": 2}
BLOCK = 256  # groups of four per program: 1024 elements, 8 per thread with 4 warps
# The noise definition is the reference's (reference.jitter_noise): the same constants.
UNIFORM_SCALE = tl.constexpr(reference.JITTER_UNIFORM_SCALE)
TWO_PI = tl.constexpr(reference.JITTER_TWO_PI)
MIN_UNIFORM = tl.constexpr(reference.JITTER_MIN_UNIFORM)


@triton.jit
def _uniform(bits):
    """fp32 uniform in [0, 1) from 32 random bits (reference._uniform)."""
    x = bits.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, -x - 1, x)
    return x.to(tl.float32) * UNIFORM_SCALE


@triton.jit(do_not_specialize=["seed"])
def _jitter_copies_kernel(x_ptr, out_ptr, B, per_image, blocks, M, first_image,
                          D1, D2, D3, s0, s1, s2, s3, strength, seed,
                          KIND: tl.constexpr, CONTIG: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    copy = pid % M
    rest = pid // M
    blk = rest % blocks
    image = (rest // blocks).to(tl.int64)

    g = blk * BLOCK + tl.arange(0, BLOCK)
    k = tl.arange(0, 4)
    e = g[:, None] * 4 + k[None, :]  # element within the image: 32-bit (per_image < 2^31); addresses 64-bit
    mask = e < per_image
    if CONTIG:
        src = image * per_image + e
    else:
        i3 = e % D3
        t = e // D3
        i2 = t % D2
        i1 = t // D2
        src = image * s0 + i1.to(tl.int64) * s1 + i2.to(tl.int64) * s2 + i3.to(tl.int64) * s3
    x = tl.load(x_ptr + src, mask=mask, other=0.0)
    if F64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)

    gid = first_image + image
    zero = g * 0
    b0, b1, b2, b3 = tl.philox(seed, g, zero + gid.to(tl.int32), zero + copy, zero + (gid >> 32).to(tl.int32))
    u0 = _uniform(b0)
    u1 = _uniform(b1)
    u2 = _uniform(b2)
    u3 = _uniform(b3)
    if KIND == 0:  # Box-Muller on the pairs (u0, u1) and (u2, u3)
        r01 = tl.sqrt(-2.0 * tl.log(tl.maximum(u0, MIN_UNIFORM)))
        r23 = tl.sqrt(-2.0 * tl.log(tl.maximum(u2, MIN_UNIFORM)))
        u0, u1 = r01 * tl.cos(u1 * TWO_PI), r01 * tl.sin(u1 * TWO_PI)
        u2, u3 = r23 * tl.cos(u3 * TWO_PI), r23 * tl.sin(u3 * TWO_PI)
    r = tl.where(k[None, :] == 0, u0[:, None],
                 tl.where(k[None, :] == 1, u1[:, None], tl.where(k[None, :] == 2, u2[:, None], u3[:, None])))
    if KIND == 0:
        noise = strength * r
        y = x + noise.to(x.dtype)
    elif KIND == 1:
        noise = strength * (2.0 * r - 1.0)
        y = x + noise.to(x.dtype)
    else:
        salt = tl.where(r < strength * 0.5, 1.0, 0.0)
        y = tl.where(r < strength, salt, x)
    out = out_ptr + (copy.to(tl.int64) * B + image) * per_image
    tl.store(out + e, y.to(out_ptr.dtype.element_ty), mask=mask)


def jitter_copies(images: torch.Tensor, m: int, strength: float, kind: str = "gaussian", seed: int = 0,
                  first_image: int = 0) -> torch.Tensor:
    """``m`` jittered copies ``(m, *images.shape)`` of ``images`` (dim 0 indexes images), same dtype, contiguous.

    gaussian: ``x + strength * N(0, 1)``; uniform: ``x + strength * U(-1, 1)``; salt_pepper: with probability
    ``strength`` a pixel becomes 0 or 1 (equally likely), else it is kept. The noise of ``images[b]`` is keyed
    by ``seed`` (0 <= seed < 2^63) and its global index ``first_image + b``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown jitter kind {kind!r}; use one of {tuple(KINDS)}")
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")
    if images.dim() < 1:
        raise ValueError("images needs a leading image dimension")
    if not 0 <= seed < 2 ** 63 or first_image < 0:
        raise UDDError(f"jitter seed must be in [0, 2^63) and first_image >= 0, got {seed} and {first_image}")
    images = images.detach()
    out = torch.empty((m, *images.shape), dtype=images.dtype, device=images.device)
    b = images.shape[0]
    if m == 0 or images.numel() == 0:
        return out
    src = images if images.dim() <= 4 else images.contiguous().view(b, -1)
    per_image = images.numel() // b
    if per_image > INT32_MAX - 4 * BLOCK:
        raise UDDError(f"jitter_copies: {per_image} elements per image, more than the kernel's 2^31")
    # (B, D1, D2, D3) view of the source with its strides: 1-sized dimensions pad images of fewer dims.
    shape4 = [b] + [1] * (4 - src.dim()) + list(src.shape[1:])
    stride4 = [src.stride(0)] + [0] * (4 - src.dim()) + list(src.stride()[1:])
    blocks = triton.cdiv(triton.cdiv(per_image, 4), BLOCK)
    programs = blocks * b * m
    if programs > INT32_MAX:
        raise UDDError(f"jitter_copies: {programs} programs exceed the grid; use fewer copies or images per call")
    with device_guard(images):
        # No fused multiply-adds: x + strength * r rounds as in the reference (torch adds the product).
        _jitter_copies_kernel[(programs,)](
            src, out, b, per_image, blocks, m, int(first_image), *shape4[1:], *stride4,
            float(strength), int(seed),
            KIND=KINDS[kind], CONTIG=src.is_contiguous(), F64=images.dtype == torch.float64, BLOCK=BLOCK,
            num_warps=NUM_WARPS, enable_fp_fusion=False)
    return out
