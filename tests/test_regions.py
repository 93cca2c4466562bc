"""Policies find a planted low-information window; the training batch and decode are what they say."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from udd_fast import ops
from udd_fast.errors import UDDError
from udd_fast.formation import decode, mix_init, tile_bounds
from udd_fast.models import ConvNet
from udd_fast.regions import (RegionConfig, batch_weights, candidate_windows, check_image_size, crops_kept,
                              jitter_seed, ranks, select_windows, training_batch)


class ThresholdNet(nn.Module):
    """Feature map ReLU(x - 0.3): dark pixels give no response, no gradient and no jitter response."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(1, 2)

    def feature_maps(self, x):
        return [torch.relu(x - 0.3)]

    def embed(self, x):
        return self.feature_maps(x)[0].mean((1, 2, 3))[:, None]

    def forward(self, x, features=False):
        return self.head(self.embed(x))


def planted_images(b=3, size=24, seed=0):
    """Textured images whose top-left third is constant black."""
    g = torch.Generator().manual_seed(seed)
    x = 0.4 + 0.6 * torch.rand(b, 1, size, size, generator=g)
    x[:, :, : size // 3, : size // 3] = 0.0
    return x


@pytest.mark.parametrize("policy", ["activation", "gradient", "jitter", "vote"])
def test_policy_picks_planted_constant_corner(policy):
    torch.manual_seed(0)
    x = planted_images()
    y = torch.zeros(3, dtype=torch.long)
    cfg = RegionConfig(policy=policy, p=1, m=2, jitter_strength=0.05)
    idx = select_windows(ThresholdNet(), x, y, candidate_windows(), lambda t: t, cfg, seed=1)
    assert idx.tolist() == [[0], [0], [0]]  # window 0 is the top-left third


@pytest.mark.parametrize("policy", ["gradient", "jitter", "vote", "random"])
def test_policies_do_not_depend_on_the_batch(policy):
    # An image's windows depend on the image and (seed, its global index), not on the other images of its
    # batch: classes split over processes select what one process would.
    g = torch.Generator().manual_seed(3)
    x = 0.3 + 0.7 * torch.rand(5, 1, 12, 12, generator=g)
    y = torch.tensor([0, 1, 1, 0, 1])
    cfg = RegionConfig(policy=policy, p=6, m=2, jitter_strength=0.2)
    args = (ThresholdNet(), candidate_windows(), lambda t: t, cfg)

    def pick(lo, hi):
        return select_windows(args[0], x[lo:hi], y[lo:hi], *args[1:], seed=jitter_seed(4, 9), first_image=lo)

    assert torch.equal(pick(0, 5), torch.cat([pick(0, 2), pick(2, 5)]))


def test_random_policy_is_a_fresh_uniform_draw_every_step():
    """The control ranks nothing: every window is picked about equally often, and the draw changes with the
    step (seed) but not between two calls with the same one."""
    x, y = planted_images(b=50), torch.zeros(50, dtype=torch.long)
    cfg = RegionConfig(policy="random", p=1)
    args = (ThresholdNet(), x, y, candidate_windows(), lambda t: t, cfg)
    picks = torch.cat([select_windows(*args, seed=jitter_seed(0, step)) for step in range(24)]).flatten()
    assert picks.bincount(minlength=12).min() >= 50 and picks.bincount(minlength=12).max() <= 150
    assert torch.equal(select_windows(*args, seed=7), select_windows(*args, seed=7))
    assert not torch.equal(select_windows(*args, seed=7), select_windows(*args, seed=8))


def test_jitter_seed_keys_every_seed_and_step_apart():
    keys = {jitter_seed(seed, step) for seed in (0, 1, 2 ** 32 - 1) for step in (0, 1, 2 ** 31 - 1)}
    assert len(keys) == 9 and all(0 <= k < 2 ** 63 for k in keys)


def test_policy_indices_valid_on_convnet():
    net = ConvNet(1, 10, 28, width=8)
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    for policy in ("activation", "gradient", "jitter", "vote"):
        idx = select_windows(net, x, y, candidate_windows(), lambda t: t, RegionConfig(policy=policy, p=8))
        assert idx.shape == (4, 8)
        assert all(len(set(row)) == 8 and max(row) < 12 for row in idx.tolist())


def test_ranks_are_positions_in_sorted_order():
    scores = torch.tensor([[0.3, 0.1, 0.2, 0.1]])
    assert ranks(scores).tolist() == [[3, 0, 2, 1]]


def test_training_batch_is_source_then_crops_and_differentiable():
    s = torch.rand(2, 1, 12, 12, requires_grad=True)
    idx = torch.tensor([[0, 7], [11, 2]])
    out = training_batch(s, candidate_windows(), idx)
    assert out.shape == (6, 1, 12, 12)
    torch.testing.assert_close(out[:2], s)
    torch.testing.assert_close(out[2:], ops.crop_resize(s, candidate_windows(), idx))
    out.sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_picked_crops_are_those_rows_of_the_whole_batch():
    """``pick`` keeps k of each group's n * P crops: the same rows the whole batch holds, and only those."""
    s = torch.rand(6, 1, 12, 12, requires_grad=True)  # 2 groups of 3 images, P = 2
    idx = torch.tensor([[0, 7], [11, 2], [4, 5], [1, 3], [8, 9], [10, 6]])
    whole = training_batch(s, candidate_windows(), idx, groups=2).unflatten(0, (2, -1))  # each: 3 images, 6 crops
    pick = torch.tensor([[5, 0], [2, 3]])
    out = training_batch(s, candidate_windows(), idx, groups=2, pick=pick).unflatten(0, (2, -1))
    assert out.shape == (2, 5, 1, 12, 12)
    for g in range(2):
        torch.testing.assert_close(out[g, :3], whole[g, :3])
        torch.testing.assert_close(out[g, 3:], whole[g, 3 + pick[g]])
    out.sum().backward()
    # image 1 of group 0 has no picked crop, so its gradient is its own pixels' alone
    assert torch.equal(s.grad[1], torch.ones_like(s.grad[1])) and not torch.equal(s.grad[2], torch.ones_like(s.grad[2]))


def test_sampled_crops_estimate_the_whole_batch_without_bias():
    """Averaged over every pick of k crops, the weighted loss of the sampled batch is the whole batch's (for a
    loss linear in the samples' terms), for each weighting."""
    from itertools import combinations

    torch.manual_seed(0)
    s, idx, coef = torch.rand(3, 1, 12, 12), torch.tensor([[0, 7], [11, 2], [4, 5]]), torch.randn(1, 12, 12)
    n, p, k = 3, 2, 2

    def loss(weights, batch):
        return (weights * (batch * coef).sum((1, 2, 3))).sum()

    for share, on_top in ((0.2, False), (0.2, True), (None, False)):
        whole = loss(batch_weights(n, p, share, on_top), training_batch(s, candidate_windows(), idx))
        picks = list(combinations(range(n * p), k))
        mean = sum(loss(batch_weights(n, p, share, on_top, crops=k),
                        training_batch(s, candidate_windows(), idx, pick=torch.tensor([c]))) for c in picks) / len(picks)
        torch.testing.assert_close(mean, whole)
        assert crops_kept(n, p, 1.0) == n * p and crops_kept(n, p, 0.3) == 2 and crops_kept(n, p, 0.01) == 1


def test_decode_factor_two_by_hand():
    """Each 2x2 tile is upsampled to the full size on its own, tiles row-major, images b-major."""
    img = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    img[0, 0, :2, :2], img[0, 0, :2, 2:], img[0, 0, 2:, :2], img[0, 0, 2:, 2:] = 1, 2, 3, 4
    img[1] = -img[0]
    out = decode(img, 2)
    assert out.shape == (8, 1, 4, 4)
    # a constant tile decodes to a constant image: no sample reaches into the neighbour tile
    for t, v in enumerate((1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0)):
        assert out[t].eq(v).all()
    assert torch.equal(decode(img, 1), img)


def test_decode_is_idc_per_tile_upsampling_and_inverts_mix_init():
    """IDC's decode_zoom: crop each tile, upsample bilinearly (align_corners=False); mix_init shrinks each real
    image into its tile by nearest neighbour (every second pixel at factor 2), the layout decode reads back."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 2, 28, 28, generator=g, requires_grad=True)
    tiles = [img[:, :, i * 14:(i + 1) * 14, j * 14:(j + 1) * 14] for i in range(2) for j in range(2)]
    want = torch.stack([F.interpolate(t, size=(28, 28), mode="bilinear", align_corners=False) for t in tiles], 1)
    out = decode(img, 2)
    torch.testing.assert_close(out, want.flatten(0, 1))
    out[1].sum().backward()  # image 0, tile 1 (top right): its gradient stays in that tile
    assert img.grad[0, :, :14, 14:].abs().sum() > 0 and img.grad[0, :, 14:, :].abs().sum() == 0
    assert img.grad[0, :, :, :14].abs().sum() == 0 and img.grad[1:].abs().sum() == 0
    real = torch.rand(8, 1, 28, 28, generator=g)
    stored = mix_init(real, 2)
    assert stored.shape == (2, 1, 28, 28)
    torch.testing.assert_close(stored[1, :, 14:, :14], real[6, :, ::2, ::2])  # image 1, tile 2 (bottom left)
    assert tile_bounds(28, 3) == [0, 9, 19, 28]
    odd = mix_init(torch.rand(9, 1, 28, 28, generator=g), 3)
    assert decode(odd, 3).shape == (9, 1, 28, 28)


def test_region_config_errors():
    with pytest.raises(UDDError, match="P=13"):
        RegionConfig(p=13)
    with pytest.raises(UDDError, match="unknown policy"):
        RegionConfig(policy="bogus")
    with pytest.raises(UDDError, match="too small"):
        check_image_size(4, (1 / 3, 1 / 2))
