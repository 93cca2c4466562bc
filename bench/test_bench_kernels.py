"""Milliseconds per synthetic image of the Triton kernels and their torch references at the paper's shapes.

    pytest bench/test_bench_kernels.py --benchmark-only

Each benchmark group pairs ``reference`` and ``triton`` on one case, on CUDA when present, else on CPU where
only the reference runs (the Triton interpreter is a correctness tool, not a speed path). Shapes:

* CIFAR (ConvNet-3, 32 px): last feature map 128x4x4 (activation policy), input gradient 3x32x32
  (gradient policy), B = 100 synthetic images;
* ImageNet subsets (ResNetAp-10, 224 px): feature maps 512x7x7 (B = 20) and 128x28x28 (B = 10), input
  gradient 3x224x224 (B = 20).

``jitter+score`` times one jitter policy step without the network: M jittered copies of the input images
(``jitter_copies``), then ``jitter_score`` on the feature maps of the images and of precomputed jittered features.
"""
import pytest
import torch

from timing import DEVICE, timed
from udd_fast import reference
from udd_fast.regions import candidate_windows

M = 4  # jittered copies
P = 4  # windows kept per image
STRENGTH = 0.1

# name: (B, feature map C, h, w, pooling mode, input C, input H)
CASES = {
    "cifar-convnet3-4x4": (100, 128, 4, 4, "value", 3, 32),
    "cifar-input-grad": (100, 3, 32, 32, "abs", 3, 32),
    "imagenet-resnetap10-7x7": (20, 512, 7, 7, "value", 3, 224),
    "imagenet-resnetap10-28x28": (10, 128, 28, 28, "value", 3, 224),
    "imagenet-input-grad": (20, 3, 224, 224, "abs", 3, 224),
}
JITTER_CASES = ["cifar-convnet3-4x4", "imagenet-resnetap10-7x7", "imagenet-resnetap10-28x28"]


def implementation(name):
    if name == "reference":
        return reference
    if DEVICE != "cuda":
        pytest.skip("Triton is timed on CUDA only: on CPU it runs in the interpreter, which is not a speed path")
    from udd_fast import kernels

    return kernels


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("case", list(CASES))
def test_window_pool(benchmark, case, impl):
    ops = implementation(impl)
    b, c, h, w, mode, _, _ = CASES[case]
    benchmark.group = f"window_pool {case}"
    fmap = torch.randn(b, c, h, w, device=DEVICE)
    win = candidate_windows().to(DEVICE)
    timed(benchmark, lambda: ops.window_pool(fmap, win, mode), b)


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("case", JITTER_CASES)
def test_jitter_and_score(benchmark, case, impl):
    ops = implementation(impl)
    b, c, h, w, mode, ci, size = CASES[case]
    benchmark.group = f"jitter+score {case}"
    images = torch.rand(b, ci, size, size, device=DEVICE)
    fmap = torch.randn(b, c, h, w, device=DEVICE)
    jittered = fmap + 0.1 * torch.randn(M, b, c, h, w, device=DEVICE)
    win = candidate_windows().to(DEVICE)

    def step():
        copies = ops.jitter_copies(images, M, STRENGTH, "gaussian", seed=0)
        return copies, ops.jitter_score(fmap, jittered, win, P, mode)

    timed(benchmark, step, b)
