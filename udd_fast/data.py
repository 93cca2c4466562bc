"""Datasets as per-class real-image samplers with normalization stats: tensor-resident or streamed from disk.

``load_dataset(name, train)`` covers MNIST, Fashion-MNIST, SVHN, CIFAR-10/100 (through torchvision) and any
``ImageFolder``; :meth:`RealData.from_tensors` and :meth:`RealData.from_dataset` wrap a user's data.
Fashion-MNIST and MNIST are read straight from their IDX files when a local copy exists (e.g. the Debian
package ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``).

The samplers share one duck-typed interface (``name, mean, std, flip, num_classes, by_class, channels, size,
device, normalize, class_batch, random_batch, check_ipc, to``), which is all the distiller and the coreset
baselines use:

- :class:`RealData` holds every image in one float tensor (small datasets);
- :class:`FolderData` keeps only the file list of an ``ImageFolder`` and decodes the images a batch asks for
  on each call (e.g. 224 px ImageNet subsets);
- :class:`udd_fast.cache.CachedData` reads an ImageFolder decoded once by :func:`udd_fast.cache.prepare` into a
  memory-mapped uint8 array, or from device memory when it fits there.

All use the same index draws, so a seeded generator gives the same pixels from each.

Class subsets of an ``ImageFolder`` (``classes=``) are a list of folder names, a text file with one name per
line, or the name of a list shipped in ``udd_fast/subsets/`` (:data:`SUBSETS`, e.g. ``"imagenet10"``, the
10 ImageNet classes IDC uses).
"""
from __future__ import annotations

import gzip
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from udd_fast import unreadable
from udd_fast.errors import UDDError
from udd_fast.unreadable import UnreadableImage, reason_of

# name -> (torchvision class, channels, size, classes, mean, std, flip allowed)
DATASETS = {
    "mnist": ("MNIST", 1, 28, 10, (0.1307,), (0.3081,), False),
    "fashion-mnist": ("FashionMNIST", 1, 28, 10, (0.2861,), (0.3530,), True),
    "svhn": ("SVHN", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False),
    "cifar10": ("CIFAR10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), True),
    "cifar100": ("CIFAR100", 3, 32, 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762), True),
}
IDX_DIRS = {"fashion-mnist": ["/usr/share/datasets/fashion-mnist"], "mnist": ["/usr/share/datasets/mnist"]}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SUBSET_DIR = Path(__file__).parent / "subsets"
#: names of the class lists shipped in ``udd_fast/subsets/`` (``classes="imagenet10"``)
SUBSETS = tuple(sorted(f.stem for f in SUBSET_DIR.glob("*.txt")))


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
    flip: bool = False                    # whether a horizontal flip keeps the class (see from_tensors)
    num_classes: int = 0
    by_class: list[torch.Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self):
        x, y = self.images, self.labels
        if x.dim() != 4:
            raise UDDError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}; add a channel axis "
                           "with images.unsqueeze(1) for grayscale")
        if x.shape[0] == 0:
            raise UDDError("the dataset has no images; check the path or the class list")
        if x.shape[1] != len(self.mean) or len(self.mean) != len(self.std):
            raise UDDError(f"images have {x.shape[1]} channel(s) but mean/std give {len(self.mean)}; pass "
                           "one mean and std per channel")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise UDDError(f"labels must be (N,) with N={x.shape[0]}, got shape {tuple(y.shape)}")
        if not torch.isfinite(x).all():
            raise UDDError("images contain NaN or Inf pixels; clean or drop those images first")
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > 1:
            raise UDDError(f"pixels must lie in [0, 1], got {lo:.4g} .. {hi:.4g}; divide 0..255 values by 255 and "
                           "pass images before normalization (mean/std are applied inside)")
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise UDDError("labels must be whole class indices 0..K-1, got fractional values")
        if (y < 0).any():
            raise UDDError(f"labels must be class indices 0..K-1, got {int(y.min())}; relabel the classes")
        self.labels = y.long()
        self.num_classes = self.num_classes or int(self.labels.max()) + 1
        self.by_class = [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]
        empty = [c for c, idx in enumerate(self.by_class) if len(idx) == 0]
        if empty:
            raise UDDError(f"class(es) {empty} have no samples; relabel classes to 0..K-1 without gaps")

    @classmethod
    def from_tensors(cls, images, labels, mean=None, std=None, name="custom", flip=False) -> "RealData":
        """Wrap user tensors (pixel space [0, 1], or uint8 0..255); mean/std default to the per-channel statistics
        of ``images``. ``flip``: whether augmentation may mirror images horizontally, i.e. a mirrored image keeps
        its class (photos, clothing: True). Off by default: for digits or text a flip changes the meaning."""
        images = torch.as_tensor(images)
        if images.dtype == torch.uint8:
            images = images.float() / 255
        images = images.float()
        if images.dim() == 4 and len(images) and (mean is None or std is None):
            mean = tuple(images.mean(dim=(0, 2, 3)).tolist())
            std = tuple(images.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
        return cls(images, torch.as_tensor(labels), tuple(mean or ()), tuple(std or ()), name, flip)

    @classmethod
    def from_dataset(cls, dataset, mean=None, std=None, name="custom", flip=False) -> "RealData":
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
        return _normalize(x, self.mean, self.std)

    @property
    def device(self) -> torch.device:
        """Where the images live and batches are returned."""
        return self.images.device

    def class_batch(self, c: int, n: int, generator: torch.Generator | None = None, first: bool = False) -> torch.Tensor:
        """``n`` random images of class ``c`` (without replacement when the class is large enough); with
        ``first``, its first ``n`` images in dataset order instead."""
        idx = self.by_class[c]
        return self.images[idx[_pick(len(idx), n, generator, first)]]

    def random_batch(self, n: int, generator: torch.Generator | None = None):
        """``n`` images drawn uniformly with replacement from the whole set, and their labels."""
        pick = torch.randint(len(self.labels), (n,), generator=generator)
        return self.images[pick], self.labels[pick]

    def check_ipc(self, ipc: int, factor: int = 1) -> None:
        """Each class must hold the ``ipc * factor**2`` real images the synthetic set is initialised from."""
        _check_ipc(self.by_class, ipc, factor)

    def to(self, device) -> "RealData":
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        self.by_class = [i.to(device) for i in self.by_class]
        return self


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def _pick(available: int, n: int, generator: torch.Generator | None, first: bool = False) -> torch.Tensor:
    """Positions of ``n`` draws among ``available`` items: a random permutation's first ``n`` (no
    replacement) when there are enough, else ``n`` uniform draws with replacement; ``first``: ``0 .. n-1``."""
    if first:
        return torch.arange(min(n, available))
    return torch.randperm(available, generator=generator)[:n] if n <= available else \
        torch.randint(available, (n,), generator=generator)


def _check_ipc(by_class, ipc: int, factor: int, names: list[str] | None = None) -> None:
    smallest = min(range(len(by_class)), key=lambda c: len(by_class[c]))
    size = len(by_class[smallest])
    if ipc < 1 or ipc * factor ** 2 > size:
        need = f"ipc={ipc}" if factor == 1 else f"ipc={ipc} with factor {factor} ({ipc * factor ** 2} real images)"
        which = f" (class {names[smallest]!r}, readable images only)" if names else ""
        raise UDDError(f"{need} must be between 1 and the smallest class size ({size}{which}); lower --ipc"
                       + ("" if factor == 1 else " or --factor"))


class StoredImages(ABC):
    """The sampler interface over images held as uint8 somewhere outside one float tensor, read ``load(index)`` at
    a time: :class:`FolderData` (files decoded per batch) and :class:`udd_fast.cache.CachedData` (a decoded,
    memory-mapped cache). Subclasses set ``classes, labels, image_size, mean, std, name, flip`` and define
    :meth:`read` (uint8 images at dataset positions, on the CPU or on :attr:`device`).

    The draws are :class:`RealData`'s (the same ``_pick`` on the same ``by_class``), and uint8 / 255 is exactly
    torchvision's ``ToTensor``, so a seeded generator gives the same pixels from every sampler."""

    device = torch.device("cpu")

    def _index(self) -> None:
        self.num_classes = len(self.classes)
        self.by_class = [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return self.image_size

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return _normalize(x, self.mean, self.std)

    @abstractmethod
    def read(self, index: list[int]) -> torch.Tensor:
        """uint8 images (n, 3, size, size) at dataset positions ``index``, on the CPU or on :attr:`device`."""

    def load(self, index) -> torch.Tensor:
        """The images at dataset positions ``index`` (in that order) on :attr:`device`, in pixel space [0, 1].
        They travel as uint8 (a quarter of the bytes) through pinned memory and become floats on the device."""
        index = torch.as_tensor(index, dtype=torch.int64).flatten().tolist()
        if not index:
            return torch.empty(0, 3, self.size, self.size, device=self.device)
        batch = self.read(index)
        if batch.device != self.device:
            batch = self._upload(batch) if self.device.type == "cuda" else batch.to(self.device)
        return batch.float().div_(255)

    def _upload(self, batch: torch.Tensor) -> torch.Tensor:
        """Copy a host batch to the GPU from pinned memory on a side stream: the copy overlaps the work already
        queued on the compute stream, and the host goes on (to the next class's batch) without waiting."""
        if getattr(self, "_stream", None) is None:
            self._stream = torch.cuda.Stream(self.device)
        compute = torch.cuda.current_stream(self.device)
        # no wait for the compute stream: the destination comes from the side stream's own memory pool
        with torch.cuda.stream(self._stream):
            out = batch.pin_memory().to(self.device, non_blocking=True)
        compute.wait_stream(self._stream)
        out.record_stream(compute)
        return out

    def class_batch(self, c: int, n: int, generator: torch.Generator | None = None, first: bool = False) -> torch.Tensor:
        """``n`` random images of class ``c`` (without replacement when the class is large enough), or its
        first ``n``; the same draw as :meth:`RealData.class_batch`."""
        idx = self.by_class[c]
        return self.load(idx[_pick(len(idx), n, generator, first)])

    def random_batch(self, n: int, generator: torch.Generator | None = None):
        """``n`` images drawn uniformly with replacement from the whole set, and their labels."""
        pick = torch.randint(len(self.labels), (n,), generator=generator)
        return self.load(pick), self.labels[pick].to(self.device)

    def check_ipc(self, ipc: int, factor: int = 1) -> None:
        """Each class must hold the ``ipc * factor**2`` real images the synthetic set is initialised from."""
        _check_ipc(self.by_class, ipc, factor, self.classes)

    def to(self, device) -> "StoredImages":
        """Return batches on ``device`` from now on (the index stays on the CPU)."""
        self.device = torch.device(device)
        return self

    def materialize(self) -> RealData:
        """Every image in an in-memory :class:`RealData` (same order, labels and statistics)."""
        images = self.load(torch.arange(len(self.labels)))
        return RealData(images, self.labels.to(images.device), self.mean, self.std, self.name, self.flip,
                        self.num_classes)


class FolderData(StoredImages):
    """Real images streamed from an ``ImageFolder`` (``root/<class>/<image>``): only the file list is held;
    each batch is decoded from disk when asked for, resized (shorter side) and center-cropped to ``size``
    (:func:`decode_image`), in pixel space ``[0, 1]``, normalized with ImageNet's mean and std.

    Same interface and index draws as :class:`RealData` (``class_batch``, ``random_batch``, ``check_ipc``,
    ``to``, ...): with the same ``torch.Generator`` state it returns the same pixels as the in-memory copy.
    Decoding runs in a persistent pool of ``num_workers`` threads (0: in the caller; Pillow releases the GIL
    while it decodes and resizes, and a pool of threads costs nothing to start for each small per-class batch,
    unlike ``DataLoader`` worker processes). Every batch is decoded again: for long runs decode once with
    :func:`udd_fast.cache.prepare` and sample from :class:`udd_fast.cache.CachedData`.
    ``classes``: see :func:`resolve_classes` (``None``: every class folder, sorted).

    ``scan`` (default): every file is decoded once when the folder is built (with a progress bar unless not
    ``progress``) and the unreadable ones are left out, reported in one line (:mod:`udd_fast.unreadable`); the
    result is kept in the user's cache directory, so the next run on the same files does not decode again
    (``rescan`` forces it). A folder with more than ``max_unreadable`` of its files unreadable, or a class with
    none readable, is refused.
    """

    def __init__(self, root: str | os.PathLike, size: int = 224, classes=None, num_workers: int | None = None,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 name: str = "imagefolder", flip: bool = True, scan: bool = True,
                 max_unreadable: float = unreadable.MAX_SHARE, rescan: bool = False, progress: bool = True):
        self.num_workers = _workers(num_workers)
        self.root, self.image_size = Path(root), _check_size(size)
        self.classes, files, labels = folder_listing(self.root, classes)
        # Files that cannot be decoded are found once, up front, and left out of the listing, so that every
        # draw comes from readable files and equals the draws of a cache built from the same folder.
        self.unreadable, self.unreadable_list = {}, None
        if scan:
            self.unreadable, self.unreadable_list = unreadable.find(
                self.root, files, lambda p: decode_image(p, 8), self.num_workers, rescan, progress)
            unreadable.check(self.unreadable, files, labels, self.classes, self.root, max_unreadable)
            unreadable.report(self.unreadable, len(files), self.unreadable_list)
            keep = [i for i, f in enumerate(files) if f not in self.unreadable]
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        self.files = files
        self.name, self.mean, self.std, self.flip = name, tuple(mean), tuple(std), flip
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self._index()
        self._pool = None

    def __repr__(self) -> str:
        return (f"FolderData(root={str(self.root)!r}, classes={self.num_classes}, images={len(self.labels)}, "
                f"size={self.size}, num_workers={self.num_workers}, device={self.device})")

    def decode(self, index, tolerant: bool = False) -> list[np.ndarray]:
        """The images at dataset positions ``index`` decoded to (3, size, size) uint8 arrays, in the pool. A file
        that cannot be decoded raises :class:`~udd_fast.unreadable.UnreadableImage`, or with ``tolerant`` stands
        in the list as that error."""
        paths = [self.root / self.files[i] for i in index]

        def one(path):
            try:
                return decode_image(path, self.size)
            except UnreadableImage as e:
                if tolerant:
                    return e
                raise

        if self.num_workers == 0:
            return [one(p) for p in paths]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="udd_fast-decode")
        return list(self._pool.map(one, paths))

    def read(self, index: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack(self.decode(index)))


def _workers(num_workers) -> int:
    if num_workers is None:
        return min(4, os.cpu_count() or 1)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise UDDError(f"num_workers must be an integer >= 0 (0 decodes in this process), got {num_workers!r}")
    return num_workers


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UDDError(f"size must be a positive integer (pixels), got {size!r}")
    return size


def decode_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """One image file as a (3, size, size) uint8 array: RGB, shorter side resized to ``size`` (bilinear, with
    antialiasing), center-cropped; torchvision's ``Resize``/``CenterCrop`` on its ``default_loader``'s image.

    Whatever Pillow opens is read: grayscale, CMYK, palette, a PNG named ``.jpg``. Two departures from
    torchvision's loader, both on purpose: 16-bit grayscale (Pillow's ``I;16`` and ``I`` modes) is scaled to 8
    bits (``convert("RGB")`` would clip it to white), and EXIF orientation is *not* applied, as torchvision does
    not apply it (a rotated photo stays as its pixels are stored). A file Pillow cannot decode (not an image,
    empty, cut short) raises :class:`~udd_fast.unreadable.UnreadableImage` naming it."""
    from PIL import Image
    from torchvision import transforms as T

    try:
        with open(path, "rb") as f, Image.open(f) as im:
            if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit samples: keep their top 8 bits
                im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")
            im = T.CenterCrop(size)(T.Resize(size)(im.convert("RGB")))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(path, reason_of(path, e)) from None
    # contiguous channels-first, as ToTensor: a channels-last batch would send convolutions down another path
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))


def common_size(root: str | os.PathLike, classes=None, sample: int = 512) -> int | None:
    """The side of an ImageFolder's images when they are square and share one size (CIFAR's 32 px, a folder
    of 64 px crops), else None. Reads the headers of up to ``sample`` files spread evenly over the listing
    (Pillow opens a file without decoding it), so a large folder answers in well under a second."""
    from PIL import Image

    root = Path(root)
    files = folder_listing(root, classes)[1]
    sizes = set()
    for i in np.linspace(0, len(files) - 1, min(sample, len(files))).round().astype(int):
        try:
            with Image.open(root / files[i]) as im:
                sizes.add(im.size)
        except OSError:  # an unreadable file says nothing about the others' size
            continue
        if len(sizes) > 1:
            return None
    if len(sizes) != 1:
        return None
    width, height = sizes.pop()
    return width if width == height else None


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class folder names from a text file: one per line, ``#`` starts a comment, blank lines skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UDDError(f"cannot read class list {path} ({e.strerror or e})") from None
    return [name for line in lines if (name := line.split("#", 1)[0].strip())]


def resolve_classes(classes) -> tuple[list[str] | None, str]:
    """``classes`` as a list of folder names plus a description of where it came from.

    Accepts ``None`` (all folders), a list/tuple of names, a path to a text file (see :func:`read_class_list`)
    or the name of a shipped list (:data:`SUBSETS`, e.g. ``"imagenet10"``)."""
    if classes is None:
        return None, ""
    if isinstance(classes, (str, os.PathLike)):
        path = Path(classes)
        if path.is_file():
            names, source = read_class_list(path), f"class list {path}"
        elif str(classes) in SUBSETS:
            names, source = read_class_list(SUBSET_DIR / f"{classes}.txt"), f"shipped class list {classes!r}"
        else:
            raise UDDError(f"unknown class list {str(classes)!r}: not a file and not a shipped list (choose one of "
                           f"{', '.join(SUBSETS) or 'none'}, or pass a text file with one class folder per line)")
    else:
        names, source = [str(c) for c in classes], "classes"
    if not names:
        raise UDDError(f"{source} names no classes; list one class folder name per line")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise UDDError(f"{source} names class(es) {', '.join(dup)} more than once; list each class once")
    return names, source


def folder_listing(root: Path, classes=None) -> tuple[list[str], list[str], list[int]]:
    """An ImageFolder's classes (``classes`` resolved by :func:`resolve_classes`, in that order; ``None``: every
    class folder, sorted), its image files relative to ``root`` (per class, sorted, as torchvision's
    ``ImageFolder``) and their labels 0..K-1."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(root)
    if not root.is_dir():
        raise UDDError(f"ImageFolder root {root} does not exist; pass --data-root DIR with one folder per class")
    names, source = resolve_classes(classes)
    if names is not None:
        missing = [c for c in names if not (root / c).is_dir()]
        if missing:
            shown = ", ".join(missing[:10]) + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
            raise UDDError(f"{source} names class folder(s) {shown} missing under {root}; fix the list or the root")
    names = names if names is not None else find_classes(str(root))[0]
    try:
        samples = make_dataset(str(root), {c: i for i, c in enumerate(names)}, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise UDDError(f"ImageFolder {root}: {str(e).splitlines()[0]} (every class folder needs at least one "
                       "image file)") from None
    return names, [os.path.relpath(p, root) for p, _ in samples], [t for _, t in samples]


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


def load_dataset(name: str, train: bool = True, root: str | os.PathLike | None = None, size: int | None = None,
                 download: bool = True, classes=None, stream: bool | None = None,
                 num_workers: int | None = None, max_unreadable: float = unreadable.MAX_SHARE,
                 retry_unreadable: bool = False, progress: bool = True) -> "RealData | FolderData":
    """Load a dataset by name (see :data:`DATASETS`) or ``imagefolder`` (``root`` = the class folders).

    For ``imagefolder``: ``size`` is the resize/center-crop size (default: the images' own size when they are
    square and share one, see :func:`common_size`; else 224); ``classes`` restricts and orders the classes
    (a list of folder names, a text file with one per line, or a shipped list name such as ``"imagenet10"``;
    labels become 0..K-1 in that order); ``stream`` (default ``True``) returns a :class:`FolderData` that
    decodes batches from disk with ``num_workers`` processes, ``stream=False`` an in-memory :class:`RealData`.
    (``train`` is not used for ``imagefolder``: point ``root`` at the split you want.) Files that cannot be
    decoded are left out with one line of report (:class:`FolderData`'s ``scan``; ``max_unreadable``, and
    ``retry_unreadable`` to decode the ones found before again)."""
    root = Path(root) if root is not None else default_root()
    if name == "imagefolder":
        folder = FolderData(root, size or common_size(root, classes) or 224, classes, num_workers,
                            max_unreadable=max_unreadable, rescan=retry_unreadable, progress=progress)
        return folder if stream is None or stream else folder.materialize()
    if name not in DATASETS:
        raise UDDError(f"unknown dataset {name!r}; choose one of {', '.join([*DATASETS, 'imagefolder'])}")
    if classes is not None or stream:
        raise UDDError(f"classes= and stream=True apply to imagefolder datasets only, not {name!r}")
    tv_name, channels, _, classes, mean, std, flip = DATASETS[name]
    found = _find_idx([root / name, root, *IDX_DIRS.get(name, [])], "train" if train else "t10k") \
        if name in IDX_DIRS else None
    local = _read_cifar(name, root, train, num_workers) if name in CIFAR_FILES else None
    if found:
        images = torch.from_numpy(_read_idx(found[0]).copy()).unsqueeze(1)
        labels = torch.from_numpy(_read_idx(found[1]).astype(np.int64))
    elif local is not None:
        images, labels = local
    else:
        images, labels = _torchvision(tv_name, root, train, download)
    return RealData(images.float() / 255, labels, mean, std, name, flip, classes)


#: CIFAR's python batches as torchvision downloads them: folder, training files, test files, label key
CIFAR_FILES = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
               "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels")}


def _read_cifar(name: str, root: Path, train: bool, num_workers: int | None = None):
    """CIFAR-10/100 from disk without a network, or None when neither layout is under ``root``:

    - the python batches (``cifar-10-batches-py/`` or ``cifar-100-python/``, under ``root`` or ``root/<name>``),
      read directly, so no download and no checksum is needed;
    - the class-folder layout (``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, as the CIFAR-10 image
      repositories ship it), decoded once into memory. Classes are the folder names sorted, which is CIFAR's
      own label order for both sets (airplane, automobile, ..., truck)."""
    import pickle

    folder, train_files, test_files, key = CIFAR_FILES[name]
    classes = DATASETS[name][3]
    for base in (root, root / name):
        batches = base / folder
        if all((batches / f).is_file() for f in train_files + test_files):
            images, labels = [], []
            for f in train_files if train else test_files:
                with open(batches / f, "rb") as fh:
                    entry = pickle.load(fh, encoding="latin1")
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels += list(entry[key])
            return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)
        split = base / ("train" if train else "test")
        if split.is_dir() and len([d for d in split.iterdir() if d.is_dir()]) == classes:
            images = FolderData(split, size=32, num_workers=num_workers, progress=False)
            return images.read(list(range(len(images)))), images.labels
    return None


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

