"""Region search per policy, in ms per synthetic image: our single-pass scoring (one network pass, then
window pooling through ``udd_fast.ops``, with the fast kernels or the plain-torch reference) against the
naive scheme of the paper's Fig. 4(a), which crops every candidate window, upsamples it and runs the network
once per window. The fast single pass is timed on CUDA only (on CPU Triton runs in its interpreter); on CUDA
every scheme is timed with ``triton.testing.do_bench`` (``timing.timed``).

    pytest bench/test_bench_policies.py --benchmark-only

CIFAR size: ConvNet-3 (width 128) on 10 images of 3x32x32. ImageNet-subset size: ResNetAp-10 on 2 images
of 3x224x224 (kept small so the naive scheme finishes on CPU).
"""
import pytest
import torch
import torch.nn.functional as F

from timing import DEVICE, timed
from udd_fast import ops
from udd_fast.models import build_model
from udd_fast.regions import RegionConfig, candidate_windows, select_windows

CASES = {"cifar-convnet3": ("convnet", 10, 32), "imagenet-resnetap10": ("resnetap10", 2, 224)}
POLICIES = ("activation", "gradient", "jitter")


def naive_scores(policy, net, x, y, windows, cfg: RegionConfig):
    """Fig. 4(a): the network sees each window on its own; a window's score is the network's response to it
    (mean last-layer activation, input-gradient magnitude, or the activation change under jitter)."""
    scores = []
    for n in range(len(windows)):
        crop = ops.crop_resize(x, windows, torch.full((x.shape[0], 1), n, device=x.device))
        if policy == "activation":
            with torch.no_grad():
                scores.append(net.feature_maps(crop)[-1].mean((1, 2, 3)))
        elif policy == "gradient":
            crop.requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(net(crop), y), crop)
            scores.append(grad.abs().mean((1, 2, 3)))
        else:
            with torch.no_grad():
                base = net.feature_maps(crop)[-1].mean((1, 2, 3))
                noisy = ops.jitter_copies(crop, cfg.m, cfg.jitter_strength, cfg.jitter_kind, seed=n).flatten(0, 1)
                shifted = net.feature_maps(noisy)[-1].mean((1, 2, 3)).view(cfg.m, -1).mean(0)
                scores.append((base - shifted).abs())
    return ops.lowest_p(torch.stack(scores, 1), cfg.p)


@pytest.mark.parametrize("scheme", ["single-pass-fast", "single-pass-reference", "naive-per-window"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("case", list(CASES))
def test_region_search(benchmark, case, policy, scheme):
    if scheme == "single-pass-fast" and DEVICE == "cpu":
        pytest.skip("the fast kernels are timed on CUDA only: on CPU Triton runs in its interpreter")
    model, b, size = CASES[case]
    torch.manual_seed(0)
    net = build_model(model, 3, 10, size).to(DEVICE)
    x = torch.rand(b, 3, size, size, device=DEVICE)
    y = torch.arange(b, device=DEVICE) % 10
    windows = candidate_windows().to(DEVICE)
    cfg = RegionConfig(policy=policy, p=8, m=2)
    if scheme.startswith("single-pass"):
        def fn():
            ops.set_backend(scheme.split("-")[-1])
            try:
                return select_windows(net, x, y, windows, lambda t: t, cfg)
            finally:
                ops.set_backend("auto")
    else:
        def fn():
            return naive_scores(policy, net, x, y, windows, cfg)

    benchmark.group = f"region search {policy} {case} {DEVICE}"
    benchmark.extra_info.update(scheme=scheme)
    timed(benchmark, fn, b)
