"""All hyper-parameters in one dataclass, with named presets.

``paper`` follows the UDD paper where it speaks (N=12, M=2, P=8, tau=0.7, alpha=0.5, lr_img 0.005 halved at
60/80/90 %) and IDC's public code where it is silent (2000 x 100 iterations, real batch 64, l1 matching for the
grayscale sets and mse otherwise, the network trained on about 500 real images per inner step). ``cpu-quick``
fits a Fashion-MNIST distillation into about six minutes of two CPU cores (IPC=1 or 10);
:data:`CPU_QUICK_NOTES` lists how it differs from ``paper``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from udd_fast.errors import UDDError
from udd_fast.losses import PRECISIONS
from udd_fast.regions import RegionConfig

PRESETS = ("paper", "cpu-quick")


@dataclass(frozen=True)
class UDDConfig:
    """Every knob of a distillation run. ``regions.policy=None`` and ``cfc=False`` give IDC-style matching;
    ``net_on="synthetic"`` trains the inner network on the synthetic set instead (DC-style)."""

    ipc: int = 1
    factor: int = 1                       # multi-formation: each stored image holds factor**2 sub-images
    model: str = "convnet"
    width: int | None = 128
    depth: int = 3
    outer: int = 2000
    inner: int = 100
    lr_img: float = 5e-3                  # in normalized-image units, as the IDC/UDD papers state it
    mom_img: float = 0.5
    lr_decay: tuple[float, ...] = (0.6, 0.8, 0.9)   # fractions of `outer` where lr_img halves
    batch_real: int = 64
    metric: str = "mse"
    matched: str = "conv"
    dsa: str = "color_crop_cutout"
    regions: RegionConfig = field(default_factory=RegionConfig)
    cfc: bool = True
    lam: float = 0.01                     # weight of the CFC loss
    tau: float = 0.7
    alpha: float = 0.5
    net_on: str = "real"
    net_lr: float = 0.01
    net_batch: int = 128
    net_batches: int = 4                  # real mini-batches per inner step (IDC: 500 samples)
    cutmix: float = 0.5
    init: str = "real"                    # random "real" images, "herding"-selected real images, or "noise"
    step: str = "loop"                    # "loop": class by class (the reference); "batched": all classes in one vmap
    precision: str = "fp32"               # "bf16": network passes under bfloat16 autocast; S, grads and losses fp32
    seed: int = 0
    checkpoint_every: int = 10            # outer iterations between checkpoints (0: only the final set)

    def __post_init__(self):
        if self.ipc < 1:
            raise UDDError(f"ipc must be >= 1, got {self.ipc}")
        if self.factor < 1:
            raise UDDError(f"factor must be >= 1, got {self.factor}")
        if self.net_on not in ("real", "synthetic"):
            raise UDDError(f"net_on must be 'real' or 'synthetic', got {self.net_on!r}")
        if self.step not in ("loop", "batched"):
            raise UDDError(f"step must be 'loop' or 'batched', got {self.step!r}")
        if self.precision not in PRECISIONS:
            raise UDDError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.init not in ("real", "herding", "noise"):
            raise UDDError(f"init must be 'real', 'herding' or 'noise', got {self.init!r}")

    def replace(self, **changes) -> "UDDConfig":
        """A copy with ``changes``; ``regions`` may be given as a dict of RegionConfig fields to change."""
        if isinstance(changes.get("regions"), dict):
            changes["regions"] = dataclasses.replace(self.regions, **changes["regions"])
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "UDDConfig":
        d = json.loads(text)
        d["regions"] = RegionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["regions"].items()})
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


CPU_QUICK_NOTES = (
    "cpu-quick differs from paper in: 4 x 30 iterations at IPC=1 instead of 2000 x 100, and 2 x max(6, 60 / IPC) "
    "above (one step costs about IPC times more; lr_img still halved at 60/80/90 %); a width-64 ConvNet-3 for "
    "distillation (evaluation stays width 128); 2 real mini-batches of 128 per network update instead of about 4; multi-formation factor 2 (each stored image holds 4 "
    "sub-images, decoded for training: 4 training images per stored image at the same pixel budget); "
    "herding-selected real images as the initialisation instead of random ones."
)


def preset(name: str, dataset: str, ipc: int) -> UDDConfig:
    """The named preset for ``dataset`` at ``ipc`` images per class."""
    if name not in PRESETS:
        raise UDDError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    grayscale = dataset in ("mnist", "fashion-mnist")
    paper = UDDConfig(ipc=ipc, metric="l1" if grayscale else "mse", step="batched", precision="bf16",
                      net_batches=16 if dataset in ("cifar10", "cifar100") else 4)
    if name == "paper":
        return paper
    outer, inner = (4, 30) if ipc == 1 else (2, max(6, 60 // ipc))
    return paper.replace(outer=outer, inner=inner, width=64, net_batches=2, factor=2, init="herding", lr_img=2e-4,
                         step="loop", precision="fp32")
