import math

import pytest
import torch

from udd_fast.metrics import PARTITIONS, mue, utilization_entropy


def entropy(p):
    return -sum(q * math.log(q) for q in p if q > 0)


def test_utilization_entropy_by_hand():
    """Histogram over d equal intervals of each row's own range, entropy normalized by log d."""
    flat = torch.tensor([[0.0, 1.0, 2.0, 3.0]])          # one value per interval at d=4: uniform
    spike = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])  # 7/8 in the first interval, 1/8 in the last
    const = torch.full((1, 5), 2.5)                       # no spread: one occupied interval
    assert utilization_entropy(flat, 4).item() == pytest.approx(1.0, abs=1e-6)
    assert utilization_entropy(spike, 5).item() == pytest.approx(entropy([7 / 8, 1 / 8]) / math.log(5), rel=1e-6)
    assert utilization_entropy(const, 5).item() == pytest.approx(0.0, abs=1e-6)
    # scale and shift do not matter (each image's own range), the values' shape does
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(utilization_entropy(x, 7), utilization_entropy(4 * x - 1, 7))
    # [0, .3, .6, 1] at d=3: intervals [0, 1/3), [1/3, 2/3), [2/3, 1] hold 2, 1, 1 values
    assert utilization_entropy(torch.tensor([[0.0, 0.3, 0.6, 1.0]]), 3).item() == pytest.approx(
        entropy([0.5, 0.25, 0.25]) / math.log(3), rel=1e-6)


def test_mue_averages_over_partitions_and_images():
    class Net(torch.nn.Module):
        def feature_maps(self, x):
            return [x]

    ramp = torch.arange(60.0).view(1, 1, 6, 10)  # 60 distinct values: near-uniform at every d
    silent = torch.zeros(1, 1, 6, 10)
    silent[0, 0, 0, 0] = 1.0  # one active position: almost all values in the first interval
    want = sum(utilization_entropy(ramp.flatten(1), d) + utilization_entropy(silent.flatten(1), d)
               for d in PARTITIONS).item() / (2 * len(PARTITIONS))
    assert PARTITIONS == (5, 6, 7, 8, 9, 10)
    assert mue(torch.cat([ramp, silent]), Net(), lambda t: t) == pytest.approx(want, rel=1e-6)
    assert mue(ramp, Net(), lambda t: t) > 0.95 > 0.2 > mue(silent, Net(), lambda t: t)
