"""How long a distillation will take here, from a few timed inner steps, before committing hours to it.

A step's cost depends on the shapes (classes, channels, image size, IPC, factor, P, network) and not on the
pixels, so the estimate runs on random images of the dataset's shape: no data set has to travel with it (a lent
GPU machine has no network and little room for CIFAR-10). Each preset is timed as it would run: its step mode,
its precision (``auto`` probes first, as a real run does), its network update.
"""
from __future__ import annotations

import statistics
import time

import torch

from udd_fast.config import preset
from udd_fast.data import DATASETS, RealData
from udd_fast.distiller import Distiller
from udd_fast.errors import UDDError
from udd_fast.metrics import peak_memory

#: inner steps run untimed first (kernel selection, allocator growth, autotuning)
WARMUP = 1


def shaped_like(dataset: str, per_class: int, device="cpu", seed: int = 0) -> RealData:
    """Random images of ``dataset``'s shape and statistics, ``per_class`` of each class."""
    if dataset not in DATASETS:
        raise UDDError(f"estimates know the shapes of {', '.join(DATASETS)}, not {dataset!r}")
    _, channels, size, classes, mean, std, flip = DATASETS[dataset]
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(classes * per_class, channels, size, size, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return RealData(images, labels, mean, std, dataset, flip, classes).to(device)


def estimate(dataset: str, preset_name: str, ipc: int, device="cpu", steps: int = 3, overrides: dict | None = None,
             progress: bool = False) -> dict:
    """Seconds per inner step of ``preset_name`` on ``dataset`` at ``ipc`` (the median of ``steps`` timed steps
    after :data:`WARMUP` untimed ones), and what the preset's whole distillation would take at that pace."""
    cfg = preset(preset_name, dataset, ipc).replace(**(overrides or {}))
    per_class = max(cfg.batch_real, cfg.ipc * cfg.factor ** 2)
    distiller = Distiller(shaped_like(dataset, per_class, device), cfg, device)
    start = time.perf_counter()
    syn, _, _ = distiller.start(resume=False)  # the initialisation, and the precision probe under "auto"
    setup = time.perf_counter() - start
    net, opt = distiller.fresh_network()
    probe = (net, opt, distiller.class_embeddings(net, syn))
    times = []
    for i in range(WARMUP + steps):
        times.append(distiller.step_seconds(syn, distiller.precision, probe))
        if progress:
            print(f"  {dataset} {preset_name} ipc {ipc}: step {i + 1}/{WARMUP + steps} {times[-1]:.3f} s", flush=True)
    step = statistics.median(times[WARMUP:])
    total = cfg.outer * cfg.inner
    return {"dataset": dataset, "preset": preset_name, "ipc": ipc, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "CPU",
            "precision": distiller.precision, "step": cfg.step, "outer": cfg.outer, "inner": cfg.inner,
            "step_s": step, "steps_timed": times[WARMUP:], "setup_s": setup, "distill_steps": total,
            "distill_hours": step * total / 3600, **peak_memory(torch.device(device))}


def describe(r: dict) -> str:
    return (f"{r['dataset']} IPC={r['ipc']}, preset {r['preset']} ({r['step']} step, {r['precision']}) on "
            f"{r['device_name']}: {r['step_s']:.3f} s per inner step (median of {len(r['steps_timed'])}) x "
            f"{r['outer']} x {r['inner']} steps = {r['distill_hours']:.2f} h of distillation, evaluation not included")
