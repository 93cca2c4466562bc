"""The Triton ``jitter_copies`` kernel against its plain-torch twin, which computes the same counter-based
noise (``reference.jitter_noise``): the same bits for every element, so uniform and salt-and-pepper copies
agree exactly and Gaussian ones to within the last bits of log / sin / cos. Also seeding, noise statistics,
strided input and the independence of an image's noise from the batch it is in.

Launch sizes and devices: see tests/kernel_params.py.
"""
import pytest
import torch

from kernel_params import DEVICES, cuda_only, gen
from udd_fast import kernels, reference
from udd_fast.errors import UDDError
from udd_fast.kernels import utils
from windows import default_windows

KINDS = ["gaussian", "uniform", "salt_pepper"]
SEED = 12345 + (7 << 32)  # both Philox key words non-zero


def assert_same_noise(got, want, kind):
    """Gaussian: the backends' log / sin / cos differ in the last bits (GPU: approximate instructions, error
    < 1e-5 on a unit normal); reduced precision: one rounding of ``x + noise`` may land one ulp apart (the
    interpreter truncates fp32 -> bf16, the GPU and torch round to nearest); otherwise bit for bit."""
    reduced = got.dtype in (torch.float16, torch.bfloat16)
    if kind == "gaussian" or reduced:
        rtol = torch.finfo(got.dtype).eps if reduced else 0.0
        torch.testing.assert_close(got, want, atol=1e-5, rtol=rtol)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_jitter_copies_matches_reference(device, dtype, kind):
    x = torch.rand(3, 2, 7, 5, generator=gen(5), dtype=torch.float64).to(device, dtype)  # 70: not a multiple of 4
    got = kernels.jitter_copies(x, 2, 0.3, kind, seed=SEED, first_image=5)
    want = reference.jitter_copies(x, 2, 0.3, kind, seed=SEED, first_image=5)
    assert got.shape == want.shape == (2, 3, 2, 7, 5) and got.dtype == want.dtype == dtype
    assert_same_noise(got, want, kind)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4,), (4, 9), (2, 4, 3, 2, 5)])
def test_jitter_copies_any_rank(device, shape):
    # dim 0 indexes images whatever the rank; > 4 dims are read contiguous
    x = torch.rand(*shape, generator=gen(4)).to(device)
    got = kernels.jitter_copies(x, 3, 0.2, "uniform", seed=3)
    assert got.shape == (3, *shape)
    assert torch.equal(got, reference.jitter_copies(x, 3, 0.2, "uniform", seed=3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_noise_depends_on_the_global_image_index_not_the_batch(device, kind):
    # Classes split over processes: each process jitters its own images, numbered from first_image.
    x = torch.rand(6, 3, 5, 5, generator=gen(2)).to(device)
    for impl in (kernels, reference):
        whole = impl.jitter_copies(x, 2, 0.2, kind, seed=9)
        parts = [impl.jitter_copies(x[i:j], 2, 0.2, kind, seed=9, first_image=i) for i, j in ((0, 1), (1, 4), (4, 6))]
        assert torch.equal(whole, torch.cat(parts, 1))
        assert not torch.equal(whole[:, :3], impl.jitter_copies(x[3:], 2, 0.2, kind, seed=9))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_jitter_copies_seeding(device, kind):
    x = torch.rand(2, 3, 8, 8, generator=gen(6)).to(device)
    a = kernels.jitter_copies(x, 3, 0.2, kind, seed=7)
    assert a.shape == (3, 2, 3, 8, 8) and a.dtype == x.dtype
    assert torch.equal(a, kernels.jitter_copies(x, 3, 0.2, kind, seed=7))
    assert not torch.equal(a, kernels.jitter_copies(x, 3, 0.2, kind, seed=8))
    assert not torch.equal(a, kernels.jitter_copies(x, 3, 0.2, kind, seed=7 + (1 << 32)))  # the high key word
    assert not torch.equal(a[0], a[1])  # the copies differ from each other


def test_jitter_copies_rejects_bad_arguments():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError):
        kernels.jitter_copies(x, 1, 0.1, "poisson")
    for seed, first in ((-1, 0), (1 << 63, 0), (0, -1)):
        with pytest.raises(UDDError):
            kernels.jitter_copies(x, 1, 0.1, seed=seed, first_image=first)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,strength", [("gaussian", 0.3), ("uniform", 0.3), ("salt_pepper", 0.2)])
def test_jitter_copies_statistics(device, dtype, kind, strength):
    # 3 x 12288 = 36864 samples from 3 x 12 programs: the standard error of the mean is ~0.5 % of strength.
    x = torch.rand(4, 3, 32, 32, generator=gen(7)).to(device, dtype)
    out = kernels.jitter_copies(x, 3, strength, kind, seed=11)
    assert out.dtype == dtype
    if kind == "salt_pepper":
        hit = out != x.unsqueeze(0)  # x in [0, 1) has (almost) no exact 0 / 1 values to hide a hit
        rate = hit.float().mean().item()
        assert abs(rate - strength) < 0.01
        assert abs((out[hit] == 1).float().mean().item() - 0.5) < 0.02
        assert torch.all((out[hit] == 0) | (out[hit] == 1))
        return
    noise = (out.float() - x.float().unsqueeze(0)).flatten()
    std = strength if kind == "gaussian" else strength / 3 ** 0.5
    slack = 0.02 if dtype == torch.float32 else 0.04  # bf16 rounds x + noise to 8 significant bits
    assert abs(noise.mean().item()) < 0.02 * strength
    assert abs(noise.std().item() / std - 1) < slack
    if kind == "uniform":
        assert noise.abs().max().item() <= strength + 0.01  # + bf16 rounding of x + noise
    else:
        assert abs((noise.abs() < std).float().mean().item() - 0.6827) < 0.01  # Gaussian shape, not only std


@pytest.mark.parametrize("device", DEVICES)
def test_jitter_copies_reads_strided_input(device):
    base = torch.rand(3, 5, 9, 7, generator=gen(8)).to(device, torch.float16)
    for x in (base.transpose(2, 3), base[:, ::2], base.to(memory_format=torch.channels_last)):
        out = kernels.jitter_copies(x, 2, 0.0, "gaussian")
        assert out.is_contiguous() and torch.equal(out, x.unsqueeze(0).expand(2, *x.shape))
        assert torch.equal(kernels.jitter_copies(x, 2, 0.0, "salt_pepper"), out)
        # the noise follows the logical element index, not the memory layout
        assert torch.equal(kernels.jitter_copies(x, 2, 0.3, "uniform", seed=4),
                           kernels.jitter_copies(x.contiguous(), 2, 0.3, "uniform", seed=4))


@cuda_only
def test_cuda_jitter_copies_large_batch():
    x = torch.rand(64, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    out = kernels.jitter_copies(x, 4, 0.1, "gaussian", seed=1)
    noise = out.float() - x.float()
    assert abs(noise.mean().item()) < 1e-3 and abs(noise.std().item() / 0.1 - 1) < 0.02
    assert torch.equal(out, kernels.jitter_copies(x, 4, 0.1, "gaussian", seed=1))
    assert_same_noise(out[:, :2], reference.jitter_copies(x[:2], 4, 0.1, "gaussian", seed=1), "gaussian")


@cuda_only
def test_cuda_jitter_copies_many_copies_and_64_bit_offsets():
    # 70000 copies: more than a grid's second dimension holds (the grid is one-dimensional).
    x = torch.rand(2, 1, 2, 2, device="cuda")
    out = kernels.jitter_copies(x, 70000, 0.2, "uniform", seed=2)
    assert torch.equal(out[-3:], reference.jitter_copies(x, 70000, 0.2, "uniform", seed=2)[-3:])
    # 5 copies of 2^29 + 8 elements: output offsets past 2^31, where 32-bit indices would wrap.
    big = torch.rand(1, 2 ** 29 + 8, device="cuda", dtype=torch.float16)
    out = kernels.jitter_copies(big, 5, 0.0, "salt_pepper")  # strength 0: every copy equals the input
    assert out.shape == (5, 1, 2 ** 29 + 8)
    assert torch.equal(out[4, 0, -1024:], big[0, -1024:]) and torch.equal(out[3, 0, :1024], big[0, :1024])


@cuda_only
def test_cuda_launches_on_the_tensors_device(monkeypatch):
    # A tensor on cuda:k must be processed on cuda:k whatever device is current: the launch is guarded.
    seen = []
    real = torch.cuda.device

    class Recording(real):
        def __init__(self, device):
            seen.append(torch.device(device))
            super().__init__(device)

    monkeypatch.setattr(utils.torch.cuda, "device", Recording)
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    x = torch.rand(2, 3, 8, 8, device=device)
    kernels.jitter_copies(x, 2, 0.1)
    kernels.window_pool(x, default_windows().to(device))
    kernels.jitter_score(x, x.unsqueeze(0), default_windows().to(device), 2)
    assert len(seen) >= 3 and all(d == device for d in seen)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_cuda_second_device_while_first_is_current():
    with torch.cuda.device(0):
        x = torch.rand(2, 3, 8, 8, device="cuda:1")
        assert torch.equal(kernels.jitter_copies(x, 2, 0.2, "uniform", seed=1),
                           reference.jitter_copies(x, 2, 0.2, "uniform", seed=1))
