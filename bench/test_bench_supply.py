"""Real batches for ImageNet-sized runs: what each path supplies against what one inner step consumes.

    pytest bench/test_bench_supply.py --benchmark-only

- **supply**: images/s delivered as ``class_batch`` draws of 64 (what the matching asks for) by folder
  streaming (JPEG decoding with 0 threads and with one per core), the memory-mapped decoded cache, and
  device-resident data (on CPU: the cache read into memory); the memory each path holds; and how long
  ``prepare`` takes per 1,000 images;
- **demand**: the real images one inner step consumes (K x batch_real for the matching plus net_batches x
  net_batch for the network update) over its time, ResNetAp-10 at 224 px, the ``paper`` preset at IPC=1 with
  a few classes, so one step fits on CPU;
- **network update share**: FLOPs of one inner step counted by ``torch.utils.flop_counter`` in its pieces
  (window mining, the matching of one class, the network update), then the share the update takes on each
  process for a run split over processes, since every process repeats it.

The folder is synthetic: 10 classes x 40 JPEGs of 500 x 375 (the size of a typical ImageNet photo), random
smooth content, written once per session.
"""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from timing import DEVICE, inner_step, sync
from udd_fast import Distiller, FolderData, preset
from udd_fast.cache import CachedData, prepare
from udd_fast.metrics import peak_memory

SIZE, CLASSES, PER_CLASS, DRAW = 224, 10, 40, 64
PATHS = ("folder-0-threads", "folder-threads", "cache-mmap", "resident")


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"n{c:08d}").mkdir()
        for i in range(PER_CLASS):
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # upsampled: JPEG-like smooth content
            Image.fromarray(small).resize((500, 375), Image.BILINEAR).save(root / f"n{c:08d}" / f"{i}.JPEG",
                                                                          quality=90)
    return root


@pytest.fixture(scope="module")
def cache(jpeg_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    start = time.perf_counter()
    prepare(jpeg_folder, out, SIZE, progress=False)
    seconds = time.perf_counter() - start
    return out, seconds


def source(path: str, folder: Path, cache: Path):
    threads = os.cpu_count() or 1
    if path == "folder-0-threads":
        return FolderData(folder, SIZE, num_workers=0).to(DEVICE)
    if path == "folder-threads":
        return FolderData(folder, SIZE, num_workers=threads).to(DEVICE)
    if path == "cache-mmap":
        return CachedData(cache, resident=0).to(DEVICE)
    data = CachedData(cache).to(DEVICE)
    return data if data.resident is not None else data.materialize()  # on CPU: the cache in memory


def held_mib(path: str, data) -> float:
    """The memory a path holds beyond its index: none for files, the page cache a map may use (all of it once
    every image was drawn), the whole decoded set when resident."""
    if path.startswith("folder"):
        return 0.0
    return len(data.labels) * 3 * SIZE * SIZE / 2 ** 20


@pytest.mark.parametrize("path", PATHS)
def test_real_batch_supply(benchmark, jpeg_folder, cache, path):
    data = source(path, jpeg_folder, cache[0])
    gen = torch.Generator().manual_seed(0)
    draws = CLASSES  # one draw of 64 per class: the matching's real batches of one inner step

    def run():
        for c in range(draws):
            data.class_batch(c, DRAW, gen)
        sync()

    run()  # warm the page cache and the decode pool
    benchmark.group = f"real-batch supply {SIZE}px {DEVICE}"
    benchmark.pedantic(run, rounds=3, iterations=1)
    per_s = draws * DRAW / benchmark.stats.stats.mean
    benchmark.extra_info.update(device=DEVICE, images_per_s=per_s, ms_per_image=1e3 / per_s,
                                held_mib=held_mib(path, data), prepare_s_per_1000=cache[1] / len(data.labels) * 1e3)


def paper_step_config(classes_ipc=1, batch_real=DRAW, net_batch=64, net_batches=8):
    cfg = preset("paper", "imagefolder", classes_ipc, SIZE, CLASSES)
    return cfg.replace(model="resnetap10", width=None, batch_real=batch_real, net_batch=net_batch,
                       net_batches=net_batches, step="loop", precision="fp32" if DEVICE == "cpu" else "bf16")


def test_inner_step_demand(benchmark, jpeg_folder, cache, capsys):
    """One ``paper``-preset inner step at 224 px with ResNetAp-10, 2 classes at IPC=1 and a real batch of 16 so
    it fits on CPU: its time, peak memory and the real images it consumes per second."""
    data = CachedData(cache[0]).to(DEVICE)
    classes = 2
    cfg = paper_step_config(batch_real=16, net_batch=16, net_batches=2)
    run, _ = inner_step(Distiller(data, cfg, DEVICE), classes)  # a share of the classes, as one process's

    benchmark.group = f"real-batch supply {SIZE}px {DEVICE}"
    benchmark.pedantic(run, rounds=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.mean
    consumed = classes * cfg.batch_real + cfg.net_batches * cfg.net_batch
    benchmark.extra_info.update(device=DEVICE, images_per_s=consumed / seconds, ms_per_image=1e3 * seconds / consumed,
                                step_s=seconds, consumed=consumed, **peak_memory(torch.device(DEVICE)))
    with capsys.disabled():
        print(f"\ninner step demand: {consumed} real images in {seconds:.2f} s = {consumed / seconds:.1f} images/s; "
              f"peak memory {peak_memory(torch.device(DEVICE))}")


def step_flops(data, classes_ipc: int, batch_real: int, net_batch: int) -> dict:
    """FLOPs of one inner step's pieces for 1 class: mining its windows, matching it, one network batch."""
    cfg = paper_step_config(classes_ipc, batch_real, net_batch, net_batches=1)
    d = Distiller(data, cfg, DEVICE)
    _, (syn, net, opt, bank) = inner_step(d, classes=1)
    counted = {}
    with FlopCounterMode(display=False) as fc:
        d.underutilized_windows(net, syn, 0)
    counted["mining"] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        d.matching_gradient(net, syn, bank, 0)
    counted["matching"] = fc.get_total_flops() - counted["mining"]
    with FlopCounterMode(display=False) as fc:
        d.train_network(net, opt, syn)
    counted["update"] = fc.get_total_flops()
    return counted


def test_network_update_share(benchmark, cache, capsys):
    """The network update's share of a step, from FLOP counts per class and per image (every count is linear
    in the batch sizes and in IPC, so two small counts give every size exactly), for ImageNet-10 on 1 process
    and ImageNet-100 on 8, the ``paper`` preset at IPC=1 and 10: K / processes classes matched per process, the
    whole update (net_batches x net_batch images) on every process."""
    data = CachedData(cache[0])
    a, b = step_flops(data, 1, 2, 2), step_flops(data, 1, 4, 4)
    real = (b["matching"] - a["matching"]) / 2            # per real image in the matching
    syn = a["matching"] - 2 * real                        # the synthetic side of one class at IPC=1
    per_image_update = (b["update"] - a["update"]) / 2
    cfg = paper_step_config(10)
    rows = {}
    for name, k, processes in (("imagenet10, 1 process", 10, 1), ("imagenet100, 8 processes", 100, 8)):
        for ipc in (1, 10):
            own = k / processes
            match = own * (real * cfg.batch_real + syn * ipc + a["mining"] * ipc)
            update = cfg.net_batches * cfg.net_batch * per_image_update
            rows[f"{name}, ipc {ipc}"] = {"matching_tflop": match / 1e12, "update_tflop": update / 1e12,
                                          "update_share": update / (match + update)}
    benchmark.pedantic(lambda: None, rounds=1)
    benchmark.extra_info.update(gflop_per_real_image_matched=real / 1e9, gflop_per_class_synthetic_ipc1=syn / 1e9,
                                gflop_per_image_updated=per_image_update / 1e9, rows=rows)
    with capsys.disabled():
        print("\nnetwork update share of one inner step (paper preset, ResNetAp-10, 224 px, FLOPs):")
        for name, r in rows.items():
            print(f"    {name:32s} matching {r['matching_tflop']:7.2f} TFLOP  update {r['update_tflop']:6.2f} TFLOP"
                  f"  share {100 * r['update_share']:5.1f} %")
    out = os.environ.get("UDD_FAST_SHARE_JSON")
    if out:
        Path(out).write_text(json.dumps(benchmark.extra_info, indent=1))
