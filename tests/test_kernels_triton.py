"""Triton kernels against their plain-torch twins in ``udd_fast.reference``.

On CPU the kernels run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), where each
program instance costs milliseconds: shapes here keep every launch to about 100 programs or fewer. The
``cuda`` parametrizations and the CUDA section at the end run the same checks on a GPU when one is present.
"""
import os

import pytest
import torch

from udd_fast import kernels, ops, reference
from windows import default_windows, random_windows

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="Triton on CPU needs TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The reference pools the same rounded input (fmap.float()), so every dtype differs only in summation order.
TOL = dict(atol=2e-5, rtol=2e-5)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------- window_pool


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["value", "abs"])
def test_window_pool_default_windows_on_4x4_exact(device, mode):
    win = default_windows().to(device)
    x = torch.randn(3, 5, 4, 4, generator=gen(1)).to(device)
    torch.testing.assert_close(kernels.window_pool(x, win, mode), reference.window_pool(x, win, mode), **TOL)

    # One hot pixel at (1, 1): the 1/3 top-left window covers [0, 4/3)^2, so the pixel weighs (1/3)^2 of an
    # area of (4/3)^2 = 1/16; the 1/2 one covers it fully (1/4); the 2/3 one covers [0, 8/3)^2 (9/64).
    one = torch.zeros(1, 1, 4, 4, device=device)
    one[0, 0, 1, 1] = 1.0
    got = kernels.window_pool(one, win, mode)[0].cpu()
    assert got[0].item() == pytest.approx(1 / 16, abs=1e-7)
    assert got[4].item() == pytest.approx(1 / 4, abs=1e-7)
    assert got[8].item() == pytest.approx(9 / 64, abs=1e-7)
    assert got[[1, 2, 3, 5, 6, 7]].abs().max().item() == 0.0  # the other corners of groups 1/3 and 1/2
    assert got[11].item() == pytest.approx((2 / 3) ** 2 / (8 / 3) ** 2, abs=1e-7)  # BR 2/3: [4/3, 4)^2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 12, 32])
@pytest.mark.parametrize("mode", ["value", "abs"])
def test_window_pool_matches_reference(device, dtype, n, mode):
    g = gen(n)
    win = random_windows(n, g).to(device)
    x = torch.randn(3, 6, 7, 5, generator=g).to(device, dtype)  # odd h, w: not multiples of any block
    got = kernels.window_pool(x, win, mode)
    assert got.dtype == torch.float32 and got.shape == (3, n)
    torch.testing.assert_close(got, reference.window_pool(x, win, mode), **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "channel_slice", "expanded"])
def test_window_pool_strided_inputs(device, layout):
    g = gen(2)
    win = random_windows(12, g, outside=True).to(device)
    base = torch.randn(4, 10, 9, 11, generator=g).to(device)
    x = {"channels_last": base.to(memory_format=torch.channels_last),
         "transposed": base.transpose(2, 3),
         "channel_slice": base[:, 1::3],
         "expanded": base[:1, :, :, :1].expand(4, 10, 9, 11)}[layout]
    assert layout == "channels_last" or not x.is_contiguous()
    for mode in ("value", "abs"):
        torch.testing.assert_close(kernels.window_pool(x, win, mode), reference.window_pool(x, win, mode), **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split", [None, (2, 1), (1, 3), (3, 2)])
def test_window_pool_many_tiles_and_slices(device, split):
    # 37x29 = 1073 pixels > BLOCK_HW and 40 channels > BLOCK_C: several tiles and channel chunks per image;
    # split divides each image among up to 6 programs whose partials are summed in a fixed order.
    g = gen(3)
    win = random_windows(12, g).to(device)
    x = torch.randn(5, 40, 37, 29, generator=g).to(device, torch.bfloat16)
    want = reference.window_pool(x, win, "abs")
    got = kernels.window_pool(x, win, "abs", split=split)
    torch.testing.assert_close(got, want, **TOL)
    assert torch.equal(got, kernels.window_pool(x, win, "abs", split=split))  # deterministic


def test_window_pool_rejects_bad_arguments():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError):
        kernels.window_pool(x, default_windows(), "max")
    with pytest.raises(ValueError):
        kernels.window_pool(x, torch.zeros(3, 3))


# ---------------------------------------------------------------------------------------------- jitter_score


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


def test_jitter_score_rejects_bad_arguments():
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError):
        kernels.jitter_score(x, x.unsqueeze(0), default_windows(), 13)
    with pytest.raises(ValueError):
        kernels.jitter_score(x, x, default_windows(), 2)


# ---------------------------------------------------------------------------------------------------- jitter


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["gaussian", "uniform", "salt_pepper"])
def test_jitter_seeding(device, kind):
    x = torch.rand(2, 3, 8, 8, generator=gen(6)).to(device)
    a = kernels.jitter(x, 3, 0.2, kind, seed=7)
    assert a.shape == (3, 2, 3, 8, 8) and a.dtype == x.dtype
    assert torch.equal(a, kernels.jitter(x, 3, 0.2, kind, seed=7))
    assert not torch.equal(a, kernels.jitter(x, 3, 0.2, kind, seed=8))
    assert not torch.equal(a[0], a[1])  # the copies differ from each other


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,strength", [("gaussian", 0.3), ("uniform", 0.3), ("salt_pepper", 0.2)])
def test_jitter_statistics(device, dtype, kind, strength):
    # 3 x 12288 = 36864 samples from 3 x 12 programs: the standard error of the mean is ~0.5 % of strength.
    x = torch.rand(4, 3, 32, 32, generator=gen(7)).to(device, dtype)
    out = kernels.jitter(x, 3, strength, kind, seed=11)
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
def test_jitter_reads_strided_input(device):
    base = torch.rand(3, 5, 9, 7, generator=gen(8)).to(device, torch.float16)
    for x in (base.transpose(2, 3), base[:, ::2], base.to(memory_format=torch.channels_last)):
        out = kernels.jitter(x, 2, 0.0, "gaussian")
        assert out.is_contiguous() and torch.equal(out, x.unsqueeze(0).expand(2, *x.shape))
        assert torch.equal(kernels.jitter(x, 2, 0.0, "salt_pepper"), out)


def test_jitter_rejects_unknown_kind():
    with pytest.raises(ValueError):
        kernels.jitter(torch.zeros(1, 1, 2, 2), 1, 0.1, "poisson")


# ------------------------------------------------------------------------------------------------ dispatch


@pytest.fixture
def fast_backend():
    before = ops.get_backend()
    ops.set_backend("fast")
    try:
        yield
    finally:
        ops.set_backend(before)


@pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(), reason="Triton needs a GPU or the interpreter")
def test_ops_routes_to_kernels_under_fast_backend(fast_backend, monkeypatch):
    calls = []
    for name in ("window_pool", "jitter_score", "jitter"):
        fn = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _fn=fn, _name=name, **k: calls.append(_name) or _fn(*a, **k))
    device = "cpu" if INTERPRET else "cuda"
    win = default_windows().to(device)
    x = torch.randn(2, 4, 4, 4, generator=gen(9)).to(device)
    torch.testing.assert_close(ops.window_pool(x, win, "abs"), reference.window_pool(x, win, "abs"), **TOL)
    jit = ops.jitter(x, 2, 0.1, "gaussian", seed=3)
    sigma, index = ops.jitter_score(x, jit, win, 3)
    want_sigma, want_index = reference.jitter_score(x, jit, win, 3)
    torch.testing.assert_close(sigma, want_sigma, atol=1e-5, rtol=1e-4)
    assert torch.equal(index, want_index)
    assert calls == ["window_pool", "jitter", "jitter_score"]


# ------------------------------------------------------------------------ CUDA: real shapes and launch plans

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda_only
@pytest.mark.parametrize("shape,mode", [((10, 512, 7, 7), "value"), ((20, 128, 28, 28), "value"),
                                        ((100, 128, 4, 4), "value"), ((16, 3, 224, 224), "abs")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_window_pool_real_shapes(shape, mode, dtype):
    # Small B makes the launch plan split images across programs; large B runs one program per image.
    win = default_windows().cuda()
    x = torch.randn(*shape, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
    got = kernels.window_pool(x, win, mode)
    torch.testing.assert_close(got, reference.window_pool(x, win, mode), atol=1e-5, rtol=1e-4)
    assert torch.equal(got, kernels.window_pool(x, win, mode))


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


@cuda_only
def test_cuda_jitter_large_batch():
    x = torch.rand(64, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    out = kernels.jitter(x, 4, 0.1, "gaussian", seed=1)
    noise = out.float() - x.float()
    assert abs(noise.mean().item()) < 1e-3 and abs(noise.std().item() / 0.1 - 1) < 0.02
    assert torch.equal(out, kernels.jitter(x, 4, 0.1, "gaussian", seed=1))
