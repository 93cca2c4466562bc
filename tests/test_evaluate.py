from dataclasses import replace

import pytest
import torch

from udd_fast import EvalProtocol, RealData, evaluate_images, herding_coreset, random_coreset


def clustered_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 1, 8, 8, generator=g) * 0.1
    x[:10, :, :4, :4] += 0.8  # each class lights a different region (instance norm ignores brightness)
    x[10:20, :, :4, 4:] += 0.8
    x[20:, :, 4:, :] += 0.8
    x[5] = 1.0  # an outlier of class 0
    return RealData.from_tensors(x, torch.arange(3).repeat_interleave(10))


def test_herding_first_pick_is_nearest_the_class_mean_and_avoids_outliers():
    d = clustered_data()
    flat = lambda t: t.flatten(1)  # noqa: E731
    x, y = herding_coreset(d, 3, embed=flat)
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for c in range(3):
        members = d.normalize(d.images[d.by_class[c]]).flatten(1)
        nearest = members[(members - members.mean(0)).norm(dim=1).argmin()]
        torch.testing.assert_close(flat(d.normalize(x[3 * c: 3 * c + 1]))[0], nearest)
    assert not any(torch.equal(img, d.images[5]) for img in x)


def test_random_coreset_is_per_class_and_seeded():
    d = clustered_data()
    a, ya = random_coreset(d, 2, seed=1)
    b, _ = random_coreset(d, 2, seed=1)
    assert torch.equal(a, b) and ya.tolist() == [0, 0, 1, 1, 2, 2]


def test_evaluate_images_learns_separable_classes():
    d = clustered_data()
    r = evaluate_images(d.images, d.labels, d, EvalProtocol(width=16, epochs=100, lr=0.05, repeats=2, dsa="none"),
                        progress=False)
    assert r["mean"] > 90 and r["train_images"] == 30 and len(r["accs"]) == 2 and 0 < r["mue"] <= 1


def test_named_protocols_and_auto_precision(monkeypatch, tmp_path):
    """The protocols say what they are; ``auto`` takes bf16 only where the hardware has it, and there only when
    a timed training batch says it is faster (the timings are forced here); the choice is remembered, so the
    next evaluation of that shape times nothing."""
    from udd_fast import losses
    from udd_fast.errors import UDDError
    from udd_fast.evaluate import DEFAULT_PROTOCOLS, protocol

    assert DEFAULT_PROTOCOLS == ("plain", "dsa")
    plain, idc = protocol("plain"), protocol("idc", repeats=1)
    assert (plain.augment, plain.shift, plain.epochs, plain.milestones, plain.gamma) == ("shift", 4, 300, (0.5,), 0.1)
    assert (idc.epochs, idc.batch, idc.cutmix, idc.milestones, idc.gamma, idc.repeats) == (1000, 64, 0.5, (2 / 3, 5 / 6),
                                                                                             0.2, 1)
    assert "cutout" not in idc.dsa and protocol("paper").milestones == ()
    with pytest.raises(UDDError, match="unknown evaluation protocol"):
        protocol("fancy")
    monkeypatch.setattr(losses, "bf16_is_fast", lambda device_type: False)
    assert losses.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(losses, "bf16_is_fast", lambda device_type: True)
    assert losses.resolve_precision("auto", "cpu") == "bf16" and losses.resolve_precision("fp32", "cpu") == "fp32"
    import importlib

    ev = importlib.import_module("udd_fast.evaluate")  # the module; udd_fast.evaluate is also a function

    d = clustered_data()
    proto = EvalProtocol("plain", width=8, epochs=2, repeats=1, augment="shift", precision="auto")
    timed = ev.batch_seconds
    for bf16_s, chosen in ((1.0, "bf16"), (3.0, "fp32")):
        monkeypatch.setenv("UDD_FAST_CACHE", str(tmp_path / chosen))  # nothing remembered yet
        monkeypatch.setattr(ev, "batch_seconds", lambda *a: (timed(*a), {"fp32": 2.0, "bf16": bf16_s})[1])
        rng = torch.get_rng_state()
        assert ev.eval_precision(proto, d) == chosen
        assert torch.equal(torch.get_rng_state(), rng)  # the probe's network and batch leave no trace
        monkeypatch.setattr(ev, "batch_seconds", lambda *a: pytest.fail("timed again"))
        assert ev.eval_precision(proto, d) == chosen  # remembered
        assert ev.eval_precision(replace(proto, epochs=5), d) == chosen  # epochs do not change a batch's cost
        with pytest.raises(pytest.fail.Exception, match="timed again"):
            ev.eval_precision(replace(proto, width=16), d)  # another network: timed
    monkeypatch.setattr(losses, "bf16_is_fast", lambda device_type: False)
    assert ev.eval_precision(proto, d) == "fp32"  # without a bf16 hardware path, whatever was probed before
    monkeypatch.setattr(losses, "bf16_is_fast", lambda device_type: True)
    monkeypatch.setenv("UDD_FAST_CACHE", str(tmp_path / "again"))
    monkeypatch.setattr(ev, "batch_seconds", lambda *a: {"fp32": 2.0, "bf16": 1.0})
    r = evaluate_images(d.images, d.labels, d, proto, progress=False)
    assert r["precision"] == "bf16" and r["protocol"]["name"] == "plain"


def test_random_shift_moves_whole_images_with_black_fill():
    from udd_fast.augment import random_shift

    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8) + 0.1
    out = random_shift(x, 2)
    for a, b in zip(x, out):  # each output is its input shifted by at most 2 px, zeros where nothing moved in
        assert any(torch.equal(b[:, max(0, dy):8 + min(0, dy), max(0, dx):8 + min(0, dx)],
                               a[:, max(0, -dy):8 + min(0, -dy), max(0, -dx):8 + min(0, -dx)])
                   for dy in range(-2, 3) for dx in range(-2, 3))
    assert (out == 0).any() and (out == 0).sum() < x.numel() / 2
