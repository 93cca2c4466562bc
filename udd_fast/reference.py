"""Plain-torch twins of every fast op.

These are the oracle the fast kernels are tested against and the default on CPU. Each function states the
exact semantics; ``udd_fast.ops`` is the only place that chooses between these and the fast kernels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


# Jitter noise: Philox4x32-10 (Salmon et al., SC'11; Random123's philox4x32) and the float conversions of
# the fast kernel, which imports these constants. Uniforms are the 31-bit magnitude of a signed word times the
# largest fp32 scale that keeps them below 1; Gaussians are Box-Muller on pairs of them.
PHILOX_ROUNDS = 10
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
JITTER_UNIFORM_SCALE = 4.6566127342e-10
JITTER_TWO_PI = 6.283185307179586
JITTER_MIN_UNIFORM = 1.0e-7
_M32 = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of the 64-bit product ``a * b`` (a < 2^32, b int64 holding uint32). The
    product can pass 2^63: int64 multiplication wraps (two's complement, on every torch backend), which keeps
    all 64 bits, and the masks read the two words back (test_reference checks Philox's known answers)."""
    p = b * a
    return (p >> 32) & _M32, p & _M32


def philox4x32(key: int, c0, c1, c2, c3) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of the counter words ``c0..c3`` (broadcastable int64 tensors holding uint32 values) under
    the 64-bit ``key``: four int64 tensors of uint32 values."""
    k0, k1 = key & _M32, (key >> 32) & _M32
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo(PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W[0]) & _M32, (k1 + PHILOX_W[1]) & _M32
    return c0, c1, c2, c3


def _uniform(bits: torch.Tensor) -> torch.Tensor:
    x = torch.where(bits > 0x7FFFFFFF, bits - (1 << 32), bits)  # the word as a signed int32
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(JITTER_UNIFORM_SCALE, dtype=torch.float32)


def jitter_noise(shape: tuple[int, ...], m: int, kind: str, seed: int, first_image: int = 0,
                 device=None) -> torch.Tensor:
    """The fp32 variates ``(m, *shape)`` behind :func:`jitter_copies` (dim 0 of ``shape`` indexes images): for
    element e of image b in copy c, word ``e % 4`` of ``philox4x32(seed, e // 4, i, c, i >> 32)`` with the
    global image index ``i = first_image + b``; uniform in [0, 1), or standard normal (``gaussian``)."""
    b, per_image = shape[0], math.prod(shape[1:])
    groups = -(-per_image // 4)
    g = torch.arange(groups, device=device, dtype=torch.int64).view(1, 1, groups)
    i = first_image + torch.arange(b, device=device, dtype=torch.int64).view(1, b, 1)
    c = torch.arange(m, device=device, dtype=torch.int64).view(m, 1, 1)
    u = [_uniform(w) for w in philox4x32(seed, g, i & _M32, c, i >> 32)]
    if kind == "gaussian":
        two_pi = torch.tensor(JITTER_TWO_PI, dtype=torch.float32)
        r01, r23 = (torch.sqrt(-2.0 * torch.log(v.clamp_min(JITTER_MIN_UNIFORM))) for v in (u[0], u[2]))
        u = [r01 * torch.cos(two_pi * u[1]), r01 * torch.sin(two_pi * u[1]),
             r23 * torch.cos(two_pi * u[3]), r23 * torch.sin(two_pi * u[3])]
    words = torch.stack(u, -1).view(m, b, groups * 4)[..., :per_image]
    return words.reshape(m, *shape)


def jitter_copies(images: torch.Tensor, m: int, strength: float, kind: str = "gaussian", seed: int = 0,
                  first_image: int = 0) -> torch.Tensor:
    """``m`` jittered copies ``(m, *images.shape)`` of ``images`` (dim 0 indexes images).

    gaussian: ``x + strength * N(0, 1)``; uniform: ``x + strength * U(-1, 1)``; salt_pepper: each pixel is set
    to 0 or 1 (equally likely) with probability ``strength``. The noise of ``images[b]`` depends only on
    ``seed`` and its global index ``first_image + b`` (:func:`jitter_noise`), not on the batch it is in.
    Arithmetic in fp32 (fp64 for fp64 images), rounded to the images' dtype once, as the fast kernel does.
    """
    if kind not in JITTER_KINDS:
        raise ValueError(f"unknown jitter kind {kind!r}; use one of {JITTER_KINDS}")
    r = jitter_noise(tuple(images.shape), m, "gaussian" if kind == "gaussian" else "uniform", seed, first_image,
                     images.device)
    s = torch.tensor(strength, dtype=torch.float32)
    x = images.detach().unsqueeze(0).to(torch.float64 if images.dtype == torch.float64 else torch.float32)
    if kind == "gaussian":
        y = x + (s * r).to(x.dtype)
    elif kind == "uniform":
        y = x + (s * (2.0 * r - 1.0)).to(x.dtype)
    else:
        y = torch.where(r < s, (r < s * 0.5).to(x.dtype), x)
    return y.to(images.dtype)


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


def avg_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of each k x k block of ``x`` (..., C, H, W), stride k, no padding: (..., C, H // k, W // k) (the
    last ``H % k`` rows and ``W % k`` columns are dropped)."""
    return F.avg_pool2d(x, k)


def instance_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per image and channel, ``(x - mean) / sqrt(var + eps) * weight + bias`` over (H, W), biased variance:
    ``GroupNorm(C, C)``, as autocast runs it: in float32 on CUDA, on CPU on the bf16 map with float32 weight,
    bias and statistics."""
    return F.group_norm(x, x.shape[1], weight, bias, eps)
