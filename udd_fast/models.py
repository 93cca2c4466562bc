"""Networks for distillation and evaluation.

Every model exposes ``feature_maps(x)`` (the list of block outputs, used by the activation and jitter
policies), ``embed(x)`` (penultimate features, used by the CFC loss) and ``forward(x, features=False)``
(logits, or logits and the embedding).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from udd_fast import ops
from udd_fast.errors import UDDError

MODELS = ("convnet", "resnetap10", "resnet18", "vgg11", "alexnet")


class InstanceNorm(nn.GroupNorm):
    """Instance norm with affine parameters, GroupNorm(C, C) (the DC/IDC ConvNet's 'instancenorm'), through
    :func:`udd_fast.ops.instance_norm` (on CPU wholly in bf16 under autocast); ``relu``: the ReLU that follows
    it in a block, taken in the same op so that its backward passes fold into the norm's kernels on CPU."""

    def __init__(self, c: int, relu: bool = False):
        super().__init__(c, c, affine=True)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.instance_norm(x, self.weight, self.bias, self.eps, self.relu)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")


class AvgPool(nn.AvgPool2d):
    """k x k average pooling, stride k, through :func:`udd_fast.ops.avg_pool` (on CPU, as one matrix product)."""

    def __init__(self, k: int):
        super().__init__(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.avg_pool(x, self.kernel_size)


class ConvNet(nn.Module):
    """ConvNet-D: D x [conv 3x3 -> instance norm -> ReLU -> avg-pool 2] -> linear (norm and ReLU one module).

    28 px inputs use padding 3 in the first conv, so a depth-3 net ends on a 4x4 map as at 32 px.
    """

    def __init__(self, channels: int, num_classes: int, size: int, width: int = 128, depth: int = 3):
        super().__init__()
        blocks, c, s = [], channels, size
        for d in range(depth):
            pad = 3 if (d == 0 and size == 28) else 1
            s = s + 2 * pad - 2
            if s < 2:
                raise UDDError(f"{size} px images are too small for a depth-{depth} ConvNet; use a smaller depth")
            blocks.append(nn.Sequential(nn.Conv2d(c, width, 3, padding=pad), InstanceNorm(width, relu=True),
                                        AvgPool(2)))
            c, s = width, s // 2
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(width * s * s, num_classes)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)

    def forward(self, x: torch.Tensor, features: bool = False):
        return _head(self, x, features)


def _head(model: nn.Module, x: torch.Tensor, features: bool):
    """Logits, or ``(logits, embedding)`` when ``features``: one forward pass serves matching and CFC."""
    emb = model.embed(x)
    logits = model.classifier(emb)
    return (logits, emb) if features else logits


class BasicBlockAp(nn.Module):
    """ResNet basic block whose stride is an average pool (IDC's ResNetAp), instance norm."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = InstanceNorm(cout, relu=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = InstanceNorm(cout)
        self.pool = AvgPool(2) if stride == 2 else nn.Identity()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), AvgPool(stride) if stride > 1
                                          else nn.Identity(), InstanceNorm(cout))

    def forward(self, x):
        out = self.norm1(self.conv1(x))
        out = self.pool(out)
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetAp(nn.Module):
    """ResNetAp-10: BasicBlocks [1, 1, 1, 1], width 64, strided convs replaced by average pooling.

    Images over 128 px get a 7x7 stride-1 stem followed by AvgPool(4), as in IDC's ImageNet models.
    """

    def __init__(self, channels: int, num_classes: int, size: int, width: int = 64):
        super().__init__()
        big = size > 128
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 7 if big else 3, padding=3 if big else 1, bias=False),
                                  InstanceNorm(width, relu=True), AvgPool(4) if big else nn.Identity())
        widths = [width, width * 2, width * 4, width * 8]
        layers, cin = [], width
        for i, w in enumerate(widths):
            layers.append(BasicBlockAp(cin, w, 1 if i == 0 else 2))
            cin = w
        self.layers = nn.ModuleList(layers)
        self.classifier = nn.Linear(cin, num_classes)

    def feature_maps(self, x):
        x = self.stem(x)
        maps = []
        for layer in self.layers:
            x = layer(x)
            maps.append(x)
        return maps

    def embed(self, x):
        return F.adaptive_avg_pool2d(self.feature_maps(x)[-1], 1).flatten(1)

    def forward(self, x, features: bool = False):
        return _head(self, x, features)


class _Wrapped(nn.Module):
    """A trunk (``features``) + global pool + linear head, for cross-architecture evaluation.

    ``feature_maps`` are the outputs of the pooling layers, or of every child of the trunk when ``stages``.
    """

    def __init__(self, features: nn.Sequential, out_channels: int, num_classes: int, stages: bool = False):
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(out_channels, num_classes)
        self.stages = stages

    def feature_maps(self, x):
        maps = []
        for layer in self.features:
            x = layer(x)
            if self.stages or isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
                maps.append(x)
        return maps

    def embed(self, x):
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x, features: bool = False):
        return _head(self, x, features)


def vgg11(channels: int, num_classes: int, width: int = 64) -> nn.Module:
    """VGG11 with instance norm (as in the DC benchmark), global average pooled."""
    cfg = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]
    layers, c = [], channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(c, width * v, 3, padding=1), InstanceNorm(width * v, relu=True)]
            c = width * v
    return _Wrapped(nn.Sequential(*layers), c, num_classes)


def alexnet(channels: int, num_classes: int, width: int = 64) -> nn.Module:
    """The small-image AlexNet of the DC benchmark (5 convs, 3 max-pools), global average pooled."""
    w = width
    layers = [nn.Conv2d(channels, w, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
              nn.Conv2d(w, 3 * w, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
              nn.Conv2d(3 * w, 6 * w, 3, padding=1), nn.ReLU(),
              nn.Conv2d(6 * w, 4 * w, 3, padding=1), nn.ReLU(),
              nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return _Wrapped(nn.Sequential(*layers), 4 * w, num_classes)


def resnet18(channels: int, num_classes: int, size: int) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stem for small images; ``feature_maps`` are its four stages."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(num_classes=num_classes)
    if size <= 64:
        net.conv1 = nn.Conv2d(channels, 64, 3, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    trunk = nn.Sequential(nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),
                          net.layer2, net.layer3, net.layer4)
    return _Wrapped(trunk, 512, num_classes, stages=True)


def build_model(name: str, channels: int, num_classes: int, size: int, width: int | None = None,
                depth: int = 3) -> nn.Module:
    """Build a model by name (one of :data:`MODELS`); ``width`` defaults to each model's standard width."""
    if name == "convnet":
        return ConvNet(channels, num_classes, size, width or 128, depth)
    if name == "resnetap10":
        return ResNetAp(channels, num_classes, size, width or 64)
    if name == "resnet18":
        return resnet18(channels, num_classes, size)
    if name == "vgg11":
        return vgg11(channels, num_classes, width or 64)
    if name == "alexnet":
        return alexnet(channels, num_classes, width or 64)
    raise UDDError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


#: SGD momentum and weight decay of every network this library trains on images (the network update inside
#: distillation, the real-data network, the evaluation protocols' defaults): DC's, IDC's and the paper's choice.
NET_MOMENTUM = 0.9
NET_WEIGHT_DECAY = 5e-4


def network_optimizer(net: nn.Module, lr: float, momentum: float = NET_MOMENTUM,
                      weight_decay: float = NET_WEIGHT_DECAY) -> torch.optim.SGD:
    """SGD over every parameter of ``net``."""
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
