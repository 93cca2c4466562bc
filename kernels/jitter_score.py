"""Fused jitter scoring: one pass gives both the jitter sensitivity ``sigma = |Lambda - mean_m Lambda_hat_m|``
of every window and the indices of the p lowest-sigma windows of every image.

Pooling is linear in the channel-summed plane, so a program pools ``g(f) - mean_m g(j_m)`` per pixel (g = id
or |.|; the M+1 maps of one image are read once each) with the window weights, as :mod:`window_pool` does
(the same :func:`utils._pool_slice`). The program that completes an image then ranks its N sigmas (rank of
i = #windows that sort before i: lower sigma, or equal sigma and lower index, NaN last =
``torch.sort(stable=True)``) and scatters window i to position rank(i) when rank(i) < p. It compares its N
sigmas with RANK_J of them at a time, read back from the sigma row it has just written, so the comparison
tile stays (BLOCK_N, RANK_J) however many windows there are.

Grid ``(B, S)``. Jitter scoring runs on few images with large maps (ResNetAp-10: B = 10..20, M+1 copies of
512x7x7 or 128x28x28), so an image is cut into S slices when B would leave the GPU idle. Slices write fp64
partials; an atomic ticket per image elects the last slice to finish, which sums the partials in slice order,
CHUNK_S slices at a time (deterministic), and ranks. With S = 1 (large B, or the interpreter) there is no
ticket at all.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import (NUM_WARPS, PART_TILE, RANK_TILE, _pool_slice, _window_area, check_span, device_guard,
                    plan_split, tile_sizes, vector_rows, window_table)


@triton.jit
def _rank_and_store(total, area, C, N, P, b, sigma_ptr, idx_ptr, BLOCK_N: tl.constexpr, RANK_J: tl.constexpr):
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    sig = tl.abs(total / (area * tl.cast(C, tl.float64))).to(tl.float32)
    row = sigma_ptr + b.to(tl.int64) * N
    tl.store(row + n, sig, mask=nmask)
    # The sigmas just stored are read back below by other threads of this program.
    tl.debug_barrier()
    si = sig[:, None]
    ni = n[:, None]
    nan_i = si != si
    rank = tl.zeros([BLOCK_N], dtype=tl.int32)
    for j0 in range(0, N, RANK_J):
        j = j0 + tl.arange(0, RANK_J)
        sj = tl.load(row + j, mask=j < N, other=0.0)[None, :]
        nj = j[None, :]
        nan_j = sj != sj
        lower = nj < ni
        before = (sj < si) | ((sj == si) & lower) | (nan_i & ~nan_j) | (nan_i & nan_j & lower)
        rank += tl.sum((before & (nj < N)).to(tl.int32), axis=1)
    tl.store(idx_ptr + b.to(tl.int64) * P + rank, n.to(tl.int64), mask=nmask & (rank < P))


@triton.jit
def _jitter_score_kernel(f_ptr, j_ptr, win_ptr, sigma_ptr, idx_ptr, part_ptr, ticket_ptr,
                         C, H, W, N, M, P,
                         f_sb, f_sc, f_sh, f_sw, j_sm, j_sb, j_sc, j_sh, j_sw,
                         S_HW, S_C, c_per_split,
                         ABS: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                         ROWS: tl.constexpr, BLOCK_W: tl.constexpr, CHUNK_S: tl.constexpr,
                         RANK_J: tl.constexpr):
    b = tl.program_id(0)
    s = tl.program_id(1)
    c_lo = (s % S_C) * c_per_split
    c_hi = tl.minimum(C, c_lo + c_per_split)

    total = _pool_slice(f_ptr + b.to(tl.int64) * f_sb, f_sc, f_sh, f_sw,
                        j_ptr + b.to(tl.int64) * j_sb, j_sm, j_sc, j_sh, j_sw, M, win_ptr, N, H, W,
                        c_lo, c_hi, s // S_C, S_HW, ABS, True, BLOCK_N, BLOCK_C, ROWS, BLOCK_W)
    area = _window_area(win_ptr, N, H, W, BLOCK_N)

    if SPLIT:
        n = tl.arange(0, BLOCK_N)
        n_split = S_HW * S_C
        row = part_ptr + b.to(tl.int64) * n_split * N
        tl.store(row + s * N + n, total, mask=n < N)
        # Every thread's partial must be written before the ticket releases it to the finishing program.
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr + b, 1, sem="acq_rel")
        if ticket == n_split - 1:
            summed = tl.zeros([BLOCK_N], dtype=tl.float64)
            for s0 in range(0, n_split, CHUNK_S):
                ss = s0 + tl.arange(0, CHUNK_S)
                pm = (ss < n_split)[:, None] & (n < N)[None, :]
                parts = tl.load(row + ss[:, None] * N + n[None, :], mask=pm, other=0.0, cache_modifier=".cg")
                summed += tl.sum(parts, axis=0)
            _rank_and_store(summed, area, C, N, P, b, sigma_ptr, idx_ptr, BLOCK_N, RANK_J)
    else:
        _rank_and_store(total, area, C, N, P, b, sigma_ptr, idx_ptr, BLOCK_N, RANK_J)


def jitter_score(fmap: torch.Tensor, jittered: torch.Tensor, windows: torch.Tensor, p: int,
                 mode: str = "value", *, split: tuple[int, int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused, one pass: the jitter sensitivity ``sigma`` (B, N) float32 of every window AND the ``p``
    lowest-sigma window indices (B, p) int64, ascending, ties to the lower index.

    ``fmap`` (B, C, h, w), ``jittered`` (M, B, C, h, w); any float dtype and strides. With no channel or no
    pixel every sigma is NaN and the indices are 0..p-1, as the reference's.
    """
    if mode not in ("value", "abs"):
        raise ValueError(f"jitter_score mode must be 'value' or 'abs', got {mode!r}")
    if fmap.dim() != 4 or jittered.dim() != 5 or tuple(jittered.shape[1:]) != tuple(fmap.shape):
        raise ValueError(f"need fmap (B, C, h, w) and jittered (M, B, C, h, w), got {tuple(fmap.shape)} and "
                         f"{tuple(jittered.shape)}")
    if jittered.shape[0] < 1:
        raise ValueError("jittered needs at least one copy (M >= 1)")
    if jittered.device != fmap.device:
        raise ValueError("fmap and jittered must be on the same device")
    fmap, jittered = fmap.detach(), jittered.detach()
    win = window_table(windows, fmap.device)
    b, c, h, w = fmap.shape
    n = win.shape[0]
    if not 0 <= p <= n:
        raise ValueError(f"p must be in [0, N={n}], got {p}")
    if c == 0 or h * w == 0:  # every window's mean is 0 / 0: all sigmas tie, as NaN, and rank by index
        return (torch.full((b, n), float("nan"), device=fmap.device),
                torch.arange(p, device=fmap.device).expand(b, p).contiguous())
    sigma = torch.empty(b, n, dtype=torch.float32, device=fmap.device)
    index = torch.empty(b, p, dtype=torch.int64, device=fmap.device)
    if b == 0 or n == 0:
        return sigma, index
    check_span(fmap, slice(1, None), "jitter_score")
    check_span(jittered, slice(2, None), "jitter_score")
    block_n, block_c, rows, block_w = tile_sizes(n, c, h, w, vector_rows(fmap, jittered))
    s_hw, s_c, c_per = plan_split(b, c, h, block_c, rows, fmap.device, split)
    s = s_hw * s_c
    with device_guard(fmap):
        if s > 1:
            parts = torch.empty(b, s, n, dtype=torch.float64, device=fmap.device)
            tickets = torch.zeros(b, dtype=torch.int32, device=fmap.device)
        else:
            parts, tickets = sigma, sigma  # unused: the SPLIT=False path never touches them
        _jitter_score_kernel[(b, s)](
            fmap, jittered, win, sigma, index, parts, tickets, c, h, w, n, jittered.shape[0], p,
            *fmap.stride(), *jittered.stride(), s_hw, s_c, c_per,
            ABS=mode == "abs", SPLIT=s > 1, BLOCK_N=block_n, BLOCK_C=block_c, ROWS=rows, BLOCK_W=block_w,
            CHUNK_S=max(2, min(triton.next_power_of_2(s), PART_TILE // block_n)),
            RANK_J=max(2, min(block_n, RANK_TILE // block_n)), num_warps=NUM_WARPS)
    return sigma, index
