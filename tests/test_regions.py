"""Policies find a planted low-information window; the training batch and decode are what they say."""
import pytest
import torch
from torch import nn

from udd_fast import ops
from udd_fast.errors import UDDError
from udd_fast.models import ConvNet
from udd_fast.regions import (RegionConfig, candidate_windows, check_image_size, decode, grid_windows, ranks,
                              select_windows, training_batch)


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


def test_decode_factor_two_by_hand():
    """Each 2x2 tile is upsampled to the full size, tiles row-major, images b-major."""
    img = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    img[0, 0, :2, :2], img[0, 0, :2, 2:], img[0, 0, 2:, :2], img[0, 0, 2:, 2:] = 1, 2, 3, 4
    out = decode(img, 2)
    assert out.shape == (4, 1, 4, 4)
    # interior samples of each tile are the tile's constant value; border rows blend with the next tile
    for t, v in enumerate((1.0, 2.0, 3.0, 4.0)):
        assert out[t, 0, 1:3, 1:3].eq(v).all()
    assert grid_windows(2).tolist() == [[0, 0, .5, .5], [0, .5, .5, 1], [.5, 0, 1, .5], [.5, .5, 1, 1]]
    assert torch.equal(decode(img, 1), img)


def test_region_config_errors():
    with pytest.raises(UDDError, match="P=13"):
        RegionConfig(p=13)
    with pytest.raises(UDDError, match="unknown policy"):
        RegionConfig(policy="bogus")
    with pytest.raises(UDDError, match="too small"):
        check_image_size(4, (1 / 3, 1 / 2))
