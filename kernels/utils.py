"""Pieces shared by the kernels: the launch width, and the window table, pixel-tile weights, channel sums and
launch plan that :mod:`window_pool` and :mod:`jitter_score` both build on.

``jitter_score``'s sigma is a difference of the values ``window_pool`` pools, so the two kernels must weigh a
window's pixels identically: they share one copy of these pieces.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

NUM_WARPS = 4
# Per-tile element budgets of the window kernels. The weight tile (BLOCK_N x BLOCK_HW, widened to fp64 for
# the contraction) is the largest live value: 4096 over 128 threads is 32 a thread; the fp32 load tile of
# 2048 is 16 a thread.
WEIGHT_TILE = 4096
LOAD_TILE = 2048
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
