"""Multi-formation (IDC): each stored synthetic image holds ``factor x factor`` tiles, each a sub-image.

:func:`mix_init` builds stored images from real ones (each real image shrunk into one tile) and
:func:`decode` turns stored images back into training images (each tile upsampled to full size): the two are
inverse in layout. Both follow IDC's code: nearest-neighbour shrinking at initialisation, and every tile
upsampled *on its own* (bilinear, ``align_corners=False``), so a decoded image never samples its neighbour
tile and the gradient of one tile's training image reaches that tile only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def tile_bounds(size: int, factor: int) -> list[int]:
    """The ``factor + 1`` pixel boundaries of the tiles along an axis of ``size`` pixels (uneven sizes differ by
    at most one pixel)."""
    return [round(i * size / factor) for i in range(factor + 1)]


def _tiles(factor: int, h: int, w: int):
    """``(rows, cols)`` slices of every tile, row-major."""
    ys, xs = tile_bounds(h, factor), tile_bounds(w, factor)
    return [(slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1])) for i in range(factor) for j in range(factor)]


def decode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Each image's ``factor**2`` tiles, each upsampled to the full size: (B * factor**2, C, H, W), b-major,
    tiles row-major. Differentiable; ``factor`` 1 returns ``images`` itself."""
    if factor == 1:
        return images
    h, w = images.shape[-2:]
    up = [F.interpolate(images[:, :, rows, cols], size=(h, w), mode="bilinear", align_corners=False)
          for rows, cols in _tiles(factor, h, w)]
    return torch.stack(up, 1).flatten(0, 1)


def mix_init(real: torch.Tensor, factor: int) -> torch.Tensor:
    """IDC's multi-formation initialisation: ``factor**2`` real images, each shrunk (nearest neighbour) into one
    tile of a stored image. ``real`` is (B * factor**2, C, H, W), grouped per stored image in tile order;
    returns (B, C, H, W)."""
    if factor == 1:
        return real.clone()
    n, c, h, w = real.shape
    real = real.view(n // factor ** 2, factor ** 2, c, h, w)
    out = real.new_empty(n // factor ** 2, c, h, w)
    for t, (rows, cols) in enumerate(_tiles(factor, h, w)):
        size = (rows.stop - rows.start, cols.stop - cols.start)
        out[:, :, rows, cols] = F.interpolate(real[:, t], size=size, mode="nearest")
    return out
