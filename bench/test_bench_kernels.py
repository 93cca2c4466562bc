"""Milliseconds per synthetic image, and the achieved GB/s, of each Triton kernel against its torch reference
at the paper's shapes, each kernel timed alone (``timing.timed``: on CUDA ``triton.testing.do_bench``).

    pytest bench/test_bench_kernels.py --benchmark-only

Each benchmark group pairs ``reference`` and ``triton`` on one case and dtype; ``triton`` rows need CUDA and
skip on CPU (there Triton runs in its interpreter, a correctness tool), as do the GPU-sized reference rows.
GB/s counts one pass over the kernel's inputs and outputs (:func:`nbytes`), against ~4.3 TB/s on an H200.
Shapes:

* CIFAR (ConvNet-3, 32 px): last feature map 128x4x4 (activation policy), input gradient 3x32x32
  (gradient policy), B = 100 synthetic images;
* ImageNet subsets (ResNetAp-10, 224 px): feature maps 512x7x7 (B = 20) and 128x28x28 (B = 10), input
  gradient 3x224x224 (B = 20).

``jitter_score`` scores the feature maps of B images and of their M jittered copies; ``jitter_copies`` makes
the M copies of B input images.
"""
import pytest
import torch

from timing import DEVICE, timed
from udd_fast import reference
from udd_fast.regions import candidate_windows

M = 4  # jittered copies
P = 4  # windows kept per image
STRENGTH = 0.1
CPU_MAX_BYTES = 64 << 20  # reference rows on CPU only up to this much data per call

# name: (B, feature map C, h, w, pooling mode, input C, input H)
CASES = {
    "cifar-convnet3-4x4": (100, 128, 4, 4, "value", 3, 32),
    "cifar-input-grad": (100, 3, 32, 32, "abs", 3, 32),
    "imagenet-resnetap10-7x7": (20, 512, 7, 7, "value", 3, 224),
    "imagenet-resnetap10-28x28": (10, 128, 28, 28, "value", 3, 224),
    "imagenet-input-grad": (20, 3, 224, 224, "abs", 3, 224),
}
JITTER_CASES = ["cifar-convnet3-4x4", "imagenet-resnetap10-7x7", "imagenet-resnetap10-28x28"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def implementation(name, nbytes):
    if name == "reference":
        if DEVICE == "cpu" and nbytes > CPU_MAX_BYTES:
            pytest.skip("GPU-sized case")
        return reference
    if DEVICE != "cuda":
        pytest.skip("Triton is timed on CUDA only: on CPU it runs in the interpreter, which is not a speed path")
    from udd_fast import kernels

    return kernels


def nbytes(*tensors: torch.Tensor) -> int:
    """Bytes of ``tensors``: the inputs a kernel reads once and the outputs it writes."""
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
def test_window_pool(benchmark, case, dtype, impl):
    b, c, h, w, mode, _, _ = CASES[case]
    benchmark.group = f"window_pool {case} {dtype}"
    fmap = torch.randn(b, c, h, w, device=DEVICE).to(DTYPES[dtype])
    win = candidate_windows().to(DEVICE)
    out = torch.empty(b, len(win))
    ops = implementation(impl, nbytes(fmap))
    timed(benchmark, lambda: ops.window_pool(fmap, win, mode), b, nbytes(fmap, out))


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", JITTER_CASES)
def test_jitter_score(benchmark, case, dtype, impl):
    b, c, h, w, mode, _, _ = CASES[case]
    benchmark.group = f"jitter_score {case} M={M} {dtype}"
    fmap = torch.randn(b, c, h, w, device=DEVICE)
    jittered = (fmap + 0.1 * torch.randn(M, b, c, h, w, device=DEVICE)).to(DTYPES[dtype])
    fmap = fmap.to(DTYPES[dtype])
    win = candidate_windows().to(DEVICE)
    outputs = (torch.empty(b, len(win)), torch.empty(b, P, dtype=torch.int64))
    ops = implementation(impl, nbytes(fmap, jittered))
    timed(benchmark, lambda: ops.jitter_score(fmap, jittered, win, P, mode), b, nbytes(fmap, jittered, *outputs))


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", ["cifar-input-grad", "imagenet-input-grad"])
def test_jitter_copies(benchmark, case, dtype, impl):
    b, _, _, _, _, ci, size = CASES[case]
    benchmark.group = f"jitter_copies {case} M={M} {dtype}"
    images = torch.rand(b, ci, size, size, device=DEVICE).to(DTYPES[dtype])
    moved = nbytes(images) * (1 + M)  # read the images once, write M copies
    ops = implementation(impl, moved)
    timed(benchmark, lambda: ops.jitter_copies(images, M, STRENGTH, "gaussian", seed=1), b, moved)
