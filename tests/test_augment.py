import pytest
import torch

from udd_fast.augment import DSA


def test_siamese_draw_applies_identically_to_real_and_synthetic():
    torch.manual_seed(0)
    dsa = DSA("color_crop_cutout_flip_scale_rotate")
    real = torch.rand(5, 3, 16, 16)
    syn = real[:2].clone().requires_grad_(True)
    draw = dsa.sample(1, (16, 16), siamese=True)
    a, b = dsa.apply(real, draw), dsa.apply(syn, draw)
    torch.testing.assert_close(a[:2], b)  # same draw, same transform for every image of both batches
    b.sum().backward()
    assert syn.grad.abs().sum() > 0


def test_per_sample_draws_differ_and_single_mode_picks_one():
    torch.manual_seed(1)
    x = torch.rand(1, 1, 16, 16).expand(8, 1, 16, 16)
    out = DSA("crop_scale_rotate")(x)
    assert not torch.allclose(out[0], out[1])
    single = DSA("color_crop_cutout", mode="single")
    assert len(single.sample(4, (16, 16))) == 1


def test_crop_is_an_integer_shift_with_zero_fill():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = DSA._crop(x, (torch.tensor([1]), torch.tensor([-1])))
    want = torch.zeros(4, 4)
    want[1:, :3] = x[0, 0, :3, 1:]
    torch.testing.assert_close(out[0, 0], want)


def test_flip_off_and_unknown_transform():
    assert "flip" not in DSA("flip_crop", flip=False).names
    with pytest.raises(ValueError, match="unknown DSA"):
        DSA("color_blur")


def test_repeat_joins_per_class_draws():
    """One apply of the joined draws = each class's batch augmented by its own Siamese draw."""
    torch.manual_seed(0)
    dsa = DSA("color_crop_cutout_flip_scale_rotate")
    x = torch.rand(6, 3, 16, 16)
    draws = [dsa.sample(1, (16, 16), siamese=True) for _ in range(3)]
    each = torch.cat([dsa.apply(x[2 * i:2 * i + 2], d) for i, d in enumerate(draws)])
    assert torch.allclose(dsa.apply(x, DSA.repeat(draws, 2)), each, atol=1e-6)
    # counts per draw: the same draws over 1, 3 and 2 samples
    uneven = torch.cat([dsa.apply(x[a:b], d) for (a, b), d in zip([(0, 1), (1, 4), (4, 6)], draws)])
    assert torch.allclose(dsa.apply(x, DSA.repeat(draws, [1, 3, 2])), uneven, atol=1e-6)
    single = DSA("color_crop", mode="single")
    mixed = [single.sample(1, (16, 16), siamese=True) for _ in range(20)]
    with pytest.raises(ValueError, match="different transforms"):
        DSA.repeat(mixed, 2)
