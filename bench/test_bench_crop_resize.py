"""crop_resize forward + backward, in ms per synthetic image: the compiled op against a loop of crops with
``F.interpolate(mode="bilinear", align_corners=False)`` and against torchvision ``roi_align``.

Run with ``pytest bench/test_bench_crop_resize.py --benchmark-only``; results of one shape and device share a
benchmark group, and ``extra_info["ms_per_image"]`` makes them comparable across shapes. ``gb_per_s`` counts
the fewest bytes the pair must move (forward: read the images, write the crops; backward: read the crops'
gradient, write the images'), so on a GPU it reads against the memory bandwidth (about 4.3 TB/s measured on
an H200).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from udd_fast import _extension, reference
from udd_fast.regions import candidate_windows

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (name, images B, channels, size, windows per image P)
SHAPES = [
    ("fmnist28", 10, 1, 28, 8),
    ("fmnist28", 100, 1, 28, 8),
    ("cifar32", 10, 3, 32, 8),
    ("cifar32", 100, 3, 32, 8),
    ("imagenet224", 10, 3, 224, 8),
    ("imagenet224", 100, 3, 224, 8),  # GPU only: 1 GB moved per step, well past launch and sync overheads
]


def extension_impl(images, windows, index):
    return torch.ops.udd_fast.crop_resize(images, windows, index, False)


def interpolate_loop_impl(images, windows, index):
    _, _, h, w = images.shape
    scale = torch.tensor([h, w, h, w], dtype=torch.float32)
    boxes = (windows.cpu() * scale).round().long().tolist()
    crops = []
    for b, row in enumerate(index.cpu().tolist()):
        for k in row:
            y0, x0, y1, x1 = boxes[k]
            crop = images[b:b + 1, :, y0:y1, x0:x1]
            crops.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False))
    return torch.cat(crops)


# the reference twin is torchvision roi_align
IMPLS = {"extension": extension_impl, "interpolate_loop": interpolate_loop_impl, "roi_align": reference.crop_resize}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{s[0]}-B{s[1]}" for s in SHAPES])
@pytest.mark.parametrize("device", DEVICES)
def test_crop_resize_forward_backward(benchmark, device, shape, impl):
    if impl == "extension" and not _extension.has_kernel(device):
        pytest.skip(f"udd_fast extension not built, or built without a {device} kernel")
    name, b, c, size, p = shape
    if device == "cpu" and b * size * size > 10 * 224 * 224:
        pytest.skip("GPU-sized case")
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(b, c, size, size, generator=gen).to(device).requires_grad_()
    windows = candidate_windows().to(device)
    index = torch.stack([torch.randperm(len(windows), generator=gen)[:p] for _ in range(b)]).to(device)
    grad = torch.randn(b * p, c, size, size, generator=gen).to(device)
    fn = IMPLS[impl]

    def step():
        images.grad = None
        fn(images, windows, index).backward(grad)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"crop_resize fwd+bwd {name} B={b} C={c} P={p} {device}"
    benchmark.extra_info.update(device=device, images=b, channels=c, size=size, windows_per_image=p,
                                threads=torch.get_num_threads())
    benchmark(step)
    mean = benchmark.stats.stats.mean
    moved = 2 * (b + b * p) * c * size * size * images.element_size()
    benchmark.extra_info.update(ms_per_image=mean * 1e3 / b, gb_per_s=moved / mean / 1e9)
