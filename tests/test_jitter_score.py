"""The Triton ``jitter_score`` kernel (sigma per window and the lowest-p indices, one fused pass) against its
plain-torch twin in ``udd_fast.reference``.

Launch sizes and devices: see tests/kernel_params.py.
"""
import pytest
import torch

from kernel_params import DEVICES, DTYPES, cuda_only, gen
from udd_fast import kernels, reference
from windows import default_windows, random_windows


def jittered_copies(x, m, g, scale=0.1):
    return x.unsqueeze(0) + scale * torch.randn(m, *x.shape, generator=g).to(x.device, x.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,p,m,mode", [(1, 1, 1, "value"), (12, 4, 3, "value"), (12, 12, 2, "abs"),
                                        (32, 7, 3, "abs")])
def test_jitter_score_matches_reference(device, dtype, n, p, m, mode):
    g = gen(10 + n)
    win = random_windows(n, g).to(device)
    x = torch.randn(4, 6, 7, 5, generator=g).to(device, dtype)
    jit = jittered_copies(x, m, g)
    sigma, index = kernels.jitter_score(x, jit, win, p, mode)
    want_sigma, want_index = reference.jitter_score(x, jit, win, p, mode)
    assert sigma.dtype == torch.float32 and index.dtype == torch.int64 and index.shape == (4, p)
    torch.testing.assert_close(sigma, want_sigma, atol=1e-5, rtol=1e-4)
    assert torch.equal(index, want_index)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split", [None, (3, 1), (2, 2)])
def test_jitter_score_slices_and_strides(device, split):
    # Several pixel tiles and channel chunks; with split the last slice of each image sums the partials.
    g = gen(4)
    win = random_windows(12, g).to(device)
    x = torch.randn(3, 40, 23, 31, generator=g).to(device).to(memory_format=torch.channels_last)
    jit = jittered_copies(x.contiguous(), 2, g).transpose(0, 1).contiguous().transpose(0, 1)  # B-major storage
    assert not jit.is_contiguous()
    sigma, index = kernels.jitter_score(x, jit, win, 5, "value", split=split)
    want_sigma, want_index = reference.jitter_score(x, jit, win, 5, "value")
    torch.testing.assert_close(sigma, want_sigma, atol=1e-5, rtol=1e-4)
    assert torch.equal(index, want_index)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split", [None, (1, 2)])
def test_jitter_score_exact_ties_go_to_lower_index(device, split):
    win = default_windows()
    # Constant maps: all 12 sigmas tie exactly, so the lowest p are windows 0..p-1 in order.
    x = torch.full((2, 8, 4, 4), 0.75, device=device)
    jit = torch.stack([torch.full_like(x, 0.5), torch.full_like(x, 0.25)])
    sigma, index = kernels.jitter_score(x, jit, win, 6, split=split)
    assert torch.equal(sigma, torch.full_like(sigma, 0.375))
    assert torch.equal(index.cpu(), torch.arange(6).expand(2, 6))
    assert torch.equal(index.cpu(), reference.jitter_score(x.cpu(), jit.cpu(), win, 6)[1])

    # Left-right mirrored maps: each TL/TR and BL/BR pair ties, and the earlier window comes first. Window
    # edges must be exact binary fractions for the pairs to be mirror images (1 - 1/3 in fp32 is not), and the
    # map 8 wide: torch's CPU channel mean (the reference) is mirror-exact there, not on 6-wide rows.
    win = default_windows((3 / 16, 1 / 2, 11 / 16))  # 1.5, 4 and 5.5 pixels: fractional border pixels
    g = gen(5)
    half = torch.randn(3, 8, 6, 4, generator=g)
    x = torch.cat([half, half.flip(3)], 3)
    jit = jittered_copies(x, 3, g, scale=0.5)
    jit = torch.cat([jit[..., :4], jit[..., :4].flip(4)], 4)
    want_sigma, want_index = reference.jitter_score(x, jit, win, 12, "abs")
    sigma, index = kernels.jitter_score(x.to(device), jit.to(device), win, 12, "abs", split=split)
    assert torch.equal(sigma[:, 0::4], sigma[:, 1::4]) and torch.equal(sigma[:, 2::4], sigma[:, 3::4])
    torch.testing.assert_close(sigma.cpu(), want_sigma, atol=1e-5, rtol=1e-4)
    assert torch.equal(index.cpu(), want_index)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 0, 4, 4), (2, 3, 0, 4)])
def test_jitter_score_without_channels_or_pixels_is_nan_like_the_reference(device, shape):
    x = torch.zeros(shape, device=device)
    sigma, index = kernels.jitter_score(x, x.unsqueeze(0), default_windows().to(device), 5)
    want_sigma, want_index = reference.jitter_score(x, x.unsqueeze(0), default_windows().to(device), 5)
    torch.testing.assert_close(sigma, want_sigma, equal_nan=True)
    assert sigma.isnan().all() and torch.equal(index, want_index)


@pytest.mark.parametrize("device", DEVICES)
def test_jitter_score_many_windows_and_slices(device):
    # 200 windows, 30 of them repeated (exact ties, which go to the lower index): the ranking compares them
    # 4 at a time. 40 slices per image: the finishing program sums the partials in chunks of 32.
    g = gen(13)
    win = random_windows(170, g, outside=True)
    win = torch.cat([win, win[:30]])[torch.randperm(200, generator=g)].to(device)
    x = torch.randn(2, 3, 160, 5, generator=g).to(device)
    jit = jittered_copies(x, 2, g)
    want_sigma, want_index = reference.jitter_score(x, jit, win, 50)
    for split in (None, (40, 1)):
        sigma, index = kernels.jitter_score(x, jit, win, 50, split=split)
        torch.testing.assert_close(sigma, want_sigma, atol=1e-5, rtol=1e-4)
        assert torch.equal(index, want_index)


def test_jitter_score_rejects_bad_arguments():
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError):
        kernels.jitter_score(x, x.unsqueeze(0), default_windows(), 13)
    with pytest.raises(ValueError):
        kernels.jitter_score(x, x, default_windows(), 2)


@cuda_only
@pytest.mark.parametrize("shape,m", [((10, 512, 7, 7), 4), ((20, 128, 28, 28), 8), ((100, 128, 4, 4), 4),
                                     ((2, 64, 56, 56), 2)])
def test_cuda_jitter_score_real_shapes(shape, m):
    win = default_windows().cuda()
    x = torch.randn(*shape, device="cuda")
    jit = x.unsqueeze(0) + 0.1 * torch.randn(m, *shape, device="cuda")
    for _ in range(3):  # the last-slice election must be stable run to run
        sigma, index = kernels.jitter_score(x, jit, win, 4)
        want_sigma, want_index = reference.jitter_score(x, jit, win, 4)
        torch.testing.assert_close(sigma, want_sigma, atol=1e-5, rtol=1e-4)
        assert torch.equal(index, want_index)
