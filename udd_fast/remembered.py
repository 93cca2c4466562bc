"""What ``precision="auto"`` measured, remembered per machine and per shape of work.

Choosing between fp32 and bf16 costs timed work on every run: a few inner steps in each precision before a
distillation starts (:meth:`udd_fast.distiller.Distiller.choose_precision`), a few training batches before an
evaluation (:func:`udd_fast.evaluate.eval_precision`). The answer depends on the machine and on the shape of
the work, not on the data's values or the seed, so it is kept as a small JSON file in the user's cache
directory (:func:`udd_fast.files.cache_dir`, ``precision/``), named by a hash of:

- the machine (:func:`machine`): the GPU or the CPU's model and bf16 units, the threads torch uses, the
  processes of the run, torch's version;
- the work, as the caller describes it in the key: the network, the image shape, the batch sizes and what a
  step computes.

A run that finds its file uses the choice without timing anything. ``reprobe`` (``--precision-probe``) times
again and replaces it. A cache directory that cannot be written only costs the next run its probe.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from udd_fast.cpu import cpu_model
from udd_fast.errors import UDDError
from udd_fast.files import atomic_write, cache_dir
from udd_fast.losses import bf16_units


def machine(device: torch.device, world: int = 1) -> dict:
    """What makes one machine's timings differ from another's."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"device": gpu or cpu_model(), "bf16_units": bf16_units(device.type), "threads": torch.get_num_threads(),
            "world": world, "torch": torch.__version__}


def record_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return cache_dir() / "precision" / f"{digest}.json"


def recall(key: dict) -> dict | None:
    """The record kept for ``key`` (it holds at least ``"chosen"``), or None when there is none or it is
    unreadable or kept for another key (a hash collision, or a file edited by hand)."""
    path = record_path(key)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != json.loads(json.dumps(key, default=str)):
        return None
    return record if record.get("chosen") in ("fp32", "bf16") else None


def remember(key: dict, record: dict) -> Path | None:
    """Keep ``record`` (what was measured and ``"chosen"``) for ``key``; returns where, or None with a warning
    when the cache directory cannot be written."""
    path = record_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({**record, "key": key}, indent=1, default=str), "precision record")
    except (OSError, UDDError) as e:
        warnings.warn(f"udd_fast: the precision chosen cannot be kept in {path.parent} ({e}); the next run "
                      "probes again", stacklevel=2)
        return None
    return path
