"""What the benchmark files share: the device they time on, calls that wait for it, and :func:`timed`, which
times a call as a kernel on CUDA and records ms per image and the achieved GB/s.

GB/s figures count the bytes a call must move at least (one pass: read its inputs once, write its outputs),
so on a GPU they read against the memory bandwidth: about 4.3 TB/s on an H200 (:data:`H200_GB_PER_S`).
"""
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
H200_GB_PER_S = 4300  # HBM3e copy bandwidth of one H200, the roofline of the memory-bound kernels


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


def timed(benchmark, fn, images: int, nbytes: int | None = None, rounds: int = 3) -> float:
    """Time ``fn`` and record ``ms_per_image`` for ``images`` images, and ``gb_per_s`` when ``nbytes`` (the
    bytes one call must move) is given; returns ms per call.

    On CUDA: ``triton.testing.do_bench`` (CUDA events around each call, L2 cache flushed before each, median),
    so that a row measures the kernels from device memory, not the launches or a warm cache; the
    pytest-benchmark row is one untimed call that carries the figures. On CPU: ``rounds`` synced rounds after a
    warm-up call.
    """
    if DEVICE == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median")
        benchmark.pedantic(synced(fn), rounds=1, iterations=1)
    else:
        run = synced(fn)
        run()  # compile / warm caches outside the timed rounds
        benchmark.pedantic(run, rounds=rounds, iterations=1)
        ms = benchmark.stats.stats.mean * 1e3
    benchmark.extra_info.update(device=DEVICE, images=images, ms_per_call=ms, ms_per_image=ms / images)
    if nbytes:
        benchmark.extra_info.update(gb_per_s=nbytes / ms / 1e6, bytes_per_call=nbytes)
    return ms


def inner_step(d, classes: int | None = None):
    """One inner step of the Distiller ``d`` as a call (window mining and matching of its classes, then the
    network update, synced), on S at its initialisation and a fresh network; with ``classes``, only the first
    that many classes are matched, as one of several processes would. Returns ``(step, (syn, net, opt, bank))``
    so that a caller can also run the pieces one by one."""
    if classes is not None:
        d.classes = list(range(classes))
        d.own_index = torch.arange(classes, device=d.device)
        d.group_index = {(c,): torch.tensor([c], device=d.device) for c in d.classes}
    d.seed()
    syn = d.init_synthetic().requires_grad_(True)
    net, opt = d.fresh_network()
    bank = d.class_embeddings(net, syn)

    def step():
        syn.grad = None
        d.matching_gradient(net, syn, bank, 0)
        d.train_network(net, opt, syn)
        sync()

    return step, (syn, net, opt, bank)


def conv_gemm_share(prof) -> float:
    """The share of a CPU profile's self time spent in convolution and matrix-multiply kernels (forward and
    backward); the rest is the norm, activations, pooling outside GEMMs, elementwise ops and overhead."""
    total = inside = 0.0
    for e in prof.key_averages():
        total += e.self_cpu_time_total
        if "convolution" in e.key or e.key in ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"):
            inside += e.self_cpu_time_total
    return inside / total if total else 0.0
