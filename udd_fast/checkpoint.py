"""Crash-safe checkpoints: written atomically (temporary file, fsync, rename), the previous one kept.

A run killed at any moment leaves ``checkpoint.pt`` (the newest complete checkpoint) and usually
``checkpoint.prev.pt``; a half-written file is only ever ``checkpoint.tmp``. Loading falls back to the previous
checkpoint when the newest is truncated or corrupt. Files hold tensors, numbers and strings only and are read
with ``torch.load(weights_only=True)``: nothing is unpickled.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch

from udd_fast.errors import UDDError
from udd_fast.files import write_error

NAME = "checkpoint.pt"


def paths(out_dir: Path) -> tuple[Path, Path, Path]:
    """(newest, previous, temporary) checkpoint paths of a run directory."""
    return out_dir / NAME, out_dir / "checkpoint.prev.pt", out_dir / "checkpoint.tmp"


def save(out_dir: Path, state: dict) -> Path:
    """Write ``state`` as the run's newest checkpoint; the one it replaces becomes the previous one. A failed
    write (a full disk) leaves both as they were and raises one line (:func:`udd_fast.files.write_error`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    newest, prev, tmp = paths(out_dir)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # in memory: torch's writer reports a full disk as a bare position mismatch
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(newest, e, "checkpoint") from None
    if newest.exists():
        os.replace(newest, prev)
    os.replace(tmp, newest)
    return newest


def load(out_dir: Path) -> dict | None:
    """The newest readable checkpoint of a run directory, or None when it has none."""
    newest, prev, _ = paths(out_dir)
    errors = []
    for path in (newest, prev):
        if not path.exists():
            continue
        try:
            state = torch.load(path, weights_only=True)
        except Exception as e:  # truncated zip, bad magic, short read: all mean "unreadable"
            errors.append(f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            warnings.warn(f"checkpoint {path} is unreadable ({errors[-1]}); trying the previous one")
            continue
        if not isinstance(state, dict) or "syn" not in state:
            errors.append(f"{path}: not a udd_fast checkpoint")
            continue
        return state
    if errors:
        raise UDDError("no readable checkpoint to resume from: " + "; ".join(errors)
                       + ". Delete them to start over")
    return None
