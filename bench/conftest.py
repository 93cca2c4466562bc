import json
import os
import re
from pathlib import Path

import torch

# The Triton interpreter must be chosen before any Triton kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")

# Figures a row may carry beside ms_per_image (set in benchmark.extra_info by the bench files).
OPTIONAL = ("images_per_s", "gb_per_s", "held_mib")


def _device_name() -> str:
    if torch.cuda.is_available():
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return "cpu"


def _meta() -> dict:
    from udd_fast.cpu import cpu_model
    from udd_fast.losses import bf16_units

    meta = {"device": _device_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": cpu_model(), "cpu_bf16_units": bf16_units("cpu")}
    if torch.cuda.is_available():
        import triton

        meta.update(cuda=torch.version.cuda, triton=triton.__version__)
    return meta


def pytest_report_header(config):
    """The machine every figure below comes from: CPU model, its bf16 units (AMX, AVX-512 BF16), threads."""
    m = _meta()
    return (f"udd_fast bench on {m['device']}: CPU {m['cpu']} (bf16 units: {', '.join(m['cpu_bf16_units']) or 'none'}), "
            f"{m['threads']} threads, torch {m['torch']}")


def _table(benchmarks) -> dict:
    """group -> entry -> ms per image, its speed-up against the slowest entry of the group, and the OPTIONAL
    figures, for the benchmarks that recorded ms_per_image."""
    groups: dict[str, list] = {}
    for b in benchmarks:
        if b.extra_info.get("ms_per_image") is not None:
            groups.setdefault(b.group or b.name, []).append((b.name.split("[")[-1].rstrip("]"), b.extra_info))
    return {g: {name: {"ms_per_image": info["ms_per_image"],
                       "speedup_vs_slowest": max(i["ms_per_image"] for _, i in rows) / info["ms_per_image"],
                       **{k: info[k] for k in OPTIONAL if info.get(k) is not None}}
                for name, info in rows} for g, rows in sorted(groups.items())}


def _write(path: Path, table: dict, merge: bool) -> None:
    """``meta`` is this run's machine; ``machines`` names each group's (a merged file holds groups measured on
    other machines, kept with the machine they were measured on; a file without ``machines`` had one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(path.read_text()) if merge and path.exists() else {"groups": {}}
    machines = {g: saved.get("machines", {}).get(g, saved.get("meta")) for g in saved["groups"]}
    machines.update({g: _meta() for g in table})
    groups = {**saved["groups"], **table}
    tmp = path.with_name(path.name + ".tmp")  # a reader (or a kill) never sees half a file
    tmp.write_text(json.dumps({"meta": _meta(), "groups": dict(sorted(groups.items())),
                               "machines": dict(sorted(machines.items()))}, indent=1))
    tmp.replace(path)


def pytest_runtest_teardown(item):
    """With UDD_BENCH_JSON_DIR set, rewrite $UDD_BENCH_JSON_DIR/<file stem>.json after each benchmark of that
    file, so that a run stopped at its time limit keeps every row it finished."""
    out_dir = os.environ.get("UDD_BENCH_JSON_DIR")
    bs = getattr(item.config, "_benchmarksession", None)
    if not out_dir or bs is None:
        return
    path = item.nodeid.split("::")[0]
    rows = [b for b in bs.benchmarks if b.fullname.split("::")[0] == path]
    if rows:
        _write(Path(out_dir) / f"{Path(path).stem}.json", _table(rows), merge=False)


def pytest_sessionfinish(session):
    """Print ms per image per benchmark group with each entry's ratio to the slowest, and merge the groups
    into bench/results/<device>.json, or $UDD_FAST_BENCH_JSON (a group is always measured whole, in one run)."""
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return
    table = _table(bs.benchmarks)
    lines = ["", "ms per synthetic image (speed-up against the slowest entry of its group)"]
    for g, rows in table.items():
        lines.append(g)
        lines += [f"    {name:60s} {r['ms_per_image']:10.4f} ms  x{r['speedup_vs_slowest']:.2f}"
                  + (f"  {r['images_per_s']:.1f} images/s" if "images_per_s" in r else "")
                  + (f"  {r['gb_per_s']:.0f} GB/s" if "gb_per_s" in r else "") for name, r in rows.items()]
    print("\n".join(lines))
    out = Path(os.environ.get("UDD_FAST_BENCH_JSON") or Path(__file__).parent / "results" / f"{_device_name()}.json")
    _write(out, table, merge=True)
