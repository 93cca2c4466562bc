"""Augmentations: DSA (differentiable Siamese augmentation, Zhao & Bilen) on normalized images, random
shifts, CutMix.

One call to :meth:`DSA.sample` draws the parameters; :meth:`DSA.apply` applies them to any batch. Drawing
once with ``siamese=True`` and applying the draw to both the real and the synthetic batch is what makes the
augmentation Siamese: both batches see the same transform, so their gradients stay comparable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TRANSFORMS = ("color", "crop", "cutout", "flip", "scale", "rotate")
MODES = ("all", "single", "idc")
ALWAYS_IN_IDC_MODE = ("color", "flip", "cutout")  # IDC's DiffAug applies these on every call


@dataclass(frozen=True)
class DSAParams:
    """Strengths of the DSA transforms (defaults of the DC/DSA code)."""

    scale: float = 1.2
    rotate: float = 15.0
    crop: float = 0.125
    cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


class DSA:
    """Differentiable augmentation.

    ``strategy`` joins transform names with ``_`` (e.g. ``"color_crop_cutout_flip_scale_rotate"``).
    ``mode="all"`` applies every transform in turn (IDC's matching augmentation); ``mode="single"`` applies one
    transform chosen at random per draw (DC/DSA's evaluation); ``mode="idc"`` applies color, flip and cutout
    always and one of the others chosen per draw (IDC's evaluation and network updates). ``flip=False`` drops
    flips (digits, house numbers).
    """

    def __init__(self, strategy: str = "color_crop_cutout", mode: str = "all", flip: bool = True,
                 params: DSAParams = DSAParams()):
        names = [t for t in strategy.split("_") if t and t != "none"]
        unknown = sorted(set(names) - set(TRANSFORMS))
        if unknown:
            raise ValueError(f"unknown DSA transform(s) {unknown}; choose from {', '.join(TRANSFORMS)}")
        if mode not in MODES:
            raise ValueError(f"DSA mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.names = [t for t in names if flip or t != "flip"]
        self.mode = mode
        self.p = params

    def sample(self, n: int, size: tuple[int, int], device=None, siamese: bool = False,
               generator: torch.Generator | None = None) -> dict:
        """Draw parameters for a batch of ``n`` images of ``size`` (one shared draw when ``siamese``), from the
        global stream or from ``generator`` (drawn on its device, then moved to ``device``)."""
        k = 1 if siamese else n
        names = self.names
        src = generator.device if generator is not None else device
        if self.mode != "all":
            always = [t for t in names if self.mode == "idc" and t in ALWAYS_IN_IDC_MODE]
            pool = [t for t in names if t not in always]
            if pool:
                pick = pool[int(torch.randint(len(pool), (1,), generator=generator, device=src))]
                names = [t for t in names if t in always or t == pick]
        p, h, w = self.p, size[0], size[1]

        def u(*shape):
            return torch.rand(k, *shape, generator=generator, device=src).to(device)

        def randint(lo, hi):
            return torch.randint(lo, hi, (k,), generator=generator, device=src).to(device)

        draws = {}
        for name in names:
            if name == "color":
                draws[name] = (u() - 0.5) * p.brightness, u() * p.saturation, u() + p.contrast
            elif name == "crop":
                sh, sw = int(h * p.crop + 0.5), int(w * p.crop + 0.5)
                draws[name] = randint(-sh, sh + 1), randint(-sw, sw + 1)
            elif name == "cutout":
                ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
                draws[name] = ch, cw, randint(0, h + (1 - ch % 2)), randint(0, w + (1 - cw % 2))
            elif name == "flip":
                draws[name] = u() < 0.5
            elif name == "scale":
                lo = 1.0 / p.scale
                draws[name] = u() * (p.scale - lo) + lo, u() * (p.scale - lo) + lo
            elif name == "rotate":
                draws[name] = (u() - 0.5) * 2 * p.rotate / 180 * math.pi
        return draws

    def apply(self, x: torch.Tensor, draws: dict) -> torch.Tensor:
        """Apply drawn parameters to ``x`` (B, C, H, W); a draw of size 1 is broadcast over the batch."""
        for name, d in draws.items():
            x = getattr(self, "_" + name)(x, d)
        return x

    @staticmethod
    def repeat(draws: list[dict], n: int | list[int]) -> dict:
        """Join single draws into one per-sample draw in which draw ``i`` covers samples ``i*n .. i*n+n-1``
        (or, with ``n`` a list, the next ``n[i]`` samples): every class's batch augmented by its own draw in one
        :meth:`apply`."""
        if any(d.keys() != draws[0].keys() for d in draws):
            raise ValueError("draws with different transforms cannot be joined (use mode='all')")

        def join(parts):
            joined = torch.cat(parts)
            return joined.repeat_interleave(n if isinstance(n, int) else torch.tensor(n, device=joined.device))

        out = {}
        for name, first in draws[0].items():
            parts = [d[name] for d in draws]
            if name == "cutout":  # (height, width, y, x): the box size is the same for every draw
                out[name] = (*first[:2], *(join(t) for t in zip(*(p[2:] for p in parts))))
            elif isinstance(first, tuple):
                out[name] = tuple(join(t) for t in zip(*parts))
            else:
                out[name] = join(parts)
        return out

    def __call__(self, x: torch.Tensor, siamese: bool = False) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[0], x.shape[-2:], x.device, siamese))

    @staticmethod
    def _color(x, d):
        brightness, saturation, contrast = (v.view(-1, 1, 1, 1).to(x.dtype) for v in d)
        x = x + brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * saturation + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * contrast + mean

    @staticmethod
    def _crop(x, d):
        b, _, h, w = x.shape
        dy, dx = (v.expand(b) for v in d)
        # integer translation with zero fill, done as a gather so each sample may move differently
        ys = torch.arange(h, device=x.device)[None, :] - dy[:, None]
        xs = torch.arange(w, device=x.device)[None, :] - dx[:, None]
        valid = ((ys >= 0) & (ys < h))[:, None, :, None] & ((xs >= 0) & (xs < w))[:, None, None, :]
        ys, xs = ys.clamp(0, h - 1), xs.clamp(0, w - 1)
        rows = torch.gather(x, 2, ys[:, None, :, None].expand(b, x.shape[1], h, w))
        out = torch.gather(rows, 3, xs[:, None, None, :].expand(b, x.shape[1], h, w))
        return out * valid.to(x.dtype)

    @staticmethod
    def _cutout(x, d):
        b, _, h, w = x.shape
        ch, cw, cy, cx = d
        cy, cx = cy.expand(b), cx.expand(b)
        ys = torch.arange(h, device=x.device)[None, :]
        xs = torch.arange(w, device=x.device)[None, :]
        inside_y = (ys >= (cy - ch // 2)[:, None]) & (ys < (cy - ch // 2 + ch)[:, None])
        inside_x = (xs >= (cx - cw // 2)[:, None]) & (xs < (cx - cw // 2 + cw)[:, None])
        mask = ~(inside_y[:, :, None] & inside_x[:, None, :])
        return x * mask[:, None].to(x.dtype)

    @staticmethod
    def _flip(x, d):
        return torch.where(d.view(-1, 1, 1, 1), x.flip(3), x)

    @staticmethod
    def _affine(x, theta):
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3).to(x.dtype), list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def _scale(self, x, d):
        sx, sy = d
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)
        return self._affine(x, theta)

    def _rotate(self, x, d):
        c, s, zero = torch.cos(d), torch.sin(d), torch.zeros_like(d)
        theta = torch.stack([torch.stack([c, s, zero], -1), torch.stack([-s, c, zero], -1)], 1)
        return self._affine(x, theta)


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each image by its own random integer offset of up to ``max_shift`` pixels per axis, filling with
    zeros (the plain evaluation's only augmentation; apply it in pixel space, where 0 is black)."""
    b = x.shape[0]
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (b,), device=x.device) for _ in range(2))
    return DSA._crop(x, (dy, dx))


def cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int):
    """CutMix one random box between a batch and its permutation (box area ~ U(0, 1), as Beta(1, 1) in IDC);
    returns the images and soft targets weighted by the area each image keeps."""
    lam = float(torch.rand(()))
    h, w = x.shape[-2:]
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
    y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
    perm = torch.randperm(x.shape[0], device=x.device)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    keep = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    onehot = F.one_hot(y, num_classes).float()
    return x, keep * onehot + (1 - keep) * onehot[perm]
