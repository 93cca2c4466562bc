"""Image files that cannot be decoded: found once, reported in one summary, left out of every draw.

Real folders hold a few bad files (a download cut short, a text file named ``.jpg``, an empty file). A run must
neither stop on them with a traceback nor silently train on something else. Both ways of reading a folder find
them the same way, so they give the same listing, the same draws and the same synthetic set:

- :class:`udd_fast.data.FolderData` (streaming) decodes every file once when it is built (:func:`find`), with a
  progress bar, and keeps the result in the user's cache directory (:func:`cache_dir`), keyed by the folder's
  listing and every file's size and modification time: a second run on the same folder does not decode again,
  and a changed file is checked again;
- :func:`udd_fast.cache.prepare` notes each file it cannot decode while it fills the cache, and records them in
  the cache's manifest; :class:`udd_fast.cache.CachedData` leaves them out.

A folder with more than ``max_share`` of its files unreadable (default :data:`MAX_SHARE`), or a class with none
left, is refused with one line: that is a wrong folder or a broken copy, not a few bad files.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from udd_fast.errors import UDDError
from udd_fast.files import atomic_write, cache_dir

#: the largest share of a folder's image files that may be unreadable before the folder is refused
MAX_SHARE = 0.01
#: how many unreadable files a summary names before pointing to the full list
SHOWN = 3


class UnreadableImage(UDDError):
    """An image file that cannot be decoded; ``reason`` says why in a few words."""

    def __init__(self, path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = Path(path), reason


def reason_of(path, error: BaseException) -> str:
    """Why ``path`` could not be decoded, in a few words (Pillow's first line, without the file object)."""
    from PIL import UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            return "empty file"
    except OSError as e:
        return f"cannot open ({e.strerror or e})"
    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow recognises"
    return (str(error).splitlines() or [type(error).__name__])[0]


def _scan_key(root: Path, files: list[str]) -> str:
    stats = []
    for f in files:
        try:
            st = (root / f).stat()
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append(None)
    return hashlib.sha256(json.dumps([str(root.resolve()), files, stats]).encode()).hexdigest()[:32]


def find(root: Path, files: list[str], decode, num_workers: int, rescan: bool = False,
         progress: bool = True) -> tuple[dict[str, str], Path | None]:
    """The files of ``root`` (relative paths ``files``) that ``decode(path)`` cannot read, as {file: reason},
    and the file that lists them. A scan of the same listing, with every file's size and modification time
    unchanged, is reused unless ``rescan``."""
    record = cache_dir() / "unreadable" / f"{_scan_key(root, files)}.json"
    if not rescan and record.exists():
        try:
            return json.loads(record.read_text())["unreadable"], record
        except (OSError, ValueError, KeyError):
            pass  # a damaged record is scanned again

    def check(f: str) -> str | None:
        try:
            decode(root / f)
        except UnreadableImage as e:
            return e.reason
        return None

    bad = {}
    with ThreadPoolExecutor(max(1, num_workers)) as pool, \
            tqdm(total=len(files), unit="img", desc=f"check {root}", disable=not progress, dynamic_ncols=True) as bar:
        for f, why in zip(files, pool.map(check, files)):
            if why is not None:
                bad[f] = why
            bar.update()
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(record, json.dumps({"root": str(root.resolve()), "files": len(files), "unreadable": bad}, indent=1))
    except (OSError, UDDError):
        return bad, None  # nowhere to keep it: the next run checks again
    return bad, record


def check(bad: dict[str, str], files: list[str], labels: list[int], classes: list[str], root,
          max_share: float = MAX_SHARE) -> None:
    """Refuse, in one line, a folder with more than ``max_share`` of its files unreadable or a class with no
    readable file left."""
    if not 0 <= max_share <= 1:
        raise UDDError(f"the share of unreadable images allowed must be in [0, 1], got {max_share}")
    if bad and len(bad) > max_share * len(files):
        raise UDDError(f"{len(bad)} of {len(files)} images under {root} ({len(bad) / len(files):.1%}) cannot be read, "
                       f"more than the {max_share:.1%} allowed (--max-unreadable); first: {_first(bad)}")
    readable, total = [0] * len(classes), [0] * len(classes)
    for f, c in zip(files, labels):
        readable[c] += f not in bad
        total[c] += 1
    for c, n in enumerate(readable):
        if n == 0:
            raise UDDError(f"class {classes[c]!r} under {root} has no readable image (all {total[c]} cannot be read); "
                           "fix or remove the class folder")


def summary(bad: dict[str, str], total: int, where) -> str:
    """One line: how many files were left out, the first few with their reason, and where the full list is."""
    more = f"; the full list: {where}" if where else ""
    return f"udd_fast: left out {len(bad)} of {total} image files that cannot be read ({_first(bad)}){more}"


def report(bad: dict[str, str], total: int, where) -> None:
    if bad:
        print(summary(bad, total, where), file=sys.stderr, flush=True)


def _first(bad: dict[str, str]) -> str:
    shown = [f"{f}: {why}" for f, why in list(bad.items())[:SHOWN]]
    return "; ".join(shown) + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
