"""The plain-torch reference ops against brute force and torchvision."""
import itertools

import pytest
import torch
from torchvision.ops import roi_align

from udd_fast import reference
from udd_fast.regions import candidate_windows
from windows import random_windows


def test_candidate_windows_order_and_geometry():
    w = candidate_windows()
    assert w.shape == (12, 4)
    for g, f in enumerate((1 / 3, 1 / 2, 2 / 3)):
        expect = torch.tensor([(0, 0, f, f), (0, 1 - f, f, 1), (1 - f, 0, 1, f), (1 - f, 1 - f, 1, 1)])
        torch.testing.assert_close(w[4 * g: 4 * g + 4], expect)
    assert candidate_windows((0.5,)).shape == (4, 4)


def brute_pool(fmap, windows, mode):
    """Per-pixel loop: overlap area of unit pixel squares with each window."""
    b, c, h, w = fmap.shape
    x = fmap.double().abs() if mode == "abs" else fmap.double()
    out = torch.zeros(b, len(windows), dtype=torch.float64)
    for n, (y0, x0, y1, x1) in enumerate(windows.double().tolist()):
        total, area = torch.zeros(b, dtype=torch.float64), 0.0
        for i, j in itertools.product(range(h), range(w)):
            oy = max(0.0, min(i + 1, y1 * h) - max(i, y0 * h))
            ox = max(0.0, min(j + 1, x1 * w) - max(j, x0 * w))
            total += oy * ox * x[:, :, i, j].mean(1)
            area += oy * ox
        out[:, n] = total / area
    return out


@pytest.mark.parametrize("mode", ["value", "abs"])
@pytest.mark.parametrize("hw", [(4, 4), (5, 7)])
def test_window_pool_matches_brute_force(mode, hw):
    gen = torch.Generator().manual_seed(0)
    fmap = torch.randn(3, 5, *hw, generator=gen)
    windows = torch.cat([candidate_windows(), random_windows(7, gen)])
    got = reference.window_pool(fmap, windows, mode)
    torch.testing.assert_close(got.double(), brute_pool(fmap, windows, mode), rtol=1e-5, atol=1e-6)


def test_window_pool_fractional_windows_are_exact_on_4x4():
    fmap = torch.zeros(1, 1, 4, 4)
    fmap[0, 0, 1, 1] = 1.0  # window (0,0,1/3,1/3) covers 1/3 of pixel row 1 and column 1
    got = reference.window_pool(fmap, candidate_windows()[:1], "value")
    area = (4 / 3) ** 2
    assert got.item() == pytest.approx((1 / 3) * (1 / 3) / area, rel=1e-6)


def test_lowest_p_breaks_ties_by_lower_index():
    scores = torch.tensor([[3.0, 1.0, 1.0, 0.5, 1.0]])
    assert reference.lowest_p(scores, 3).tolist() == [[3, 1, 2]]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_crop_resize_equals_roi_align(dtype, tol):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(3, 2, 13, 17, generator=gen, dtype=dtype)
    windows = torch.cat([candidate_windows(), random_windows(4, gen)]).to(dtype)
    index = torch.randint(len(windows), (3, 5), generator=gen)
    got = reference.crop_resize(images, windows, index)
    assert got.shape == (15, 2, 13, 17)
    # direct roi_align call with boxes in pixels (x0, y0, x1, y1), rows b-major
    for b, p in itertools.product(range(3), range(5)):
        y0, x0, y1, x1 = windows[index[b, p]].tolist()
        box = torch.tensor([[0, x0 * 17, y0 * 13, x1 * 17, y1 * 13]], dtype=dtype)
        want = roi_align(images[b:b + 1], box, (13, 17), 1.0, 1, True)
        torch.testing.assert_close(got[b * 5 + p: b * 5 + p + 1], want, rtol=tol, atol=tol)


def test_crop_resize_sampling_formula_by_hand():
    """Output pixel (i, j) samples y = y0 + (i + 0.5)(y1 - y0)/H - 0.5, clamped to the image."""
    img = torch.arange(16.0, dtype=torch.float64).view(1, 1, 4, 4)  # value = 4y + x, bilinear-exact
    win = torch.tensor([[0.25, 0.5, 0.75, 1.0]], dtype=torch.float64)
    out = reference.crop_resize(img, win, torch.zeros(1, 1, dtype=torch.long))[0, 0]
    for i, j in itertools.product(range(4), range(4)):
        y = min(max(1 + (i + 0.5) * 2 / 4 - 0.5, 0), 3)
        x = min(max(2 + (j + 0.5) * 2 / 4 - 0.5, 0), 3)
        assert out[i, j].item() == pytest.approx(4 * y + x, abs=1e-12)


def test_crop_resize_backward_gradcheck_and_with_source():
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(2, 1, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    windows = candidate_windows().double()
    index = torch.tensor([[0, 5, 11], [3, 3, 8]])
    assert torch.autograd.gradcheck(lambda x: reference.crop_resize(x, windows, index), (images,))
    both = reference.crop_resize(images, windows, index, with_source=True)
    torch.testing.assert_close(both[:2], images)
    assert both.shape == (8, 1, 6, 5)


def test_jitter_score_and_jitter_copies_reference():
    gen = torch.Generator().manual_seed(3)
    fmap = torch.rand(2, 4, 4, 4, generator=gen)
    jittered = fmap[None] + 0.1 * torch.randn(3, 2, 4, 4, 4, generator=gen)
    w = candidate_windows()
    sigma, idx = reference.jitter_score(fmap, jittered, w, 5)
    lam = reference.window_pool(fmap, w)
    lam_hat = torch.stack([reference.window_pool(j, w) for j in jittered]).mean(0)
    torch.testing.assert_close(sigma, (lam - lam_hat).abs())
    assert idx.tolist() == reference.lowest_p(sigma, 5).tolist()
    x = torch.rand(2, 1, 8, 8)
    a, b = (reference.jitter_copies(x, 2, 0.1, "gaussian", seed=7) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, reference.jitter_copies(x, 2, 0.1, "gaussian", seed=8))
    sp = reference.jitter_copies(torch.full((1, 1, 100, 100), 0.5), 1, 0.2, "salt_pepper", seed=0)
    hit = (sp != 0.5).float().mean().item()
    assert 0.17 < hit < 0.23


# Random123's known-answer tests for philox4x32-10 (kat_vectors): (counter, key) -> output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,want", PHILOX_KAT)
def test_philox_known_answers(counter, key, want):
    got = reference.philox4x32(key[0] | key[1] << 32, *(torch.tensor([c]) for c in counter))
    assert tuple(int(w) for w in got) == want


def test_jitter_noise_definition():
    """Uniforms in [0, 1) from the 31-bit magnitude of each Philox word; element e of image i in copy c is word
    e % 4 of the counter (e // 4, i, c, i >> 32)."""
    u = reference.jitter_noise((3, 10), 2, "uniform", seed=5, first_image=1 << 32)
    assert u.shape == (2, 3, 10) and u.dtype == torch.float32 and 0 <= u.min() and u.max() < 1
    words = reference.philox4x32(5, torch.tensor(2), torch.tensor(1), torch.tensor(1), torch.tensor(1))
    word = int(words[1])  # element 9 = group 2, word 1, of image 1 << 32 | 1 in copy 1
    magnitude = word if word < 1 << 31 else (1 << 32) - 1 - word
    scale = torch.tensor(reference.JITTER_UNIFORM_SCALE, dtype=torch.float32)
    assert u[1, 1, 9] == torch.tensor(magnitude, dtype=torch.float32) * scale
    n = reference.jitter_noise((50, 1000), 1, "gaussian", seed=1)
    assert abs(n.mean().item()) < 0.02 and abs(n.std().item() - 1) < 0.02
