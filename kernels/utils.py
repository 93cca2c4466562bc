"""Pieces shared by the kernels: the launch width and device guard, host-side checks, and the window table,
overlap weights, channel sums, pooled slice and launch plan that :mod:`window_pool` and :mod:`jitter_score`
both build on.

``jitter_score``'s sigma is a difference of the values ``window_pool`` pools, so the two kernels must weigh a
window's pixels identically: they share one copy of these pieces (:func:`_pool_slice`).

How a slice is pooled (:func:`_pool_slice`). The overlap weight of window n with pixel (y, x) is separable,
``w[n, y, x] = wy[n, y] * wx[n, x]``. A program walks tiles of whole rows (``ROWS x BLOCK_W`` pixels, lane j
always at column j % BLOCK_W) and keeps a ``(BLOCK_N, pixels)`` fp32 accumulator ``acc += wy * v``: per
(window, pixel) a 4-operation row weight and one multiply-add, and no reduction across threads in the loop.
After the last row tile of a column block it weighs the accumulator by the column weights and reduces it over
the pixels in fp64, once. Each lane adds the pixels of its column in the same order, so a left-right
mirrored map gives mirrored accumulators bit for bit, and the fp64 reduction keeps mirrored windows equal
after the fp32 cast (their ranking ties then break by index, as in the reference, which pools in fp64).
"""
from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from udd_fast.errors import UDDError

NUM_WARPS = 4
# Tile shapes, chosen from the registers ptxas allots the variants compiled for sm_90 at the model shapes of
# the CUDA tests in tests/test_window_pool.py and test_jitter_score.py. Triton lays a (BLOCK_N, pixels) tile
# out with one warp across 32 x VEC pixels and the remaining warps across the windows; VEC is 4 (16-byte
# loads) when rows are contiguous and 16-element aligned, else 1. One warp-width of pixels keeps 4 of 16
# windows per thread, ~64-96 registers; four warp-widths at VEC 1 put all 16 windows in every thread, 170-240.
# Over 128 registers, fewer than 4 programs fit on an SM.
VECTOR_TILE_PIXELS = 128  # rows contiguous and aligned: 32 threads x 4
SCALAR_TILE_PIXELS = 32   # otherwise (narrow or odd rows, channels_last): 32 threads x 1
ACC_TILE = 2048   # BLOCK_N x pixels: the fp32 accumulator, at most 16 a thread
LOAD_TILE = 512   # BLOCK_C x pixels: the fp32 channel-sum tile, 4 a thread
MIN_TILE_PIXELS = 8
# Programs per SM to aim for when images must be split: enough resident CTAs to hide DRAM latency; the
# register budget above is what lets 4 of them be resident at once.
PROGRAMS_PER_SM = 4
# jitter_score's finishing program: fp64 partials read per step (CHUNK_S x BLOCK_N) and comparisons per step
# of the ranking (BLOCK_N x RANK_J), so that neither tile grows with the slice or window count.
PART_TILE = 512
RANK_TILE = 1024
# More windows would shrink the pixel tile below MIN_TILE_PIXELS (the accumulator is BLOCK_N wide).
MAX_WINDOWS = ACC_TILE // MIN_TILE_PIXELS
MAX_GRID_Y = 65535  # CUDA's limit on the second grid dimension
INT32_MAX = 2 ** 31 - 1


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it ``t``'s (a tensor on cuda:1 while cuda:0 is current
    would otherwise be read by a kernel on the wrong GPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def check_span(t: torch.Tensor, dims: slice, what: str) -> None:
    """The kernels index within one image (dims ``dims``) in 32 bits and across images in 64: refuse images
    whose own elements span 2^31 or more."""
    span = sum((size - 1) * stride for size, stride in zip(t.shape[dims], t.stride()[dims]) if size > 0)
    if span > INT32_MAX:
        raise UDDError(f"{what}: one image spans {span + 1} elements, more than the kernels' 2^31 per image; "
                       "split it or use backend 'reference'")


@triton.jit
def _edges(win_ptr, N, size, AXIS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Window edges [lo, hi) along rows (AXIS 0) or columns (AXIS 1) in pixel units, fp64; padded lanes get
    [0, size)."""
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    s = tl.cast(size, tl.float64)  # tl.cast: scalar args equal to 1 arrive as constexpr
    lo = tl.load(win_ptr + n * 4 + AXIS, mask=nmask, other=0.0).to(tl.float64) * s
    hi = tl.load(win_ptr + n * 4 + 2 + AXIS, mask=nmask, other=1.0).to(tl.float64) * s
    return lo, hi


@triton.jit
def _window_area(win_ptr, N, H, W, BLOCK_N: tl.constexpr):
    """Overlap area (BLOCK_N,) fp64 of every window with the map: the sum of its pixel weights."""
    ay, by = _edges(win_ptr, N, H, 0, BLOCK_N)
    ax, bx = _edges(win_ptr, N, W, 1, BLOCK_N)
    hf = tl.cast(H, tl.float64)
    wf = tl.cast(W, tl.float64)
    area_y = tl.maximum(tl.minimum(by, hf) - tl.maximum(ay, 0.0), 0.0)
    area_x = tl.maximum(tl.minimum(bx, wf) - tl.maximum(ax, 0.0), 0.0)
    return area_y * area_x


@triton.jit
def _overlap(lo, hi, pos):
    """Overlap (BLOCK_N, K) of every window's [lo, hi) with the unit pixels [pos, pos + 1), in lo's dtype."""
    p = pos.to(lo.dtype)[None, :]
    return tl.maximum(tl.minimum(p + 1.0, hi[:, None]) - tl.maximum(p, lo[:, None]), 0.0)


@triton.jit
def _channel_sum(base_ptr, c_lo, c_hi, stride_c, poff, pmask, ABS: tl.constexpr, BLOCK_C: tl.constexpr,
                 PIX: tl.constexpr):
    """fp32 sum over channels [c_lo, c_hi) of one pixel tile (|x| when ABS); any strides, any float dtype.
    Every pixel is summed in the same order, so mirrored pixels of a mirrored map get equal sums."""
    acc = tl.zeros([BLOCK_C, PIX], dtype=tl.float32)
    c = tl.arange(0, BLOCK_C)
    offs = c[:, None] * stride_c + poff[None, :]  # 32-bit within the image: check_span
    ptr = base_ptr + tl.cast(c_lo, tl.int64) * stride_c
    for c0 in range(c_lo, c_hi, BLOCK_C):
        m = (c < c_hi - c0)[:, None] & pmask[None, :]
        v = tl.load(ptr + offs, mask=m, other=0.0).to(tl.float32)
        if ABS:
            v = tl.abs(v)
        acc += v
        # One scalar base steps over the channels; the per-element offsets stay 32-bit and fixed.
        ptr += BLOCK_C * stride_c
    return tl.sum(acc, axis=0)


@triton.jit
def _pool_slice(f_base, f_sc, f_sh, f_sw, j_base, j_sm, j_sc, j_sh, j_sw, M, win_ptr, N, H, W, c_lo, c_hi,
                s_hw, S_HW,
                ABS: tl.constexpr, JITTER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                ROWS: tl.constexpr, BLOCK_W: tl.constexpr):
    """fp64 (BLOCK_N,) sums ``sum_p w[n, p] v[p]`` over this slice's pixels: row tiles s_hw, s_hw + S_HW, ...
    of every column block, channels [c_lo, c_hi). ``v`` is the channel sum of the map at ``f_base``; under
    JITTER, minus the mean channel sum of the M jittered maps at ``j_base + m * j_sm``.

    The loop runs in fp32: fp64 min/max would cost three instructions each, and widening to fp64 one more
    per (window, pixel). Edges rounded to fp32 (6e-8 relative) and a lane adding one pixel per row tile keep
    the error near 1e-7 of the pooled magnitude, against the reference's fp64.
    """
    PIX: tl.constexpr = ROWS * BLOCK_W
    j = tl.arange(0, PIX)
    r = j // BLOCK_W
    ay, by = _edges(win_ptr, N, H, 0, BLOCK_N)
    ay = ay.to(tl.float32)
    by = by.to(tl.float32)
    n_rows = tl.cdiv(H, ROWS)
    inv_m = 1.0 / tl.cast(M, tl.float32)
    total = tl.zeros([BLOCK_N], dtype=tl.float64)
    for x0 in range(0, W, BLOCK_W):
        xx = x0 + j % BLOCK_W
        acc = tl.zeros([BLOCK_N, PIX], dtype=tl.float32)
        for t in range(s_hw, n_rows, S_HW):
            yy = t * ROWS + r
            pmask = (yy < H) & (xx < W)
            # Masked pixels load as 0, so v is 0 there and no weight needs a mask.
            v = _channel_sum(f_base, c_lo, c_hi, f_sc, yy * f_sh + xx * f_sw, pmask, ABS, BLOCK_C, PIX)
            if JITTER:
                j_off = yy * j_sh + xx * j_sw
                jsum = tl.zeros([PIX], dtype=tl.float32)
                for m in range(M):
                    jsum += _channel_sum(j_base + tl.cast(m, tl.int64) * j_sm, c_lo, c_hi, j_sc, j_off, pmask,
                                         ABS, BLOCK_C, PIX)
                v = v - jsum * inv_m
            acc += _overlap(ay, by, yy) * v[None, :]
        ax, bx = _edges(win_ptr, N, W, 1, BLOCK_N)
        wx = _overlap(ax.to(tl.float32), bx.to(tl.float32), xx)
        total += tl.sum((acc * wx).to(tl.float64), axis=1)
    return total


def tile_sizes(n: int, c: int, h: int, w: int, vector_rows: bool) -> tuple[int, int, int, int]:
    """BLOCK_N, BLOCK_C, ROWS, BLOCK_W (all powers of two) for N windows over a C x h x w map: the pixel tile is
    ROWS whole rows (one column block when w fits, several otherwise). ``vector_rows``: see
    :func:`vector_rows`."""
    block_n = max(triton.next_power_of_2(n), 2)
    pixels = VECTOR_TILE_PIXELS if vector_rows else SCALAR_TILE_PIXELS
    pixels = max(MIN_TILE_PIXELS, min(pixels, ACC_TILE // block_n))
    block_w = min(triton.next_power_of_2(w), pixels)
    rows = max(1, min(triton.next_power_of_2(h), pixels // block_w))
    block_c = max(1, min(triton.next_power_of_2(c), LOAD_TILE // (rows * block_w)))
    return block_n, block_c, rows, block_w


def vector_rows(*maps: torch.Tensor) -> bool:
    """Whether Triton can load every map's rows 16 bytes at a time: unit column stride and every other stride
    a multiple of 16 elements (Triton specializes integer arguments on divisibility by 16)."""
    return all(t.stride(-1) == 1 and all(s % 16 == 0 for s in t.stride()[:-1]) for t in maps)


def plan_split(b: int, c: int, h: int, block_c: int, rows: int, device: torch.device,
               split: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(S_HW, S_C, channels per slice): how many slices each image's work is cut into.

    On a GPU, B programs already fill the device for the common synthetic batches, so images are split only
    when B is below a few programs per SM; row tiles are split first (no redundant weights), then channels.
    Under the interpreter programs run one after another, so nothing is split unless asked.
    """
    n_tiles = triton.cdiv(h, rows)
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
    s_c = triton.cdiv(c, c_per_split)
    if s_hw * s_c > MAX_GRID_Y:
        raise UDDError(f"split {split} gives {s_hw * s_c} slices per image, more than the {MAX_GRID_Y} a grid "
                       "dimension holds; use fewer slices")
    return s_hw, s_c, c_per_split


def window_table(windows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The (N, 4) window table on ``device``; float tables are read as they are (no conversion launch)."""
    if windows.dim() != 2 or windows.shape[1] != 4:
        raise ValueError(f"windows must be (N, 4) boxes (y0, x0, y1, x1), got {tuple(windows.shape)}")
    if windows.shape[0] > MAX_WINDOWS:
        raise UDDError(f"{windows.shape[0]} windows: the window kernels take at most {MAX_WINDOWS}; use fewer "
                       "window groups or backend 'reference'")
    win = windows.detach()
    if not win.is_floating_point():
        win = win.double()
    return win.to(device=device).contiguous()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
