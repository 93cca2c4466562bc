import pytest

from udd_fast import RegionConfig, UDDConfig, preset
from udd_fast.errors import UDDError


def test_presets_follow_idc_code_and_the_paper():
    """idc: IDC's reproduce settings and tune_lr_img; paper: UDD's stated settings on that step; cpu-quick: its
    budget."""
    idc = preset("idc", "fashion-mnist", 1)
    assert idc.lr_img == pytest.approx(1e-4 * 1 / 10 * (28 / 32) ** 2)  # 7.656e-6 per pixel, per class step
    assert (idc.metric, idc.factor, idc.outer, idc.inner, idc.init, idc.lr_decay) == ("l1", 2, 2000, 100, "first", ())
    assert (idc.net_batch, idc.net_batches, idc.mom_img, idc.regions.policy, idc.cfc) == (64, 8, 0.5, None, False)
    assert preset("idc", "mnist", 10).lr_img == pytest.approx(1e-4)  # MNIST's base size is 28
    cifar = preset("idc", "cifar10", 50)
    assert (cifar.metric, cifar.lr_img, cifar.net_batches) == ("mse", pytest.approx(5e-3 * 5), 32)
    assert preset("idc", "imagefolder", 10, size=224, num_classes=100).lr_img == pytest.approx(1e-3)
    # a folder of small natural images takes IDC's CIFAR rule, not the 224 px ImageNet rule scaled down
    small = preset("idc", "imagefolder", 1, size=32, num_classes=10)
    assert (small.metric, small.lr_img, small.net_batches) == ("mse", pytest.approx(5e-4), 32)
    assert (small.metric, small.lr_img) == (cifar.metric, preset("idc", "cifar10", 1).lr_img)
    large = preset("idc", "imagefolder", 10, size=128, num_classes=10)
    assert (large.metric, large.lr_img, large.net_batches) == ("l1", pytest.approx(3e-3 * (128 / 224) ** 2), 8)
    paper = preset("paper", "cifar10", 10)
    assert (paper.regions.policy, paper.regions.p, paper.regions.m, paper.lam, paper.lr_decay) == (
        "jitter", 8, 2, 1.0, (0.6, 0.8, 0.9))
    assert (paper.outer, paper.inner, paper.lr_img, paper.regions.crop_share) == (2000, 100, 5e-3, None)
    steps = {ipc: (preset("cpu-quick", "fashion-mnist", ipc).outer, preset("cpu-quick", "fashion-mnist", ipc).inner)
             for ipc in (1, 10, 50)}
    assert steps == {1: (3, 100), 10: (2, 50), 50: (2, 50)}
    quick = preset("cpu-quick", "fashion-mnist", 1)
    assert quick.lr_img == pytest.approx(3 * idc.lr_img) and quick.regions.crop_share == 0.2 and quick.width == 64
    assert (quick.step, quick.precision, paper.precision, idc.precision) == ("loop", "auto", "auto", "fp32")
    # cpu-hour is cpu-quick run longer: at IPC=1 the same run continued (reproduce's 1,000-step rows)
    for ipc, (outer, inner) in ((1, (10, 100)), (10, (4, 50))):
        hour = preset("cpu-hour", "cifar10", ipc)
        assert (hour.outer, hour.inner) == (outer, inner)
        assert hour == preset("cpu-quick", "cifar10", ipc).replace(outer=outer, inner=inner)


@pytest.mark.parametrize("changes, message", [
    (dict(net_on="imaginary"), "net_on"), (dict(lr_img=-1e-4), "lr_img must be > 0"), (dict(lr_img=0), "lr_img"),
    (dict(mom_img=1.0), "mom_img"), (dict(outer=-1), "outer must be >= 0"), (dict(inner=0), "inner >= 1"),
    (dict(ipc=0), "ipc must be >= 1"), (dict(factor=0), "factor must be >= 1"), (dict(init="zeros"), "init must be"),
    (dict(step="fused"), "step must be"), (dict(precision="fp8"), "precision must be")])
def test_bad_settings_give_one_line_errors(changes, message):
    with pytest.raises(UDDError, match=message):
        UDDConfig(**changes)


def test_bad_region_settings_and_presets_give_one_line_errors():
    with pytest.raises(UDDError, match="unknown preset"):
        preset("fast-please", "fashion-mnist", 1)
    with pytest.raises(UDDError, match="crop_share"):
        RegionConfig(crop_share=1.0)
    with pytest.raises(UDDError, match="P=13"):
        RegionConfig(p=13)
    with pytest.raises(UDDError, match="unknown policy"):
        RegionConfig(policy="saliency")
    with pytest.raises(UDDError, match="M >= 1"):
        RegionConfig(m=0)
    with pytest.raises(UDDError, match="set crop_share"):
        RegionConfig(crops_on_top=True)
    with pytest.raises(UDDError, match="crop_draw must be 'parent' or 'own'"):
        RegionConfig(crop_draw="sibling")
    for share in (0, 1.5):
        with pytest.raises(UDDError, match="crop_sample is the share"):
            RegionConfig(crop_sample=share)


def test_settings_survive_json():
    cfg = preset("paper", "cifar10", 10).replace(regions={"p": 3})
    assert UDDConfig.from_json(cfg.to_json()) == cfg and cfg.regions.p == 3
