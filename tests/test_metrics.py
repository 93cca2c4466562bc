import math

import pytest
import torch

from udd_fast.metrics import mue, utilization_entropy


def test_utilization_entropy_by_hand():
    uniform = torch.ones(1, 2, 4, 4)
    onehot = torch.zeros(1, 2, 4, 4)
    onehot[0, :, 1, 2] = 3.0
    two = torch.zeros(1, 1, 4, 4)
    two[0, 0, 0, 0] = two[0, 0, 3, 3] = -1.0  # |.| is used: two equal responses
    got = utilization_entropy(torch.cat([uniform, onehot, two.expand(1, 2, 4, 4)]))
    assert got.tolist() == pytest.approx([1.0, 0.0, math.log(2) / math.log(16)], abs=1e-6)
    # p = (3/4, 1/4) on a 1x2 map: H = -(.75 ln .75 + .25 ln .25) / ln 2
    m = torch.tensor([[[[3.0, 1.0]]]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert utilization_entropy(m).item() == pytest.approx(h, rel=1e-6)


def test_mue_averages_over_images():
    class Net(torch.nn.Module):
        def feature_maps(self, x):
            return [x]

    x = torch.cat([torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4).index_fill_(3, torch.tensor([0]), 1.0)])
    # second image: one column of four equal positions -> log 4 / log 16 = 0.5
    assert mue(x, Net(), lambda t: t) == pytest.approx((1.0 + 0.5) / 2, abs=1e-6)
