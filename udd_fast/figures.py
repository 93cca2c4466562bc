"""PNG figures for the reproduction tables, drawn with Pillow only (no matplotlib dependency).

``accuracy_vs_mue`` is the paper's Fig. 7 scatter, ``accuracy_vs_steps`` the budget study's curves, ``side_by_side`` its Fig. 11 comparison of synthetic
sets, and ``window_maps`` its Fig. 3: activation maps with the chosen windows. Images are in pixel
space [0, 1]; windows are normalized ``(y0, x0, y1, x1)`` boxes, as in ``udd_fast.regions``.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from udd_fast.errors import UDDError

FIG_SIZE = (900, 600)
# Plot area (left, top, right, bottom) inside FIG_SIZE; the margins hold tick labels, titles and the legend.
PLOT_BOX = (90, 50, 700, 530)
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
LOWEST_BOX_COLOUR = (255, 0, 0)
OTHER_BOX_COLOUR = (0, 255, 255)
PAD = 2  # white padding around every image of a side_by_side grid
GAP = 10  # white space around the panels of side_by_side
CAPTION_H = 24  # caption band above each panel / row
TILE_PAD = 4  # white space around the tiles of window_maps


def _font(size: int = 14) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """A (C, H, W) pixel-space tensor, C in {1, 3}, as an RGB image upscaled ``scale`` times (nearest)."""
    x = image.detach().float().cpu().clamp(0, 1).expand(3, -1, -1)
    x = x.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return Image.fromarray((x * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy(), "RGB")


def _span(values: list[float]) -> tuple[float, float]:
    """The axis range: the data with an 8% margin, or a unit-ish range around a single repeated value."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 if hi - lo > 1e-9 else max(abs(lo) * 0.05, 0.5)
    return lo - pad, hi + pad


def _project(points: list[dict], x: str = "mue"):
    """Pixel centres of the points in the FIG_SIZE figure, plus the x and y data ranges of the axes."""
    xr = _span([p[x] for p in points])
    yr = _span([p["mean"] - p["std"] for p in points] + [p["mean"] + p["std"] for p in points])
    return [(_px(p[x], xr), _py(p["mean"], yr)) for p in points], xr, yr


def _px(v: float, xr) -> float:
    left, _, right, _ = PLOT_BOX
    return left + (v - xr[0]) / (xr[1] - xr[0]) * (right - left)


def _py(v: float, yr) -> float:
    _, top, _, bottom = PLOT_BOX
    return bottom - (v - yr[0]) / (yr[1] - yr[0]) * (bottom - top)  # pixel rows grow downwards


def accuracy_vs_mue(points: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Save a 900x600 scatter of accuracy (%) against mUE with ±std error bars and point labels.

    Each point is ``{"label", "mue", "mean", "std"}`` plus an optional ``"group"``; groups get their own
    colour and a legend entry.
    """
    _scatter(points, path, title, "mue", "mUE")


def accuracy_vs_steps(points: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Save a 900x600 plot of accuracy (%) against distillation steps, ±std error bars, each group's points
    joined in step order: ``{"label", "steps", "mean", "std", "group"}`` (a group per method and protocol)."""
    _scatter(points, path, title, "steps", "distillation steps (inner steps in all)", join=True)


def accuracy_vs_hours(points: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """:func:`accuracy_vs_steps` against the hours each run takes (``"hours"`` of each point)."""
    _scatter(points, path, title, "hours", "distillation hours (steps x median step, on the table's machine)",
             join=True)


def _scatter(points: list[dict], path, title: str, x_key: str, xlabel: str, join: bool = False) -> None:
    if not points:
        raise UDDError("a figure needs at least one point")
    for p in points:
        for key in (x_key, "mean", "std"):
            if key not in p or not math.isfinite(float(p[key])):
                raise UDDError(f"point {p.get('label')!r} needs a finite {key!r}, got {p.get(key)!r}")
    groups = list(dict.fromkeys(p.get("group") for p in points))
    colour = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    coords, xr, yr = _project(points, x_key)
    img = Image.new("RGB", FIG_SIZE, "white")
    draw, font = ImageDraw.Draw(img), _font(14)
    left, top, right, bottom = PLOT_BOX
    for i in range(5):  # five evenly spaced ticks per axis, with light grid lines
        xv, yv = xr[0] + (xr[1] - xr[0]) * (i + 0.5) / 5, yr[0] + (yr[1] - yr[0]) * (i + 0.5) / 5
        x, y = _px(xv, xr), _py(yv, yr)
        draw.line([(x, top), (x, bottom)], fill=(230, 230, 230))
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.line([(x, bottom), (x, bottom + 5)], fill="black")
        draw.line([(left - 5, y), (left, y)], fill="black")
        draw.text((x, bottom + 8), f"{xv:.3g}", fill="black", font=font, anchor="mt")
        draw.text((left - 8, y), f"{yv:.3g}", fill="black", font=font, anchor="rm")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=2)
    if join:
        for g in groups:
            line = sorted((p[x_key], xy) for p, xy in zip(points, coords) if p.get("group") == g)
            if len(line) > 1:
                draw.line([xy for _, xy in line], fill=colour[g], width=2)
    for p, (x, y) in zip(points, coords):
        c = colour[p.get("group")]
        y_lo, y_hi = _py(p["mean"] - p["std"], yr), _py(p["mean"] + p["std"], yr)
        draw.line([(x, y_lo), (x, y_hi)], fill=c, width=2)
        draw.line([(x - 4, y_lo), (x + 4, y_lo)], fill=c, width=2)
        draw.line([(x - 4, y_hi), (x + 4, y_hi)], fill=c, width=2)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=c)
        # Labels of points near the right edge go to their left, clear of the legend.
        flip = x > right - 120
        draw.text((x - 9 if flip else x + 9, y - 9), str(p["label"]), fill="black", font=font,
                  anchor="rs" if flip else "ls")
    draw.text(((left + right) / 2, FIG_SIZE[1] - 25), xlabel, fill="black", font=font, anchor="mm")
    # Pillow cannot draw rotated text directly: render it horizontally, rotate, paste.
    ylabel = Image.new("RGB", (160, 20), "white")
    ImageDraw.Draw(ylabel).text((80, 10), "accuracy (%)", fill="black", font=font, anchor="mm")
    img.paste(ylabel.rotate(90, expand=True), (8, (top + bottom) // 2 - 80))
    draw.text((FIG_SIZE[0] / 2, 22), title, fill="black", font=_font(18), anchor="mm")
    named = [g for g in groups if g is not None]
    for i, g in enumerate(named):
        y = top + 10 + 24 * i
        draw.rectangle([right + 25, y - 6, right + 37, y + 6], fill=colour[g])
        draw.text((right + 45, y), str(g), fill="black", font=font, anchor="lm")
    img.save(path, format="PNG")


def _class_grid(images: torch.Tensor, labels: torch.Tensor, scale: int) -> Image.Image:
    """One row per class present (ascending), its images in label order, PAD px white around each image."""
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique(labels, return_counts=True)
    _, _, h, w = images.shape
    th, tw = h * scale + PAD, w * scale + PAD
    grid = Image.new("RGB", (int(counts.max()) * tw + PAD, len(classes) * th + PAD), "white")
    row_of = {int(c): r for r, c in enumerate(classes)}
    col = dict.fromkeys(row_of, 0)
    for i in order.tolist():
        c = int(labels[i])
        grid.paste(_to_pil(images[i], scale), (PAD + col[c] * tw, PAD + row_of[c] * th))
        col[c] += 1
    return grid


def side_by_side(panels: list[tuple[str, torch.Tensor, torch.Tensor]], path: str | os.PathLike,
                 scale: int = 3) -> None:
    """Save panels ``(caption, images (N, C, H, W), labels (N,))`` left to right, each a per-class grid.

    A panel with K classes and at most M images per class is ``M*(W*scale+2)+2`` wide and
    ``K*(H*scale+2)+2`` high. The PNG is ``10 + sum(panel width + 10)`` wide and
    ``24 + max(panel height) + 10`` high: a 24 px caption band on top, 10 px white around panels; a panel
    narrower than its caption is given the caption's width.
    """
    if not panels:
        raise UDDError("side_by_side needs at least one panel")
    grids = []
    for caption, images, labels in panels:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise UDDError(f"panel {caption!r}: images must be (N, C, H, W) with C 1 or 3, "
                           f"got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],) or images.shape[0] == 0:
            raise UDDError(f"panel {caption!r}: {images.shape[0]} images but labels of shape "
                           f"{tuple(labels.shape)}; give one label per image, at least one image")
        grids.append(_class_grid(images, labels.cpu(), scale))
    font = _font(14)
    # a panel narrower than its caption (one image per class) gets the caption's width
    slots = [max(g.width, math.ceil(font.getlength(caption))) for (caption, _, _), g in zip(panels, grids)]
    width = GAP + sum(w + GAP for w in slots)
    img = Image.new("RGB", (width, CAPTION_H + max(g.height for g in grids) + GAP), "white")
    draw, x = ImageDraw.Draw(img), GAP
    for (caption, _, _), g, w in zip(panels, grids, slots):
        draw.text((x, CAPTION_H // 2), caption, fill="black", font=font, anchor="lm")
        img.paste(g, (x, CAPTION_H))
        x += w + GAP
    img.save(path, format="PNG")


def _heat(x: torch.Tensor) -> torch.Tensor:
    """A dark-blue -> red -> yellow colour map of values in [0, 1]: (...) -> (3, ...)."""
    stops = torch.tensor([[0.0, 0.0, 0.5], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    t = x.clamp(0, 1) * 2
    i = t.floor().clamp(max=1).long()  # which segment; t == 2 stays in the last one
    f = (t - i).unsqueeze(0)
    return stops[i].movedim(-1, 0) * (1 - f) + stops[i + 1].movedim(-1, 0) * f


def _box_pixels(box: torch.Tensor, width: int, height: int) -> list[int]:
    """A normalized (y0, x0, y1, x1) box as inclusive pixel corners [x0, y0, x1, y1] of a tile."""
    y0, x0, y1, x1 = box.tolist()
    left, top = round(x0 * width), round(y0 * height)
    return [left, top, max(left, round(x1 * width) - 1), max(top, round(y1 * height) - 1)]


def window_maps(images: torch.Tensor, maps: torch.Tensor, boxes: torch.Tensor, path: str | os.PathLike,
                scale: int = 6, captions: list[str] | None = None) -> None:
    """Save one row per image: the image and its activation map over the grey image, both with the windows.

    ``images`` (B, C, H, W) in [0, 1]; ``maps`` (B, h, w) non-negative, min-max normalised per image and
    bilinearly upsampled; ``boxes`` (B, P, 4) normalized ``(y0, x0, y1, x1)``, index 0 (the lowest-ranked
    window) outlined in red, the others in cyan, 2 px wide inside the box. Tiles are ``W*scale`` x
    ``H*scale`` with 4 px white around them; each row has a 24 px caption band on top when ``captions``
    is given (one per image).
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise UDDError(f"images must be (B, C, H, W) with C 1 or 3, got {tuple(images.shape)}")
    b, _, h, w = images.shape
    if maps.dim() != 3 or maps.shape[0] != b:
        raise UDDError(f"maps must be (B, h, w) with B={b}, got {tuple(maps.shape)}")
    if boxes.dim() != 3 or boxes.shape[0] != b or boxes.shape[2] != 4:
        raise UDDError(f"boxes must be (B, P, 4) with B={b}, got {tuple(boxes.shape)}")
    if not bool(((boxes >= 0) & (boxes <= 1)).all()):
        raise UDDError("boxes must be normalized (y0, x0, y1, x1) in [0, 1]")
    if captions is not None and len(captions) != b:
        raise UDDError(f"{len(captions)} captions for {b} images; give one per image or none")
    images, boxes = images.detach().float().cpu().clamp(0, 1), boxes.detach().float().cpu()
    m = maps.detach().float().cpu()
    lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
    m = (m - lo) / (hi - lo).clamp_min(1e-12)  # a flat map becomes all zeros instead of NaN
    m = F.interpolate(m.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    grey = images.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    blended = 0.5 * grey + 0.5 * _heat(m).movedim(0, 1)
    tw, th, cap = w * scale, h * scale, CAPTION_H if captions is not None else 0
    row_h = cap + th + TILE_PAD
    img = Image.new("RGB", (2 * tw + 3 * TILE_PAD, TILE_PAD + b * row_h), "white")
    draw, font = ImageDraw.Draw(img), _font(14)
    for i in range(b):
        y = TILE_PAD + i * row_h + cap
        if captions is not None:
            draw.text((TILE_PAD, y - cap // 2), captions[i], fill="black", font=font, anchor="lm")
        for x, tile in ((TILE_PAD, images[i]), (2 * TILE_PAD + tw, blended[i])):
            img.paste(_to_pil(tile, scale), (x, y))
            # The lowest-ranked window is drawn last so its outline stays visible where boxes overlap.
            for j in reversed(range(boxes.shape[1])):
                x0, y0, x1, y1 = _box_pixels(boxes[i, j], tw, th)
                draw.rectangle([x + x0, y + y0, x + x1, y + y1], width=2,
                               outline=LOWEST_BOX_COLOUR if j == 0 else OTHER_BOX_COLOUR)
    img.save(path, format="PNG")
