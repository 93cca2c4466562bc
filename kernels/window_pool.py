"""Window pooling: overlap-weighted, channel-averaged means of a feature map over N windows, one pass.

Each program owns one image ``b`` and one slice of its work (a strided set of row tiles times a range of
channels). Per tile it sums the tile over its channels in fp32 (a ``(BLOCK_C, pixels)`` accumulator, reduced
once per tile, so every pixel sees the same summation order) and adds ``row weight * plane`` into a
``(BLOCK_N, pixels)`` accumulator that is weighed by the column weights and reduced once, after the last tile
(:func:`utils._pool_slice`, shared with :mod:`jitter_score`). The weights are the exact overlaps of every
window with the unit pixels, built in-kernel from the window table.

Grid ``(B, S)``: ``S = S_HW * S_C`` slices per image, 1 when B alone fills the GPU (ConvNet-3 at 32 px:
B ~ 100..1000 images of 128x4x4 .. 128x32x32), more when it does not (ResNetAp-10: B = 10..20 images of
512x7x7 or 128x28x28; input gradients 3x224x224 with 224 row tiles each). Slices write fp64 partials that
one ``sum`` over the slice axis reduces in a fixed order, so results are deterministic (no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import (NUM_WARPS, _pool_slice, _window_area, check_span, device_guard, plan_split, tile_sizes,
                    vector_rows, window_table)


@triton.jit
def _window_pool_kernel(x_ptr, win_ptr, out_ptr,
                        C, H, W, N, stride_b, stride_c, stride_h, stride_w,
                        S_HW, S_C, c_per_split,
                        ABS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                        ROWS: tl.constexpr, BLOCK_W: tl.constexpr):
    b = tl.program_id(0)
    s = tl.program_id(1)
    c_lo = (s % S_C) * c_per_split
    c_hi = tl.minimum(C, c_lo + c_per_split)

    base = x_ptr + b.to(tl.int64) * stride_b
    total = _pool_slice(base, stride_c, stride_h, stride_w, base, 0, stride_c, stride_h, stride_w, 1, win_ptr, N,
                        H, W, c_lo, c_hi, s // S_C, S_HW, ABS, False, BLOCK_N, BLOCK_C, ROWS, BLOCK_W)
    n = tl.arange(0, BLOCK_N)
    res = total / (_window_area(win_ptr, N, H, W, BLOCK_N) * tl.cast(C, tl.float64))
    # out is (B, S, N): fp32 (B, N) when S == 1, else fp64 partials for the fixed-order reduction.
    tl.store(out_ptr + (b.to(tl.int64) * (S_HW * S_C) + s) * N + n, res.to(out_ptr.dtype.element_ty),
             mask=n < N)


def window_pool(fmap: torch.Tensor, windows: torch.Tensor, mode: str = "value", *,
                split: tuple[int, int] | None = None) -> torch.Tensor:
    """Overlap-weighted mean of ``fmap`` (B, C, h, w) over each window, averaged over channels: fp32 (B, N).

    ``mode="abs"`` pools ``|fmap|``. Any float dtype and any strides (channels_last, views) are read in place.
    ``split=(pixel_slices, channel_slices)`` overrides how each image's work is divided among programs.
    With no channel or no pixel the means are NaN, as the reference's.
    """
    if mode not in ("value", "abs"):
        raise ValueError(f"window_pool mode must be 'value' or 'abs', got {mode!r}")
    if fmap.dim() != 4:
        raise ValueError(f"fmap must be (B, C, h, w), got {tuple(fmap.shape)}")
    fmap = fmap.detach()
    win = window_table(windows, fmap.device)
    b, c, h, w = fmap.shape
    n = win.shape[0]
    if b == 0 or n == 0:
        return torch.zeros(b, n, dtype=torch.float32, device=fmap.device)
    if c == 0 or h * w == 0:  # 0 / 0: an empty channel mean or an empty window
        return torch.full((b, n), float("nan"), device=fmap.device)
    check_span(fmap, slice(1, None), "window_pool")
    block_n, block_c, rows, block_w = tile_sizes(n, c, h, w, vector_rows(fmap))
    s_hw, s_c, c_per = plan_split(b, c, h, block_c, rows, fmap.device, split)
    s = s_hw * s_c
    out = torch.empty(b, s, n, dtype=torch.float32 if s == 1 else torch.float64, device=fmap.device)
    with device_guard(fmap):
        _window_pool_kernel[(b, s)](
            fmap, win, out, c, h, w, n, *fmap.stride(), s_hw, s_c, c_per,
            ABS=mode == "abs", BLOCK_N=block_n, BLOCK_C=block_c, ROWS=rows, BLOCK_W=block_w, num_warps=NUM_WARPS)
        return out[:, 0] if s == 1 else out.sum(1).float()
