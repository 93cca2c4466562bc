"""One honest end-to-end run on real Fashion-MNIST: distill, evaluate, and beat chance by a wide margin."""
import pytest
import torch

from udd_fast import Distiller, EvalProtocol, evaluate, load_dataset, preset
from udd_fast.errors import UDDError


@pytest.fixture(scope="module")
def fmnist():
    try:
        return load_dataset("fashion-mnist", True, download=False), load_dataset("fashion-mnist", False, download=False)
    except UDDError as e:
        pytest.fail(f"Fashion-MNIST is part of the set-up (make data): {e}")


def test_distill_and_evaluate_fashion_mnist(fmnist, tmp_path):
    train, test = fmnist
    cfg = preset("cpu-quick", "fashion-mnist", 1).replace(outer=1, inner=3, width=32, net_batches=1)
    syn = Distiller(train, cfg, out_dir=tmp_path).run(progress=False)
    assert syn.images.shape == (10, 1, 28, 28) and syn.labels.tolist() == list(range(10))
    subset = type(test)(test.images[:2000], test.labels[:2000], test.mean, test.std, test.name, test.flip, 10)
    r = evaluate(syn, subset, EvalProtocol(width=32, epochs=40, repeats=1), progress=False)
    assert r["train_images"] == 10 * cfg.factor ** 2
    assert r["mean"] > 35.0, r  # chance is 10 %
    assert 0 < r["mue"] <= 1
    assert syn.images.min() > -0.1 and syn.images.max() < 1.1  # pixel space; one outer iteration's steps unclamped
