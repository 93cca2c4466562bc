import json

import pytest
import torch

from udd_fast import Distiller, RealData, RegionConfig, SyntheticSet, UDDConfig, preset
from udd_fast.errors import UDDError


def tiny_data(classes=3, per_class=8, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(classes * per_class, 1, size, size, generator=g)
    for c in range(classes):  # give every class its own bright quadrant
        x[c * per_class:(c + 1) * per_class, :, (c % 2) * 6:(c % 2) * 6 + 6, (c // 2) * 6:(c // 2) * 6 + 6] += 1
    return RealData.from_tensors(x.clamp(0, 1), torch.arange(classes).repeat_interleave(per_class))


def fixed_net_config(**kw):
    """The network is never trained and the real batch is the whole class, undistorted: the matching
    objective is then the same function of S at every step, so its value must fall."""
    base = dict(ipc=1, width=8, outer=1, inner=25, metric="mse", lr_img=30.0, dsa="none", net_batches=0,
                batch_real=8, cfc=False, regions=RegionConfig(policy="activation", p=4))
    base.update(kw)
    return UDDConfig(**base)


@pytest.mark.parametrize("policy", [None, "activation", "vote"])
def test_short_distillation_decreases_matching_loss(policy):
    d = Distiller(tiny_data(), fixed_net_config(regions=RegionConfig(policy=policy, p=4)))
    syn = d.run(progress=False)
    first, last = d.history[0]["match"], d.history[-1]["match"]
    assert last < 0.5 * first, (first, last)
    assert syn.images.shape == (3, 1, 12, 12) and syn.images.min() >= 0 and syn.images.max() <= 1


def test_full_loop_with_cfc_factor_and_checkpoint(tmp_path):
    cfg = fixed_net_config(outer=2, inner=2, net_batches=1, net_batch=8, cfc=True, factor=2, dsa="color_crop_cutout",
                           checkpoint_every=1)
    syn = Distiller(tiny_data(), cfg, out_dir=tmp_path).run(progress=False)
    assert (tmp_path / "checkpoint.safetensors").exists() and (tmp_path / "synset.safetensors").exists()
    loaded = SyntheticSet.load(tmp_path / "synset.safetensors")
    assert loaded.factor == 2 and loaded.training_set()[0].shape == (12, 1, 12, 12)
    assert UDDConfig.from_json(json.dumps(loaded.config)) == cfg
    assert torch.equal(loaded.images, syn.images)


def test_same_seed_same_result():
    cfg = fixed_net_config(inner=3, net_batches=1, net_batch=8, cfc=True, dsa="color_crop_cutout",
                           regions=RegionConfig(policy="jitter", p=4))
    a = Distiller(tiny_data(), cfg).run(progress=False)
    b = Distiller(tiny_data(), cfg).run(progress=False)
    assert torch.equal(a.images, b.images)


def test_configuration_errors():
    with pytest.raises(UDDError, match="ipc=9"):
        Distiller(tiny_data(), fixed_net_config(ipc=9))
    with pytest.raises(UDDError, match="ipc=1 with factor 2"):  # 4 real images per stored image
        Distiller(tiny_data(per_class=3), fixed_net_config(factor=2))
    with pytest.raises(UDDError, match="too small"):
        Distiller(tiny_data(size=4), fixed_net_config())
    with pytest.raises(UDDError, match="unknown preset"):
        preset("fast-please", "fashion-mnist", 1)
    with pytest.raises(UDDError, match="net_on"):
        UDDConfig(net_on="imaginary")
