"""All hyper-parameters in one dataclass, with named presets.

``idc`` is IDC's condensation (Kim et al. 2022) as its public code runs it (commit ceac95a: the loop,
``misc/reproduce.py``, ``argument.py``), on this library: gradient matching of conv weights, per-class image
steps, a fresh network every outer iteration trained on 500 real images per inner step, multi-formation
factor 2, no lr schedule. ``paper`` is UDD on top of it: the UDD paper where it speaks (jitter policy, N=12,
M=2, P=8, tau 0.7, alpha 0.5, the CFC loss, lr_img halved at 60/80/90 % of 2000 outer iterations), IDC's code
where it is silent (step sizes, distances, network schedule). ``cpu-quick`` is the main job's budget on two
CPU cores; :data:`CPU_QUICK_NOTES` says how it differs from ``paper``.

**Image learning rate.** S lives in pixel space ``[0, 1]`` and ``lr_img`` is in pixel units, as in IDC's code
(it normalizes inside the augmentation). It is the lr of IDC's per-class SGD steps (:mod:`udd_fast.image_step`),
so IDC's values carry over unchanged: :func:`idc_lr_img` is IDC's ``tune_lr_img``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace

from udd_fast.data import DATASETS
from udd_fast.errors import UDDError
from udd_fast.losses import PRECISIONS
from udd_fast.regions import RegionConfig

PRESETS = ("idc", "paper", "cpu-quick", "cpu-hour")
INITS = ("first", "real", "herding", "noise")


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
    lr_img: float = 1e-4                  # pixel units, per class step (image_step.ClassSGD); see idc_lr_img
    mom_img: float = 0.5
    lr_decay: tuple[float, ...] = ()      # fractions of `outer` where lr_img halves (paper: 0.6, 0.8, 0.9)
    batch_real: int = 64
    metric: str = "l1"
    matched: str = "conv"
    dsa: str = "color_crop_cutout"
    regions: RegionConfig = field(default_factory=RegionConfig)
    cfc: bool = True
    lam: float = 1.0                      # weight of the CFC loss (Eq. 10: none, i.e. 1)
    tau: float = 0.7
    alpha: float = 0.5
    net_on: str = "real"
    net_lr: float = 0.01
    net_batch: int = 64
    net_batches: int = 8                  # real mini-batches per inner step (IDC: 500 samples, 2,000 for CIFAR)
    net_update: str = "split"             # under torchrun: each process takes its share of every network-update
                                          # batch and the gradients are summed ("split"), or each repeats it all
    cutmix: float = 0.5                   # CutMix probability of a network-update batch (cutout is then dropped)
    init: str = "first"                   # real images: each class's "first" in dataset order (IDC), "real" (random),
                                          # "herding"-selected; or "noise"
    step: str = "loop"                    # "loop": class by class (the reference); "batched": all classes in one vmap
    precision: str = "fp32"               # "bf16": network passes under bfloat16 autocast; S, grads and losses fp32;
                                          # "auto": the faster of the two, timed on the first step
    seed: int = 0
    checkpoint_every: int = 10            # outer iterations between checkpoints (0: only the final set)

    def __post_init__(self):
        if self.ipc < 1:
            raise UDDError(f"ipc must be >= 1, got {self.ipc}")
        if self.factor < 1:
            raise UDDError(f"factor must be >= 1, got {self.factor}")
        if self.net_on not in ("real", "synthetic"):
            raise UDDError(f"net_on must be 'real' or 'synthetic', got {self.net_on!r}")
        if self.net_update not in ("split", "repeat"):
            raise UDDError(f"net_update must be 'split' or 'repeat', got {self.net_update!r}")
        if self.step not in ("loop", "batched"):
            raise UDDError(f"step must be 'loop' or 'batched', got {self.step!r}")
        if self.precision not in (*PRECISIONS, "auto"):
            raise UDDError(f"precision must be one of {', '.join(PRECISIONS)} or auto, got {self.precision!r}")
        if self.init not in INITS:
            raise UDDError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if not (self.lr_img > 0 and 0 <= self.mom_img < 1):
            raise UDDError(f"lr_img must be > 0 and mom_img in [0, 1), got {self.lr_img} and {self.mom_img}")
        if self.outer < 0 or self.inner < 1:
            raise UDDError(f"outer must be >= 0 and inner >= 1, got {self.outer} and {self.inner}")

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


#: Image folders of at most this many pixels are small natural images and take IDC's CIFAR rule (mse, base
#: lr_img 5e-3 at 32 px, 2,000 real images per network update); larger ones are ImageNet subsets (IDC's rule for
#: them: l1, base 3e-3 or 1e-3 at 224 px, 500 images).
SMALL_FOLDER = 64


def idc_rule(dataset: str, size: int | None = None) -> str:
    """Which of IDC's per-dataset settings a dataset takes: ``"digits"`` (MNIST, Fashion-MNIST), ``"cifar"``
    (CIFAR-10/100, SVHN, and image folders of at most :data:`SMALL_FOLDER` px) or ``"imagenet"`` (larger
    folders)."""
    if dataset in ("mnist", "fashion-mnist"):
        return "digits"
    if dataset in DATASETS:
        return "cifar"
    return "cifar" if (size or 224) <= SMALL_FOLDER else "imagenet"


def idc_lr_img(dataset: str, ipc: int, size: int | None = None, num_classes: int | None = None) -> float:
    """IDC's image learning rate in pixel units (``misc/reproduce.py`` base values, ``argument.tune_lr_img``
    scaling): base 5e-3 for the mse datasets (CIFAR, SVHN, small image folders), 1e-4 for MNIST and
    Fashion-MNIST, 3e-3 (10 classes) or 1e-3 (100) for ImageNet subsets; times ``ipc / 10`` and
    ``(size / base_size)**2``, where the base size is 224 for ImageNet, 28 for MNIST and 32 for every other set
    (Fashion-MNIST too: 28 px gives ``(28/32)**2``)."""
    size = size or DATASETS.get(dataset, (None, None, 224))[2]
    rule = idc_rule(dataset, size)
    if rule == "digits":
        base = 1e-4
    elif rule == "cifar":
        base = 5e-3
    else:
        base = 3e-3 if (num_classes or 10) <= 10 else 1e-3
    base_size = 28 if dataset == "mnist" else 224 if rule == "imagenet" else 32
    return base * ipc / 10 * (size / base_size) ** 2


def idc_metric(dataset: str, size: int | None = None) -> str:
    """IDC's matching distance: mse for CIFAR, SVHN and small image folders; l1 for MNIST, Fashion-MNIST and
    ImageNet subsets."""
    return "mse" if idc_rule(dataset, size) == "cifar" else "l1"


#: cpu-quick's image steps, in multiples of IDC's lr_img: at a few hundred steps instead of 200,000 a larger
#: step moves S further in the useful direction (Fashion-MNIST IPC=1, IDC-style, 300 steps at width 64, plain
#: protocol: 70.04 at 1x, 71.74 at 3x).
CPU_QUICK_LR = 3.0
#: cpu-quick's weight of the crops in the synthetic batch (RegionConfig.crop_share); the paper's plain batch gives
#: them P / (P + 1) = 0.89, which costs 4 points on Fashion-MNIST at this budget (see the README's crop sweep).
CPU_QUICK_CROP_SHARE = 0.2

CPU_QUICK_NOTES = (
    "cpu-quick differs from paper in: 3 x 100 iterations at IPC=1 and 2 x 50 above, no lr_img decay, lr_img "
    f"{CPU_QUICK_LR:g}x IDC's; a width-64 ConvNet-3 for distillation (evaluation stays width 128); the crops carry "
    f"{CPU_QUICK_CROP_SHARE:g} of each image's weight in the synthetic batch instead of P/(P+1); the per-class loop, "
    "faster than the batched step on CPU."
)


#: (outer, inner) of the CPU presets, (above IPC=1, at IPC=1). cpu-hour is cpu-quick run longer: about an hour of
#: distillation on 2 cores (CIFAR-10 IPC=1 on an AVX2 EPYC in fp32: 4.1 s an IDC-style step, 5.1 s a UDD step;
#: IPC=10: 5 s and 20 s), and with cpu-quick's lr_img not decaying, its IPC=1 run is cpu-quick's continued
#: (reproduce's 1,000-step budget rows are the same runs).
CPU_ITERATIONS = {"cpu-quick": ((2, 50), (3, 100)), "cpu-hour": ((4, 50), (10, 100))}


def preset(name: str, dataset: str, ipc: int, size: int | None = None, num_classes: int | None = None) -> UDDConfig:
    """The named preset for ``dataset`` at ``ipc`` images per class (``size`` and ``num_classes`` matter for
    image folders only)."""
    if name not in PRESETS:
        raise UDDError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    folder = dataset not in DATASETS
    idc = UDDConfig(ipc=ipc, factor=2, outer=500 if folder else 2000, inner=100,
                    lr_img=idc_lr_img(dataset, ipc, size, num_classes), metric=idc_metric(dataset, size),
                    net_batches=32 if idc_rule(dataset, size) == "cifar" and dataset != "svhn" else 8,
                    regions=RegionConfig(policy=None), cfc=False)
    if name == "idc":
        return idc
    paper = idc.replace(regions=RegionConfig(policy="jitter"), cfc=True, lr_decay=(0.6, 0.8, 0.9),
                        step="batched", precision="auto")
    if name == "paper":
        return paper
    outer, inner = CPU_ITERATIONS[name][ipc == 1]
    return paper.replace(outer=outer, inner=inner, width=64, lr_decay=(), lr_img=paper.lr_img * CPU_QUICK_LR,
                         regions=replace(paper.regions, crop_share=CPU_QUICK_CROP_SHARE), step="loop")
