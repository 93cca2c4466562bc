"""Datasets as tensor-resident real-image pools with per-class sampling and normalization stats.

``load_dataset(name, train)`` covers MNIST, Fashion-MNIST, SVHN, CIFAR-10/100 (through torchvision) and any
``ImageFolder``; :meth:`RealData.from_tensors` and :meth:`RealData.from_dataset` wrap a user's data.
Fashion-MNIST and MNIST are read straight from their IDX files when a local copy exists (e.g. the Debian
package ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from udd_fast.errors import UDDError

# name -> (torchvision class, channels, size, classes, mean, std, flip allowed)
DATASETS = {
    "mnist": ("MNIST", 1, 28, 10, (0.1307,), (0.3081,), False),
    "fashion-mnist": ("FashionMNIST", 1, 28, 10, (0.2861,), (0.3530,), True),
    "svhn": ("SVHN", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False),
    "cifar10": ("CIFAR10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), True),
    "cifar100": ("CIFAR100", 3, 32, 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), True),
}
IDX_DIRS = {"fashion-mnist": ["/usr/share/datasets/fashion-mnist"], "mnist": ["/usr/share/datasets/mnist"]}


def default_root() -> Path:
    return Path(os.environ.get("UDD_FAST_DATA", "data"))


@dataclass
class RealData:
    """Real images in pixel space ``[0, 1]`` (N, C, H, W), int64 labels, and the dataset's normalization."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = "custom"
    flip: bool = True
    num_classes: int = 0
    by_class: list[torch.Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self):
        x, y = self.images, self.labels
        if x.dim() != 4:
            raise UDDError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}; add a channel axis "
                           "with images.unsqueeze(1) for grayscale")
        if x.shape[1] != len(self.mean) or len(self.mean) != len(self.std):
            raise UDDError(f"images have {x.shape[1]} channel(s) but mean/std give {len(self.mean)}; pass "
                           "one mean and std per channel")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise UDDError(f"labels must be (N,) with N={x.shape[0]}, got shape {tuple(y.shape)}")
        if not torch.isfinite(x).all():
            raise UDDError("images contain NaN or Inf pixels; clean or drop those images first")
        self.labels = y.long()
        self.num_classes = self.num_classes or int(self.labels.max()) + 1
        self.by_class = [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]
        empty = [c for c, idx in enumerate(self.by_class) if len(idx) == 0]
        if empty:
            raise UDDError(f"class(es) {empty} have no samples; relabel classes to 0..K-1 without gaps")

    @classmethod
    def from_tensors(cls, images, labels, mean=None, std=None, name="custom", flip=True) -> "RealData":
        """Wrap user tensors (pixel space [0,1]); mean/std default to the per-channel statistics of ``images``."""
        images = torch.as_tensor(images)
        if images.dtype == torch.uint8:
            images = images.float() / 255
        images = images.float()
        if images.dim() == 4 and (mean is None or std is None):
            mean = tuple(images.mean(dim=(0, 2, 3)).tolist())
            std = tuple(images.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
        return cls(images, torch.as_tensor(labels), tuple(mean or ()), tuple(std or ()), name, flip)

    @classmethod
    def from_dataset(cls, dataset, mean=None, std=None, name="custom", flip=True) -> "RealData":
        """Materialise any map-style ``Dataset`` yielding ``(image tensor, label)`` pairs."""
        xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
        return cls.from_tensors(torch.stack([torch.as_tensor(x) for x in xs]), torch.tensor(ys), mean, std,
                                name, flip)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def class_batch(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random images of class ``c`` (without replacement when the class is large enough)."""
        idx = self.by_class[c]
        pick = torch.randperm(len(idx), generator=generator)[:n] if n <= len(idx) else \
            torch.randint(len(idx), (n,), generator=generator)
        return self.images[idx[pick]]

    def random_batch(self, n: int, generator: torch.Generator | None = None):
        pick = torch.randint(len(self.labels), (n,), generator=generator)
        return self.images[pick], self.labels[pick]

    def check_ipc(self, ipc: int, factor: int = 1) -> None:
        """Each class must hold the ``ipc * factor**2`` real images the synthetic set is initialised from."""
        smallest = min(len(i) for i in self.by_class)
        if ipc < 1 or ipc * factor ** 2 > smallest:
            need = f"ipc={ipc}" if factor == 1 else f"ipc={ipc} with factor {factor} ({ipc * factor ** 2} real images)"
            raise UDDError(f"{need} must be between 1 and the smallest class size ({smallest}); lower --ipc"
                           + ("" if factor == 1 else " or --factor"))

    def to(self, device) -> "RealData":
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        self.by_class = [i.to(device) for i in self.by_class]
        return self


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(dirs, prefix: str) -> tuple[Path, Path] | None:
    for d in dirs:
        for ext in (".gz", ""):
            imgs, labs = Path(d) / f"{prefix}-images-idx3-ubyte{ext}", Path(d) / f"{prefix}-labels-idx1-ubyte{ext}"
            if imgs.exists() and labs.exists():
                return imgs, labs
    return None


def load_dataset(name: str, train: bool = True, root: str | os.PathLike | None = None, size: int = 224,
                 download: bool = True) -> RealData:
    """Load a dataset by name (see :data:`DATASETS`) or ``imagefolder`` (``root`` = the class folders)."""
    root = Path(root) if root is not None else default_root()
    if name == "imagefolder":
        return _imagefolder(root, size)
    if name not in DATASETS:
        raise UDDError(f"unknown dataset {name!r}; choose one of {', '.join([*DATASETS, 'imagefolder'])}")
    tv_name, channels, _, classes, mean, std, flip = DATASETS[name]
    found = _find_idx([root / name, root, *IDX_DIRS.get(name, [])], "train" if train else "t10k") \
        if name in IDX_DIRS else None
    if found:
        images = torch.from_numpy(_read_idx(found[0]).copy()).unsqueeze(1)
        labels = torch.from_numpy(_read_idx(found[1]).astype(np.int64))
    else:
        images, labels = _torchvision(tv_name, root, train, download)
    return RealData(images.float() / 255, labels, mean, std, name, flip, classes)


def _torchvision(tv_name: str, root: Path, train: bool, download: bool):
    import torchvision

    cls = getattr(torchvision.datasets, tv_name)
    try:
        ds = cls(root, split="train" if train else "test", download=download) if tv_name == "SVHN" else \
            cls(root, train=train, download=download)
    except (RuntimeError, OSError) as e:
        raise UDDError(f"cannot load {tv_name} from {root} ({str(e).splitlines()[0]}); download it on a "
                       "networked machine or pass --data-root to a folder holding it") from None
    data = torch.as_tensor(np.asarray(ds.data))
    if data.dim() == 3:  # MNIST-style (N, H, W)
        data = data.unsqueeze(1)
    elif data.shape[-1] == 3:  # CIFAR (N, H, W, C)
        data = data.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.labels if tv_name == "SVHN" else ds.targets), dtype=torch.int64)
    return data.contiguous(), labels


def _imagefolder(root: Path, size: int) -> RealData:
    import torchvision
    from torchvision import transforms as T

    if not root.is_dir():
        raise UDDError(f"ImageFolder root {root} does not exist; pass --data-root DIR with one folder per class")
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor()])
    ds = torchvision.datasets.ImageFolder(str(root), transform=tf)
    data = RealData.from_dataset(ds, name="imagefolder")
    return RealData(data.images, data.labels, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagefolder",
                    True, len(ds.classes))
