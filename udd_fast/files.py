"""Writing results so that nothing is lost: every file a run writes appears whole or not at all.

:func:`atomic_write` writes a temporary file beside the target, flushes it to the disk and renames it over the
target: a reader (or a later run) sees the old file or the new one, never half of one. When the disk is full
(or the write fails otherwise) the temporary file is removed, the old file is left as it was, and the error is
one line (:class:`~udd_fast.errors.UDDError`) saying which file, why, and that a rerun with space continues.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from udd_fast.errors import UDDError


def atomic_write(path: str | os.PathLike, data: bytes | str, what: str = "") -> Path:
    """Replace ``path`` by ``data`` (bytes, or text written as UTF-8), atomically. ``what`` names the file in
    the error (e.g. "checkpoint"). The data is made in memory first (sets, checkpoints and tables are small), so
    that a full disk surfaces here as an ``OSError`` with its errno, not as a serializer's own error."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e, what) from None
    return path


def write_error(path: Path, error: OSError, what: str = "") -> UDDError:
    """One line for a failed write: the file, the reason, what was kept and what to do."""
    name = f"{what} {path}" if what else str(path)
    kept = f"; the previous {path.name} is intact" if path.exists() else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        return UDDError(f"cannot write {name}: no space left on the device ({free / 2**20:.0f} MiB free){kept}; "
                        "free some space and run the command again (distill with --resume): it goes on from what "
                        "was saved")
    return UDDError(f"cannot write {name}: {error.strerror or error}{kept}")


def check_writable(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and make sure a file can be written in it, before any work starts."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".udd_fast-write-test-{os.getpid()}"  # one per process under torchrun
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UDDError(f"cannot write to {directory}: {e.strerror or e}; choose another --out") from None
    return directory


def cache_dir() -> Path:
    """Where udd_fast keeps what it learned about a machine (unreadable files, the precision ``auto`` chose):
    ``$UDD_FAST_CACHE``, else ``$XDG_CACHE_HOME/udd_fast``, else ``~/.cache/udd_fast``."""
    if os.environ.get("UDD_FAST_CACHE"):
        return Path(os.environ["UDD_FAST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "udd_fast"
