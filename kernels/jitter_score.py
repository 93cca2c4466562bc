"""Fused jitter scoring: one pass gives both the jitter sensitivity ``sigma = |Lambda - mean_m Lambda_hat_m|``
of every window and the indices of the p lowest-sigma windows of every image.

Pooling is linear in the channel-summed plane, so a program sums ``g(f) - mean_m g(j_m)`` per pixel (g = id
or |.|; the M+1 maps of one image are read once each) and contracts that single plane with the window
weights, as :mod:`window_pool` does (the same helpers, from :mod:`utils`). The program that completes an
image then ranks its N sigmas with an N x N comparison (rank of i = #windows that sort before i: lower sigma,
or equal sigma and lower index, NaN last = ``torch.sort(stable=True)``) and scatters window i to position
rank(i) when rank(i) < p.

Grid ``(B, S)``. Jitter scoring runs on few images with large maps (ResNetAp-10: B = 10..20, M+1 copies of
512x7x7 or 128x28x28), so an image is cut into S slices when B would leave the GPU idle. Slices write fp64
partials; an atomic ticket per image elects the last slice to finish, which sums the partials in slice
order (deterministic) and ranks. With S = 1 (large B, or the interpreter) there is no ticket at all.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import NUM_WARPS, _channel_sum, _load_windows, _tile_weights, block_sizes, plan_split, window_table


@triton.jit
def _rank_and_store(diff, area, C, N, P, b, sigma_ptr, idx_ptr, BLOCK_N: tl.constexpr):
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    sig = tl.abs(diff / (area * tl.cast(C, tl.float64))).to(tl.float32)
    tl.store(sigma_ptr + b.to(tl.int64) * N + n, sig, mask=nmask)
    si = sig[:, None]
    sj = sig[None, :]
    ni = n[:, None]
    nj = n[None, :]
    nan_i = si != si
    nan_j = sj != sj
    lower = nj < ni
    before = (sj < si) | ((sj == si) & lower) | (nan_i & ~nan_j) | (nan_i & nan_j & lower)
    before = before & (nj < N)
    rank = tl.sum(before.to(tl.int32), axis=1)
    tl.store(idx_ptr + b.to(tl.int64) * P + rank, n.to(tl.int64), mask=nmask & (rank < P))


@triton.jit
def _jitter_score_kernel(f_ptr, j_ptr, win_ptr, sigma_ptr, idx_ptr, part_ptr, ticket_ptr,
                         C, H, W, N, M, P,
                         f_sb, f_sc, f_sh, f_sw, j_sm, j_sb, j_sc, j_sh, j_sw,
                         S_HW, S_C, c_per_split,
                         ABS: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                         BLOCK_HW: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0)
    s = tl.program_id(1)
    s_hw = s // S_C
    c_lo = (s % S_C) * c_per_split
    c_hi = tl.minimum(C, c_lo + c_per_split)

    ay, by, ax, bx, area = _load_windows(win_ptr, N, H, W, BLOCK_N)
    f_base = f_ptr + b.to(tl.int64) * f_sb
    j_base = j_ptr + b.to(tl.int64) * j_sb
    inv_m = 1.0 / tl.cast(M, tl.float64)
    hw = H * W
    acc = tl.zeros([BLOCK_N], dtype=tl.float64)
    for t in range(s_hw, tl.cdiv(hw, BLOCK_HW), S_HW):
        p = t * BLOCK_HW + tl.arange(0, BLOCK_HW)
        pmask = p < hw
        yy = p // W
        xx = p - yy * W
        plane = _channel_sum(f_base, c_lo, c_hi, f_sc, yy * f_sh + xx * f_sw, pmask, ABS, BLOCK_C, BLOCK_HW)
        j_off = yy * j_sh + xx * j_sw
        jsum = tl.zeros([BLOCK_HW], dtype=tl.float32)
        for m in range(M):
            jsum += _channel_sum(j_base + tl.cast(m, tl.int64) * j_sm, c_lo, c_hi, j_sc, j_off, pmask,
                                 ABS, BLOCK_C, BLOCK_HW)
        diff = plane.to(tl.float64) - jsum.to(tl.float64) * inv_m
        wgt = _tile_weights(ay, by, ax, bx, yy, xx, pmask)
        acc += tl.sum(wgt * diff[None, :], axis=1)

    n = tl.arange(0, BLOCK_N)
    if SPLIT:
        n_split = S_HW * S_C
        row = part_ptr + b.to(tl.int64) * n_split * N
        tl.store(row + s * N + n, acc, mask=n < N)
        # Every thread's partial must be written before the ticket releases it to the finishing program.
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr + b, 1, sem="acq_rel")
        if ticket == n_split - 1:
            ss = tl.arange(0, BLOCK_S)
            pm = (ss < n_split)[:, None] & (n < N)[None, :]
            parts = tl.load(row + ss[:, None] * N + n[None, :], mask=pm, other=0.0, cache_modifier=".cg")
            _rank_and_store(tl.sum(parts, axis=0), area, C, N, P, b, sigma_ptr, idx_ptr, BLOCK_N)
    else:
        _rank_and_store(acc, area, C, N, P, b, sigma_ptr, idx_ptr, BLOCK_N)


def jitter_score(fmap: torch.Tensor, jittered: torch.Tensor, windows: torch.Tensor, p: int,
                 mode: str = "value", *, split: tuple[int, int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused, one pass: the jitter sensitivity ``sigma`` (B, N) float32 of every window AND the ``p``
    lowest-sigma window indices (B, p) int64, ascending, ties to the lower index.

    ``fmap`` (B, C, h, w), ``jittered`` (M, B, C, h, w); any float dtype and strides.
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
    sigma = torch.empty(b, n, dtype=torch.float32, device=fmap.device)
    index = torch.empty(b, p, dtype=torch.int64, device=fmap.device)
    if b == 0 or n == 0:
        return sigma, index
    block_n, block_c, block_hw = block_sizes(n, c, h * w)
    s_hw, s_c, c_per = plan_split(b, c, h * w, block_c, block_hw, fmap.device, split)
    s = s_hw * s_c
    if s > 1:
        parts = torch.empty(b, s, n, dtype=torch.float64, device=fmap.device)
        tickets = torch.zeros(b, dtype=torch.int32, device=fmap.device)
    else:
        parts, tickets = sigma, sigma  # unused: the SPLIT=False path never touches them
    _jitter_score_kernel[(b, s)](
        fmap, jittered, win, sigma, index, parts, tickets, c, h, w, n, jittered.shape[0], p,
        *fmap.stride(), *jittered.stride(), s_hw, s_c, c_per,
        ABS=mode == "abs", SPLIT=s > 1, BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_HW=block_hw,
        BLOCK_S=max(triton.next_power_of_2(s), 2), num_warps=NUM_WARPS)
    return sigma, index
