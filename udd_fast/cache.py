"""An ImageFolder decoded once: a memory-mapped uint8 cache that long runs sample from instead of JPEG files.

    python -m udd_fast prepare --data-root train/ --classes imagenet10 --size 224 --cache cache/in10-224
    python -m udd_fast distill --dataset imagefolder --cache cache/in10-224 --ipc 10 ...

A run that streams from the folder decodes every real batch again on every inner step (about 1,100 decodes
per step at ImageNet-10, IPC=10); the cache decodes each image once. Its directory holds

- ``manifest.json``: the format version, image size, classes, the file list relative to the folder, labels,
  normalisation, a hash of (size, classes, files, labels), and whether it is complete;
- ``images.npy``: every image as N x 3 x size x size uint8, in the file list's order, written in place;
- ``done.txt``: the chunks of :data:`CHUNK` images written so far, each appended only after its pixels are on
  disk, so an interrupted :func:`prepare` resumes where it stopped and redoes at most one chunk;
- ``unreadable.txt``: the files that could not be decoded, with the reason (their rows stay black and
  :class:`CachedData` leaves them out; the complete manifest lists them too, see :mod:`udd_fast.unreadable`).

:class:`CachedData` samples from it with the draws and pixels of :class:`~udd_fast.data.FolderData` (both are
:class:`~udd_fast.data.StoredImages`). On a GPU it keeps the whole array in device memory when it takes at most
:data:`RESIDENT_SHARE` of the free memory (ImageNet-10 at 224 px: 1.9 GB; ImageNet-100: 19 GB), and otherwise
gathers each batch from the map into pinned memory and copies it on a side stream.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from udd_fast import unreadable
from udd_fast.data import IMAGENET_MEAN, IMAGENET_STD, FolderData, StoredImages, resolve_classes
from udd_fast.errors import UDDError
from udd_fast.files import atomic_write, write_error
from udd_fast.unreadable import UnreadableImage

CACHE_VERSION = 1
#: images decoded and flushed to disk between two marks in ``done.txt``
CHUNK = 256
#: the cache moves into device memory when it takes at most this share of the device's free memory, leaving the
#: rest for the networks, the synthetic set and the matching's activations
RESIDENT_SHARE = 0.5
#: images copied to the device at a time when the cache moves there (bounds the pinned staging buffer)
UPLOAD_CHUNK = 4096


def listing_hash(size: int, classes: list[str], files: list[str], labels: list[int]) -> str:
    """What a cache was built from, as one hash: a renamed, added or removed file or class changes it."""
    return hashlib.sha256(json.dumps([size, classes, files, labels]).encode()).hexdigest()


def _manifest(folder: FolderData) -> dict:
    labels = folder.labels.tolist()
    return {"version": CACHE_VERSION, "size": folder.size, "classes": folder.classes, "count": len(labels),
            "mean": list(folder.mean), "std": list(folder.std), "root": str(folder.root.resolve()),
            "hash": listing_hash(folder.size, folder.classes, folder.files, labels), "complete": False,
            "files": folder.files, "labels": labels}


def _describe(m: dict) -> str:
    shown = ", ".join(m["classes"][:3]) + (", ..." if len(m["classes"]) > 3 else "")
    return f"{m['count']} images of {len(m['classes'])} classes ({shown}) at {m['size']} px"


def _write_json(path: Path, data: dict) -> None:
    """Replace ``path`` atomically: a reader sees the old manifest or the new one, never half of one."""
    atomic_write(path, json.dumps(data), "cache manifest")


def read_manifest(cache: str | os.PathLike) -> dict | None:
    path = Path(cache) / "manifest.json"
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UDDError(f"cache {cache}: unreadable manifest.json ({e}); delete the directory and run prepare") from None
    if m.get("version") != CACHE_VERSION:
        raise UDDError(f"cache {cache} has format version {m.get('version')}, this udd_fast reads {CACHE_VERSION}; "
                       "run prepare into a new directory")
    return m


def _done(cache: Path) -> set[int]:
    path = cache / "done.txt"
    # a line cut short by a kill has no newline: that chunk is not marked
    return {int(line) for line in path.read_text().split("\n")[:-1]} if path.exists() else set()


def prepare(root: str | os.PathLike, cache: str | os.PathLike, size: int = 224, classes=None,
            num_workers: int | None = None, progress: bool = True, max_unreadable: float = unreadable.MAX_SHARE,
            retry_unreadable: bool = False) -> Path:
    """Decode the ImageFolder ``root`` (``classes`` and ``size`` as :class:`~udd_fast.data.FolderData`) into the
    cache directory ``cache`` with ``num_workers`` threads (default: every core); resume an interrupted run.
    Refuses a directory that holds a cache of another folder, class list or size. Returns ``cache``.

    A file that cannot be decoded is noted (``unreadable.txt``, written before its chunk is marked done) and
    its slot left black; the complete manifest lists them all (``unreadable``: file -> reason), one line reports
    them, and :class:`CachedData` leaves them out. A complete cache is not decoded again, its unreadable files
    included, unless ``retry_unreadable`` (say, after replacing them under the same names). More than
    ``max_unreadable`` of the files unreadable, or a class with none readable, is refused once the cache is
    complete (the cache is kept: a higher limit then uses it as it is)."""
    folder = FolderData(root, size, classes, (os.cpu_count() or 1) if num_workers is None else num_workers,
                        scan=False)
    want, cache = _manifest(folder), Path(cache)
    have = read_manifest(cache)
    if have is not None and have["hash"] != want["hash"]:
        raise UDDError(f"cache {cache} holds {_describe(have)} from {have['root']}, not {_describe(want)} from "
                       f"{want['root']}; pass another --cache or delete this one")
    if have is not None and have["complete"] and not (retry_unreadable and have.get("unreadable")):
        _check_unreadable(have, cache, max_unreadable)
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    shape = (want["count"], 3, size, size)
    images = _open_images(cache, shape)
    done, index = _done(cache), {f: i for i, f in enumerate(want["files"])}
    if have is not None and have["complete"]:  # retry: decode the unreadable files' chunks again
        done -= {index[f] // CHUNK for f in have["unreadable"]}
    # what was noted in chunks that are not marked done is noted again when they are decoded
    bad = {f: why for f, why in _noted(cache).items() if f in index and index[f] // CHUNK in done}
    (cache / "unreadable.txt").write_text("".join(f"{f}\t{why}\n" for f, why in bad.items()))
    _write_json(cache / "manifest.json", want)
    # drop a mark a kill cut short, so the marks appended below start on a line of their own
    (cache / "done.txt").write_text("".join(f"{k}\n" for k in sorted(done)))
    todo = [k for k in range(-(-shape[0] // CHUNK)) if k not in done]
    left = sum(min(shape[0], (k + 1) * CHUNK) - k * CHUNK for k in todo)
    try:
        with tqdm(total=shape[0], initial=shape[0] - left, unit="img", desc=f"decode -> {cache}", disable=not progress,
                  dynamic_ncols=True) as bar, open(cache / "done.txt", "a") as marks, \
                open(cache / "unreadable.txt", "a") as noted:
            for k in todo:
                lo, hi = k * CHUNK, min(shape[0], (k + 1) * CHUNK)
                for i, pixels in zip(range(lo, hi), folder.decode(range(lo, hi), tolerant=True)):
                    if isinstance(pixels, UnreadableImage):
                        images[i] = 0
                        bad[want["files"][i]] = pixels.reason
                        noted.write(f"{want['files'][i]}\t{pixels.reason}\n")
                    else:
                        images[i] = pixels
                images.flush()  # the pixels, and the files that had none, reach the disk before the chunk is marked
                noted.flush()
                os.fsync(noted.fileno())
                marks.write(f"{k}\n")
                marks.flush()
                os.fsync(marks.fileno())
                bar.update(hi - lo)
    except OSError as e:  # a full disk while marking progress: what is marked is on disk, a rerun goes on
        raise write_error(cache / "done.txt", e, "cache progress") from None
    del images
    complete = {**want, "complete": True, "unreadable": {f: bad[f] for f in want["files"] if f in bad}}
    _write_json(cache / "manifest.json", complete)
    unreadable.report(complete["unreadable"], want["count"], cache / "unreadable.txt")
    _check_unreadable(complete, cache, max_unreadable)
    return cache


def _noted(cache: Path) -> dict[str, str]:
    """The unreadable files an earlier, interrupted prepare noted (a line cut short by a kill is dropped)."""
    path = cache / "unreadable.txt"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def _check_unreadable(m: dict, cache: Path, max_share: float) -> None:
    unreadable.check(m.get("unreadable", {}), m["files"], m["labels"], m["classes"], f"{m['root']} (cache {cache})",
                     max_share)


def wait_for_cache(cache: str | os.PathLike, poll_s: float = 2.0) -> None:
    """Wait until another process has completed the cache at ``cache`` (torchrun's other ranks while rank 0
    runs :func:`prepare`; if rank 0 fails, torchrun stops them)."""
    while not ((m := read_manifest(cache)) and m["complete"]):
        time.sleep(poll_s)


def _open_images(cache: Path, shape: tuple[int, ...]) -> np.memmap:
    """The cache's image array for writing: the existing one when it has the right shape (a resume), else new."""
    path = cache / "images.npy"
    if path.exists():
        try:
            images = np.lib.format.open_memmap(path, mode="r+")
            if images.shape == shape and images.dtype == np.uint8:
                return images
        except (OSError, ValueError):
            pass
        (cache / "done.txt").unlink(missing_ok=True)  # another or a broken array: its marks mean nothing
    try:
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        # a sparse file would find the disk full only when a mapped page is written back (SIGBUS): claim the
        # blocks now, so a full disk is one line before any decoding
        with open(path, "rb+") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # a filesystem that cannot preallocate: go on with the sparse file
    except OSError as e:
        path.unlink(missing_ok=True)
        raise write_error(path, e, "cache array") from None
    return images


class CachedData(StoredImages):
    """Real images from a cache made by :func:`prepare`: same interface, draws and pixels as
    :class:`~udd_fast.data.FolderData` over the folder it was built from, without decoding anything.

    ``root`` (optional) checks the cache against that folder's current listing; ``classes`` and ``size``
    (optional) against what the caller expects. A partial, stale or mismatched cache is refused with one line.
    ``resident``: the largest share of a GPU's free memory the cache may take to live there (0: never)."""

    def __init__(self, cache: str | os.PathLike, root: str | os.PathLike | None = None, classes=None,
                 size: int | None = None, resident: float = RESIDENT_SHARE, name: str = "imagefolder",
                 flip: bool = True, max_unreadable: float = unreadable.MAX_SHARE):
        self.cache = Path(cache)
        m = read_manifest(self.cache)
        if m is None:
            raise UDDError(f"no cache at {self.cache}; make one with: python -m udd_fast prepare --data-root DIR "
                           f"--cache {self.cache}")
        if not m["complete"]:
            done = min(len(_done(self.cache)) * CHUNK, m["count"])
            raise UDDError(f"cache {self.cache} is incomplete ({done} of {m['count']} images decoded); rerun prepare "
                           "to finish it")
        if size is not None and size != m["size"]:
            raise UDDError(f"cache {self.cache} holds {m['size']} px images, not {size} px; prepare one at {size}")
        if classes is not None and (names := resolve_classes(classes)[0]) != m["classes"]:
            raise UDDError(f"cache {self.cache} holds classes {_describe(m)}, not the {len(names)} asked for; "
                           "prepare one for this class list")
        if root is not None:
            now = _manifest(FolderData(root, m["size"], m["classes"], 0, scan=False))
            if now["hash"] != m["hash"]:
                raise UDDError(f"cache {self.cache} is stale: {root} now lists {_describe(now)}, the cache "
                               f"{_describe(m)}; rerun prepare into a new directory")
        self.images = np.load(self.cache / "images.npy", mmap_mode="r")
        if self.images.shape != (m["count"], 3, m["size"], m["size"]):
            raise UDDError(f"cache {self.cache}: images.npy has shape {self.images.shape}, the manifest says "
                           f"{m['count']} x 3 x {m['size']} x {m['size']}; rerun prepare into a new directory")
        # the files prepare could not decode are left out, as FolderData leaves them out: the same listing
        _check_unreadable(m, self.cache, max_unreadable)
        self.unreadable = m.get("unreadable", {})
        keep = [i for i, f in enumerate(m["files"]) if f not in self.unreadable]
        self.positions = np.asarray(keep, dtype=np.int64) if self.unreadable else None  # dataset -> array rows
        self.classes, self.files, self.image_size = m["classes"], [m["files"][i] for i in keep], m["size"]
        self.labels = torch.as_tensor([m["labels"][i] for i in keep], dtype=torch.int64)
        self.mean, self.std = tuple(m.get("mean", IMAGENET_MEAN)), tuple(m.get("std", IMAGENET_STD))
        self.name, self.flip, self.resident_share, self.resident = name, flip, resident, None
        self._index()

    def __repr__(self) -> str:
        where = f"resident on {self.device}" if self.resident is not None else "memory-mapped"
        return (f"CachedData(cache={str(self.cache)!r}, classes={self.num_classes}, images={len(self.labels)}, "
                f"size={self.size}, {where})")

    @property
    def nbytes(self) -> int:
        return self.images.nbytes

    def to(self, device) -> "CachedData":
        """Batches on ``device`` from now on; on a GPU with room (``resident``), the whole cache moves there."""
        super().to(device)
        self.resident = None
        if self.device.type == "cuda" and self.resident_share > 0:
            free, _ = torch.cuda.mem_get_info(self.device)
            if self.nbytes <= self.resident_share * free:
                self.resident = torch.empty(self.images.shape, dtype=torch.uint8, device=self.device)
                for lo in range(0, len(self.images), UPLOAD_CHUNK):
                    part = torch.from_numpy(np.ascontiguousarray(self.images[lo:lo + UPLOAD_CHUNK]))
                    self.resident[lo:lo + len(part)].copy_(part.pin_memory())
        return self

    def read(self, index: list[int]) -> torch.Tensor:
        rows = np.asarray(index) if self.positions is None else self.positions[np.asarray(index)]
        if self.resident is not None:
            return self.resident[torch.as_tensor(rows, device=self.device)]
        return torch.from_numpy(self.images[rows])  # fancy indexing copies out of the map
