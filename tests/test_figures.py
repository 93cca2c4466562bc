import numpy as np
import pytest
import torch
from PIL import Image

from udd_fast import figures
from udd_fast.errors import UDDError


def load_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(path)
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB")).astype(int)


def colour_rows(a, colour):
    """Row indices of the pixels of exactly ``colour`` inside the plot area (the legend lies outside it)."""
    left, top, right, bottom = figures.PLOT_BOX
    ys, _ = np.nonzero((a[top:bottom, left:right] == colour).all(-1))
    return ys + top


POINTS = [{"label": "low", "mue": 0.2, "mean": 40.0, "std": 2.0, "group": "IPC=1"},
          {"label": "high", "mue": 0.6, "mean": 60.0, "std": 2.0, "group": "IPC=10"}]


def test_accuracy_vs_mue_places_points_by_value(tmp_path):
    path = tmp_path / "fig7.png"
    figures.accuracy_vs_mue(POINTS, path, title="Fashion-MNIST")
    a = load_png(path)
    assert a.shape == (600, 900, 3)
    (xl, yl), (xh, yh) = figures._project(POINTS)[0]
    assert yh < yl and xh > xl  # higher accuracy is higher up, higher mUE further right
    c_low, c_high = figures.PALETTE[0], figures.PALETTE[1]
    assert tuple(a[round(yl), round(xl)]) == c_low and tuple(a[round(yh), round(xh)]) == c_high
    assert colour_rows(a, c_high).mean() < colour_rows(a, c_low).mean() - 100
    # The +-std error bar reaches above the dot in the point's colour.
    _, _, yr = figures._project(POINTS)
    assert tuple(a[round(figures._py(62.0, yr)) + 1, round(xh)]) == c_high
    # Both groups appear in the legend, right of the plot area.
    legend = a[:, figures.PLOT_BOX[2] + 1:]
    assert (legend == c_low).all(-1).any() and (legend == c_high).all(-1).any()


def test_accuracy_vs_mue_single_point_and_equal_values(tmp_path):
    point = {"label": "only", "mue": 0.5, "mean": 50.0, "std": 0.0}
    figures.accuracy_vs_mue([point, dict(point, label="same")], tmp_path / "one.png")
    assert load_png(tmp_path / "one.png").shape == (600, 900, 3)
    ((x, y), _), xr, yr = figures._project([point, point])
    left, top, right, bottom = figures.PLOT_BOX
    assert xr[0] < 0.5 < xr[1] and yr[0] < 50 < yr[1]
    assert x == pytest.approx((left + right) / 2) and y == pytest.approx((top + bottom) / 2)


@pytest.mark.parametrize("points", [
    [],
    [dict(POINTS[0], mue=float("nan"))],
    [dict(POINTS[0], mean=float("inf"))],
    [POINTS[0], dict(POINTS[1], std=float("-inf"))],
    [{"label": "no std", "mue": 0.1, "mean": 3.0}],
])
def test_accuracy_vs_mue_errors(tmp_path, points):
    with pytest.raises(UDDError):
        figures.accuracy_vs_mue(points, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_side_by_side_size_and_class_rows(tmp_path):
    # Panel A: 6 grey images, 3 classes x 2, each image's value encodes its index.
    labels_a = torch.tensor([2, 0, 1, 0, 2, 1])
    images_a = (torch.arange(6, dtype=torch.float32) / 10).view(6, 1, 1, 1).expand(6, 1, 28, 28)
    # Panel B: 9 RGB images, 3 classes x 3.
    images_b, labels_b = torch.rand(9, 3, 28, 28), torch.arange(3).repeat(3)
    path = tmp_path / "fig11.png"
    figures.side_by_side([("UDD", images_a, labels_a), ("IDC-style", images_b, labels_b)], path, scale=2)
    a = load_png(path)
    tile = 28 * 2 + figures.PAD
    w_a, w_b, h = 2 * tile + figures.PAD, 3 * tile + figures.PAD, 3 * tile + figures.PAD
    gap = figures.GAP
    assert a.shape == (figures.CAPTION_H + h + gap, gap + w_a + gap + w_b + gap, 3) == (210, 324, 3)
    # Rows are classes ascending; within a class, images keep their input order.
    expected = {(0, 0): 1, (0, 1): 3, (1, 0): 2, (1, 1): 5, (2, 0): 0, (2, 1): 4}
    for (row, col), i in expected.items():
        y = figures.CAPTION_H + figures.PAD + row * tile + 28
        x = gap + figures.PAD + col * tile + 28
        assert tuple(a[y, x]) == (round(i / 10 * 255),) * 3
    # The padding between images is white.
    assert tuple(a[figures.CAPTION_H + tile, gap + tile]) == (255, 255, 255)
    # Panel B's first image starts right after panel A and one gap, upscaled with nearest neighbour.
    b0 = (images_b[0] * 255).round().int()
    x0, y0 = gap + w_a + gap + figures.PAD, figures.CAPTION_H + figures.PAD
    assert tuple(a[y0 + 1, x0 + 1]) == tuple(b0[:, 0, 0].tolist())


def test_side_by_side_uneven_classes(tmp_path):
    images, labels = torch.zeros(4, 1, 5, 5), torch.tensor([2, 0, 0, 0])
    figures.side_by_side([("x", images, labels)], tmp_path / "u.png", scale=1)
    tile = 5 + figures.PAD
    # 2 classes present, at most 3 images in one of them.
    assert load_png(tmp_path / "u.png").shape == (
        figures.CAPTION_H + 2 * tile + figures.PAD + figures.GAP, 2 * figures.GAP + 3 * tile + figures.PAD, 3)


@pytest.mark.parametrize("panels", [
    [],
    [("n", torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.long))],
    [("c", torch.zeros(2, 2, 4, 4), torch.zeros(2, dtype=torch.long))],
    [("d", torch.zeros(2, 4, 4), torch.zeros(2, dtype=torch.long))],
    [("e", torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long))],
])
def test_side_by_side_errors(tmp_path, panels):
    with pytest.raises(UDDError):
        figures.side_by_side(panels, tmp_path / "bad.png")


def test_window_maps_draws_boxes(tmp_path):
    images = torch.zeros(1, 1, 8, 8)
    boxes = torch.tensor([[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]])  # lowest-ranked first, (y0, x0, y1, x1)
    path = tmp_path / "fig3.png"
    figures.window_maps(images, torch.rand(1, 4, 4), boxes, path, scale=6)
    a = load_png(path)
    p = figures.TILE_PAD
    assert a.shape == (p + 48 + p, p + 48 + p + 48 + p, 3)
    red, cyan, black = figures.LOWEST_BOX_COLOUR, figures.OTHER_BOX_COLOUR, (0, 0, 0)
    for tx in (p, 2 * p + 48):  # image tile, activation tile
        # Top-left box spans pixels 0..23: edges red on all four sides.
        for x, y in ((0, 10), (1, 10), (23, 10), (10, 0), (10, 23)):
            assert tuple(a[p + y, tx + x]) == red
        for x, y in ((24, 30), (47, 30), (30, 24), (30, 47)):
            assert tuple(a[p + y, tx + x]) == cyan
    # Inside and outside the boxes the black image shows through.
    for x, y in ((10, 10), (36, 36), (30, 10), (10, 30)):
        assert tuple(a[p + y, p + x]) == black


def test_window_maps_boxes_follow_y_first_convention(tmp_path):
    # A box covering the top half: y in [0, 0.5], all x.
    figures.window_maps(torch.zeros(1, 3, 8, 8), torch.ones(1, 2, 2), torch.tensor([[[0, 0, 0.5, 1]]]),
                        tmp_path / "w.png", scale=4, captions=["top half"])
    a = load_png(tmp_path / "w.png")
    p, cap = figures.TILE_PAD, figures.CAPTION_H
    assert a.shape == (p + cap + 32 + p, 3 * p + 64, 3)
    red = figures.LOWEST_BOX_COLOUR
    assert tuple(a[p + cap + 15, p + 31]) == red and tuple(a[p + cap + 8, p + 16]) == (0, 0, 0)
    assert tuple(a[p + cap + 24, p + 31]) == (0, 0, 0)  # below the box


def test_window_maps_activation_tile_follows_map(tmp_path):
    images = torch.full((2, 1, 8, 8), 0.5)
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0], maps[1, 3, 3] = 5.0, 5.0
    path = tmp_path / "heat.png"
    figures.window_maps(images, maps, torch.zeros(2, 0, 4), path, scale=2)
    a = load_png(path)
    p = figures.TILE_PAD
    row = 16 + p
    heat = [a[p + i * row:p + i * row + 16, 2 * p + 16:2 * p + 32] for i in range(2)]
    assert not np.array_equal(heat[0], heat[1])
    # Warm colours (red + green) where the map peaks: top-left for image 0, bottom-right for image 1.
    warmth = [h[..., :2].sum(-1) for h in heat]
    assert warmth[0][:4, :4].mean() > warmth[0][-4:, -4:].mean() + 50
    assert warmth[1][-4:, -4:].mean() > warmth[1][:4, :4].mean() + 50
    # The image tile is the plain grey image.
    assert (a[p:p + 16, p:p + 16] == 128).all()


def test_heat_ramp_endpoints():
    c = figures._heat(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(c.T, torch.tensor([[0.0, 0.0, 0.5], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))


@pytest.mark.parametrize("images, maps, boxes, captions", [
    (torch.zeros(2, 8, 8), torch.zeros(2, 4, 4), torch.zeros(2, 1, 4), None),
    (torch.zeros(2, 2, 8, 8), torch.zeros(2, 4, 4), torch.zeros(2, 1, 4), None),
    (torch.zeros(2, 1, 8, 8), torch.zeros(3, 4, 4), torch.zeros(2, 1, 4), None),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4), None),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 4, 4), torch.zeros(1, 1, 4), None),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 4, 4), torch.zeros(2, 1, 3), None),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 4, 4), torch.full((2, 1, 4), 1.5), None),
    (torch.zeros(2, 1, 8, 8), torch.zeros(2, 4, 4), torch.zeros(2, 1, 4), ["only one"]),
])
def test_window_maps_errors(tmp_path, images, maps, boxes, captions):
    with pytest.raises(UDDError):
        figures.window_maps(images, maps, boxes, tmp_path / "bad.png", captions=captions)


def test_side_by_side_makes_room_for_long_captions(tmp_path):
    """Two one-image panels with long captions: the captions do not overlap, each panel takes its caption's width."""
    caption = "a caption much wider than one image"
    panels = [(caption, torch.zeros(1, 1, 4, 4), torch.zeros(1, dtype=torch.long))] * 2
    figures.side_by_side(panels, tmp_path / "long.png", scale=1)
    text = figures._font(14).getlength(caption)
    width = Image.open(tmp_path / "long.png").size[0]
    assert width >= 2 * text + 3 * figures.GAP
