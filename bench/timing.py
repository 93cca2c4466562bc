"""What the benchmark files share: the device they time on, and calls that wait for it, so that a timed
round covers the device work it launched and not only the launches."""
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def synced(fn):
    """``fn`` followed by :func:`sync`, returning ``fn``'s result."""
    def run():
        out = fn()
        sync()
        return out

    return run


def timed(benchmark, fn, images):
    """Benchmark ``fn`` (after one untimed call) and record ms per image for ``images`` images."""
    run = synced(fn)
    run()  # compile / warm caches outside the timed rounds
    benchmark(run)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["ms_per_image"] = stats.stats.mean * 1e3 / images
    benchmark.extra_info["device"] = DEVICE
