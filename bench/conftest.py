import json
import os
import platform
import re
from pathlib import Path

import torch

# The Triton interpreter must be chosen before any Triton kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")


def _device_name() -> str:
    if torch.cuda.is_available():
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return "cpu"


def pytest_sessionfinish(session):
    """Print ms per image per benchmark group with each entry's ratio to the slowest, and merge the groups
    into bench/results/<device>.json, or $UDD_FAST_BENCH_JSON (a group is always measured whole, in one run)."""
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return
    groups: dict[str, list] = {}
    for b in bs.benchmarks:
        if b.extra_info.get("ms_per_image") is not None:
            groups.setdefault(b.group or b.name, []).append((b.name.split("[")[-1].rstrip("]"), b.extra_info))
    table = {g: {name: {"ms_per_image": info["ms_per_image"],
                        "speedup_vs_slowest": max(i["ms_per_image"] for _, i in rows) / info["ms_per_image"],
                        **({"images_per_s": info["images_per_s"]} if "images_per_s" in info else {})}
                 for name, info in rows} for g, rows in sorted(groups.items())}
    lines = ["", "ms per synthetic image (speed-up against the slowest entry of its group)"]
    for g, rows in table.items():
        lines.append(g)
        lines += [f"    {name:60s} {r['ms_per_image']:10.4f} ms  x{r['speedup_vs_slowest']:.2f}"
                  + (f"  {r['images_per_s']:.1f} images/s" if "images_per_s" in r else "") for name, r in rows.items()]
    print("\n".join(lines))
    out = Path(os.environ.get("UDD_FAST_BENCH_JSON") or Path(__file__).parent / "results" / f"{_device_name()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(out.read_text())["groups"] if out.exists() else {}
    meta = {"device": _device_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}
    out.write_text(json.dumps({"meta": meta, "groups": dict(sorted({**saved, **table}.items()))}, indent=1))
