"""Plain-torch twins of every fast op.

These are the oracle the fast kernels are tested against and the default on CPU. Each function states the
exact semantics; ``udd_fast.ops`` is the only place that chooses between these and the fast kernels.
"""
from __future__ import annotations

import torch
from torchvision.ops import roi_align

JITTER_KINDS = ("gaussian", "uniform", "salt_pepper")


def overlap_weights(windows: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window overlap of every pixel row / column with the window, ``(N, h)`` and ``(N, w)``.

    Pixel ``y`` covers ``[y, y+1)``; a window covers ``[y0*h, y1*h)``. The overlap is exact, so fractional
    windows on a 4x4 feature map are weighted by the covered fraction of each border pixel.
    """
    win = windows.to(torch.float64)

    def axis(lo, hi, n):
        edges = torch.arange(n, dtype=torch.float64, device=win.device)
        a, b = (lo * n)[:, None], (hi * n)[:, None]
        return (torch.minimum(edges + 1, b) - torch.maximum(edges, a)).clamp_min(0)

    return axis(win[:, 0], win[:, 2], h), axis(win[:, 1], win[:, 3], w)


def window_pool(fmap: torch.Tensor, windows: torch.Tensor, mode: str = "value") -> torch.Tensor:
    """Overlap-area-weighted mean of ``fmap`` (B, C, h, w) over each window, averaged over channels.

    ``mode="abs"`` pools ``|fmap|``. Returns float32 ``(B, N)``.
    """
    _, _, h, w = fmap.shape
    wy, wx = overlap_weights(windows, h, w)
    x = fmap.float().abs() if mode == "abs" else fmap.float()
    plane = x.mean(1)  # channel mean first: linear, so it commutes with the window average
    area = wy.sum(1) * wx.sum(1)
    pooled = torch.einsum("bhw,nh,nw->bn", plane.double(), wy, wx) / area
    return pooled.float()


def lowest_p(scores: torch.Tensor, p: int) -> torch.Tensor:
    """Indices ``(B, p)`` of the ``p`` lowest scores per row, ascending; ties go to the lower window index."""
    return torch.sort(scores, dim=1, stable=True).indices[:, :p]


def jitter_score(fmap: torch.Tensor, jittered: torch.Tensor, windows: torch.Tensor, p: int,
                 mode: str = "value") -> tuple[torch.Tensor, torch.Tensor]:
    """Jitter sensitivity ``sigma = |Lambda - mean_m Lambda_hat_m|`` per window AND its lowest-``p`` windows.

    The fast kernel computes both in one fused pass; here they are two steps (``window_pool``, then
    ``lowest_p``). ``fmap`` is the feature map of the images (B, C, h, w), ``jittered`` those of their M
    jittered copies (M, B, C, h, w). Returns ``(sigma (B, N) float32, index (B, p) int64)``.
    """
    m = jittered.shape[0]
    lam = window_pool(fmap, windows, mode)
    lam_hat = window_pool(jittered.flatten(0, 1), windows, mode).view(m, -1, lam.shape[1]).mean(0)
    sigma = (lam - lam_hat).abs()
    return sigma, lowest_p(sigma, p)


def jitter_copies(images: torch.Tensor, m: int, strength: float, kind: str = "gaussian",
                  seed: int = 0) -> torch.Tensor:
    """``m`` jittered copies ``(m, *images.shape)`` of ``images``.

    gaussian: ``x + strength * N(0, 1)``; uniform: ``x + U(-strength, strength)``; salt_pepper: each pixel is
    set to 0 or 1 (equally likely) with probability ``strength``. Seeded by ``seed``; the fast kernel uses
    its own counter-based generator, so the two backends agree in distribution, not bit for bit.
    """
    gen = torch.Generator(device=images.device).manual_seed(seed)
    shape = (m, *images.shape)
    x = images.unsqueeze(0).expand(shape)
    if kind == "gaussian":
        return x + strength * torch.randn(shape, generator=gen, device=images.device, dtype=images.dtype)
    if kind == "uniform":
        u = torch.rand(shape, generator=gen, device=images.device, dtype=images.dtype)
        return x + strength * (2 * u - 1)
    if kind == "salt_pepper":
        u = torch.rand(shape, generator=gen, device=images.device, dtype=torch.float32)
        hit = u < strength
        salt = (u < strength / 2).to(images.dtype)
        return torch.where(hit, salt, x)
    raise ValueError(f"unknown jitter kind {kind!r}; use one of {JITTER_KINDS}")


def crop_resize(images: torch.Tensor, windows: torch.Tensor, index: torch.Tensor,
                with_source: bool = False) -> torch.Tensor:
    """Crop window ``windows[index[b, p]]`` of image ``b`` and resize it bilinearly to the image size.

    Output pixel (i, j) samples ``y = y0 + (i + 0.5) * (y1 - y0) / H - 0.5`` (x likewise) with the window in
    pixels, coordinates clamped to the image: torchvision ``roi_align(aligned=True, sampling_ratio=1)``.
    Rows are b-major then p, ``(B*P, C, H, W)``; ``with_source=True`` puts the B source images first.
    """
    b, _, h, w = images.shape
    work = images if images.dtype == torch.float64 else images.float()  # roi_align lacks CPU bf16/fp16
    scale = torch.tensor([h, w, h, w], dtype=work.dtype, device=images.device)
    boxes_yx = windows.to(images.device, work.dtype)[index.flatten()] * scale  # (B*P, 4): y0, x0, y1, x1
    batch = torch.arange(b, device=images.device).repeat_interleave(index.shape[1]).to(work.dtype)
    rois = torch.stack([batch, boxes_yx[:, 1], boxes_yx[:, 0], boxes_yx[:, 3], boxes_yx[:, 2]], dim=1)
    crops = roi_align(work, rois, (h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True).to(images.dtype)
    return torch.cat([images, crops]) if with_source else crops
