"""Window pooling: overlap-weighted, channel-averaged means of a feature map over N windows, one pass.

Each program owns one image ``b`` and one slice of its work (a strided set of pixel tiles times a range of
channels). Per pixel tile it

1. sums the tile over its channels in fp32 (a ``(BLOCK_C, BLOCK_HW)`` accumulator, reduced once per tile,
   so every pixel sees the same summation order: mirrored pixels of a mirrored map get identical sums);
2. builds the exact overlap weights of all N windows with the tile's pixels in-kernel from the window table,
   ``w[n, p] = overlap_y(n, y_p) * overlap_x(n, x_p)``, and contracts ``(BLOCK_N, BLOCK_HW) x (BLOCK_HW,)``.

Both steps, the window table and the launch plan are shared with :mod:`jitter_score` (:mod:`utils`).

The contraction accumulates in fp64. It is at most BLOCK_N multiply-adds per *pixel* (not per element), and
it keeps windows that are equal up to symmetry equal after the fp32 cast, so rankings of the scores break
ties like the reference (which pools in fp64) instead of by rounding noise.

Grid ``(B, S)``: ``S = S_HW * S_C`` slices per image, 1 when B alone fills the GPU (ConvNet-3 at 32 px:
B ~ 100..1000 images of 128x4x4 .. 128x32x32), more when it does not (ResNetAp-10: B = 10..20 images of
512x7x7 or 128x28x28; input gradients 3x224x224 with 196 pixel tiles each). Slices write fp64 partials that
one ``sum`` over the slice axis reduces in a fixed order, so results are deterministic (no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import NUM_WARPS, _channel_sum, _load_windows, _tile_weights, block_sizes, plan_split, window_table


@triton.jit
def _window_pool_kernel(x_ptr, win_ptr, out_ptr,
                        C, H, W, N, stride_b, stride_c, stride_h, stride_w,
                        S_HW, S_C, c_per_split,
                        ABS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_HW: tl.constexpr):
    b = tl.program_id(0)
    s = tl.program_id(1)
    s_hw = s // S_C
    c_lo = (s % S_C) * c_per_split
    c_hi = tl.minimum(C, c_lo + c_per_split)

    ay, by, ax, bx, area = _load_windows(win_ptr, N, H, W, BLOCK_N)
    base = x_ptr + b.to(tl.int64) * stride_b
    hw = H * W
    acc = tl.zeros([BLOCK_N], dtype=tl.float64)
    for t in range(s_hw, tl.cdiv(hw, BLOCK_HW), S_HW):
        p = t * BLOCK_HW + tl.arange(0, BLOCK_HW)
        pmask = p < hw
        yy = p // W
        xx = p - yy * W
        plane = _channel_sum(base, c_lo, c_hi, stride_c, yy * stride_h + xx * stride_w, pmask,
                             ABS, BLOCK_C, BLOCK_HW)
        wgt = _tile_weights(ay, by, ax, bx, yy, xx, pmask)
        acc += tl.sum(wgt.to(tl.float64) * plane.to(tl.float64)[None, :], axis=1)

    n = tl.arange(0, BLOCK_N)
    res = acc / (area * tl.cast(C, tl.float64))
    # out is (B, S, N): fp32 (B, N) when S == 1, else fp64 partials for the fixed-order reduction.
    tl.store(out_ptr + (b.to(tl.int64) * (S_HW * S_C) + s) * N + n, res.to(out_ptr.dtype.element_ty),
             mask=n < N)


def window_pool(fmap: torch.Tensor, windows: torch.Tensor, mode: str = "value", *,
                split: tuple[int, int] | None = None) -> torch.Tensor:
    """Overlap-weighted mean of ``fmap`` (B, C, h, w) over each window, averaged over channels: fp32 (B, N).

    ``mode="abs"`` pools ``|fmap|``. Any float dtype and any strides (channels_last, views) are read in place.
    ``split=(pixel_slices, channel_slices)`` overrides how each image's work is divided among programs.
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
    block_n, block_c, block_hw = block_sizes(n, c, h * w)
    s_hw, s_c, c_per = plan_split(b, c, h * w, block_c, block_hw, fmap.device, split)
    s = s_hw * s_c
    out = torch.empty(b, s, n, dtype=torch.float32 if s == 1 else torch.float64, device=fmap.device)
    _window_pool_kernel[(b, s)](
        fmap, win, out, c, h, w, n, *fmap.stride(), s_hw, s_c, c_per,
        ABS=mode == "abs", BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=NUM_WARPS)
    return out[:, 0] if s == 1 else out.sum(1).float()
