import pytest
import torch

from udd_fast.errors import UDDError
from udd_fast.models import MODELS, ConvNet, build_model


def test_convnet3_layout():
    net = ConvNet(1, 10, 28)  # 28 px: padding 3 in the first conv, so the last map is 4x4
    maps = net.feature_maps(torch.rand(2, 1, 28, 28))
    assert [m.shape[-1] for m in maps] == [16, 8, 4] and maps[-1].shape[1] == 128
    assert net.classifier.in_features == 2048
    assert isinstance(net.blocks[0][1], torch.nn.GroupNorm) and net.blocks[0][1].num_groups == 128
    assert [m.shape[-1] for m in ConvNet(3, 10, 32, width=8).feature_maps(torch.rand(1, 3, 32, 32))] == [16, 8, 4]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_has_maps_embedding_and_logits(name):
    net = build_model(name, 3, 7, 32, width=8 if name != "resnet18" else None)
    x = torch.rand(2, 3, 32, 32)
    logits, emb = net(x, features=True)
    assert logits.shape == (2, 7) and emb.shape[0] == 2 and torch.equal(net(x), logits)
    assert all(m.dim() == 4 for m in net.feature_maps(x))


def test_resnetap10_large_images_use_the_7x7_stem_and_pool():
    net = build_model("resnetap10", 3, 10, 224, width=8)
    maps = net.feature_maps(torch.rand(1, 3, 224, 224))
    assert [m.shape[-1] for m in maps] == [56, 28, 14, 7]
    assert not any(isinstance(m, torch.nn.MaxPool2d) or getattr(m, "stride", (1, 1)) not in (1, (1, 1))
                   for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_unknown_model_and_too_small_images():
    with pytest.raises(UDDError, match="unknown model"):
        build_model("transformer", 3, 10, 32)
    with pytest.raises(UDDError, match="too small"):
        ConvNet(1, 10, 4, depth=3)
