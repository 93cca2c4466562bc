"""The Triton ``jitter_copies`` kernel: seeding, noise statistics and strided input (the reference twin
uses torch's generator, so the two agree in distribution, not bit for bit).

Launch sizes and devices: see tests/kernel_params.py.
"""
import pytest
import torch

from kernel_params import DEVICES, cuda_only, gen
from udd_fast import kernels


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["gaussian", "uniform", "salt_pepper"])
def test_jitter_copies_seeding(device, kind):
    x = torch.rand(2, 3, 8, 8, generator=gen(6)).to(device)
    a = kernels.jitter_copies(x, 3, 0.2, kind, seed=7)
    assert a.shape == (3, 2, 3, 8, 8) and a.dtype == x.dtype
    assert torch.equal(a, kernels.jitter_copies(x, 3, 0.2, kind, seed=7))
    assert not torch.equal(a, kernels.jitter_copies(x, 3, 0.2, kind, seed=8))
    assert not torch.equal(a[0], a[1])  # the copies differ from each other


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


def test_jitter_copies_rejects_unknown_kind():
    with pytest.raises(ValueError):
        kernels.jitter_copies(torch.zeros(1, 1, 2, 2), 1, 0.1, "poisson")


@cuda_only
def test_cuda_jitter_copies_large_batch():
    x = torch.rand(64, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    out = kernels.jitter_copies(x, 4, 0.1, "gaussian", seed=1)
    noise = out.float() - x.float()
    assert abs(noise.mean().item()) < 1e-3 and abs(noise.std().item() / 0.1 - 1) < 0.02
    assert torch.equal(out, kernels.jitter_copies(x, 4, 0.1, "gaussian", seed=1))
