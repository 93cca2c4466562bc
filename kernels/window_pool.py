"""Window pooling: overlap-weighted, channel-averaged means of a feature map over N windows, one pass.

Each program owns one image ``b`` and one slice of its work (a strided set of pixel tiles times a range of
channels). Per pixel tile it

1. sums the tile over its channels in fp32 (a ``(BLOCK_C, BLOCK_HW)`` accumulator, reduced once per tile,
   so every pixel sees the same summation order: mirrored pixels of a mirrored map get identical sums);
2. builds the exact overlap weights of all N windows with the tile's pixels in-kernel from the window table,
   ``w[n, p] = overlap_y(n, y_p) * overlap_x(n, x_p)``, and contracts ``(BLOCK_N, BLOCK_HW) x (BLOCK_HW,)``.

The contraction accumulates in fp64. It is at most BLOCK_N multiply-adds per *pixel* (not per element), and
it keeps windows that are equal up to symmetry equal after the fp32 cast, so rankings of the scores break
ties like the reference (which pools in fp64) instead of by rounding noise.

Grid ``(B, S)``: ``S = S_HW * S_C`` slices per image, 1 when B alone fills the GPU (ConvNet-3 at 32 px:
B ~ 100..1000 images of 128x4x4 .. 128x32x32), more when it does not (ResNetAp-10: B = 10..20 images of
512x7x7 or 128x28x28; input gradients 3x224x224 with 196 pixel tiles each). Slices write fp64 partials that
one ``sum`` over the slice axis reduces in a fixed order, so results are deterministic (no atomics).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# Per-tile element budgets. The weight tile (BLOCK_N x BLOCK_HW, widened to fp64 for the contraction) is the
# largest live value: 4096 over 128 threads is 32 a thread; the fp32 load tile of 2048 is 16 a thread.
WEIGHT_TILE = 4096
LOAD_TILE = 2048
NUM_WARPS = 4
# Programs per SM to aim for when images must be split: enough resident CTAs to hide DRAM latency.
PROGRAMS_PER_SM = 4


@triton.jit
def _load_windows(win_ptr, N, H, W, BLOCK_N: tl.constexpr):
    """Window edges in pixel units and the window areas (fp64); padded lanes get a unit window."""
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    y0 = tl.load(win_ptr + n * 4 + 0, mask=nmask, other=0.0).to(tl.float64)
    x0 = tl.load(win_ptr + n * 4 + 1, mask=nmask, other=0.0).to(tl.float64)
    y1 = tl.load(win_ptr + n * 4 + 2, mask=nmask, other=1.0).to(tl.float64)
    x1 = tl.load(win_ptr + n * 4 + 3, mask=nmask, other=1.0).to(tl.float64)
    hf = tl.cast(H, tl.float64)  # tl.cast: scalar args equal to 1 arrive as constexpr
    wf = tl.cast(W, tl.float64)
    ay = y0 * hf
    by = y1 * hf
    ax = x0 * wf
    bx = x1 * wf
    # Sum of the per-pixel overlaps = overlap of the window with the whole map.
    area_y = tl.maximum(tl.minimum(by, hf) - tl.maximum(ay, 0.0), 0.0)
    area_x = tl.maximum(tl.minimum(bx, wf) - tl.maximum(ax, 0.0), 0.0)
    # Per-pixel weights are built in fp32 (4x cheaper per (window, pixel) pair than fp64; binary-fraction
    # edges stay exact, so mirrored windows keep mirrored weights); the area stays fp64.
    return (ay.to(tl.float32), by.to(tl.float32), ax.to(tl.float32), bx.to(tl.float32),
            area_y * area_x)


@triton.jit
def _tile_weights(ay, by, ax, bx, yy, xx, pmask):
    """Overlap area of every window (rows) with every pixel of the tile (columns), fp32."""
    yf = yy.to(tl.float32)[None, :]
    xf = xx.to(tl.float32)[None, :]
    wy = tl.maximum(tl.minimum(yf + 1.0, by[:, None]) - tl.maximum(yf, ay[:, None]), 0.0)
    wx = tl.maximum(tl.minimum(xf + 1.0, bx[:, None]) - tl.maximum(xf, ax[:, None]), 0.0)
    return tl.where(pmask[None, :], wy * wx, 0.0)


@triton.jit
def _channel_sum(base_ptr, c_lo, c_hi, stride_c, poff, pmask,
                 ABS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """fp32 sum over channels [c_lo, c_hi) of one pixel tile (|x| when ABS); any strides, any float dtype."""
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for c0 in range(c_lo, c_hi, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        m = (cc < c_hi)[:, None] & pmask[None, :]
        v = tl.load(base_ptr + cc[:, None] * stride_c + poff[None, :], mask=m, other=0.0).to(tl.float32)
        if ABS:
            v = tl.abs(v)
        acc += v
    return tl.sum(acc, axis=0)


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


def block_sizes(n: int, c: int, hw: int) -> tuple[int, int, int]:
    """BLOCK_N, BLOCK_C, BLOCK_HW for N windows over a C x hw map (all powers of two)."""
    block_n = max(triton.next_power_of_2(n), 2)
    block_hw = min(triton.next_power_of_2(hw), max(16, WEIGHT_TILE // block_n))
    block_c = max(1, min(triton.next_power_of_2(c), LOAD_TILE // block_hw))
    return block_n, block_c, block_hw


def plan_split(b: int, c: int, hw: int, block_c: int, block_hw: int, device: torch.device,
               split: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(S_HW, S_C, channels per slice): how many slices each image's work is cut into.

    On a GPU, B programs already fill the device for the common synthetic batches, so images are split only
    when B is below a few programs per SM; pixel tiles are split first (no redundant weight tiles), then
    channels. Under the interpreter programs run one after another, so nothing is split unless asked.
    """
    n_tiles = triton.cdiv(hw, block_hw)
    n_chunks = triton.cdiv(c, block_c)
    if split is not None:
        s_hw, s_c = split
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        target = PROGRAMS_PER_SM * _sm_count(index)
        want = triton.cdiv(target, b) if b < target else 1
        s_hw = min(want, n_tiles)
        s_c = triton.cdiv(want, s_hw)
    else:
        s_hw, s_c = 1, 1
    s_hw = max(1, min(int(s_hw), n_tiles))
    s_c = max(1, min(int(s_c), n_chunks))
    c_per_split = triton.cdiv(n_chunks, s_c) * block_c
    return s_hw, triton.cdiv(c, c_per_split), c_per_split


def window_table(windows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The (N, 4) window table on ``device``; float tables are read as they are (no conversion launch)."""
    if windows.dim() != 2 or windows.shape[1] != 4:
        raise ValueError(f"windows must be (N, 4) boxes (y0, x0, y1, x1), got {tuple(windows.shape)}")
    win = windows.detach()
    if not win.is_floating_point():
        win = win.double()
    return win.to(device=device).contiguous()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


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
