"""The Triton ``window_pool`` kernel against its plain-torch twin in ``udd_fast.reference``.

Launch sizes and devices: see tests/kernel_params.py.
"""
import pytest
import torch

from kernel_params import DEVICES, DTYPES, TOL, cuda_only, gen
from udd_fast import kernels, reference
from udd_fast.errors import UDDError
from udd_fast.kernels import utils
from windows import default_windows, random_windows


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 0, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0)])
def test_window_pool_without_channels_or_pixels_is_nan_like_the_reference(device, shape):
    x = torch.zeros(shape, device=device)
    got = kernels.window_pool(x, default_windows().to(device))
    torch.testing.assert_close(got, reference.window_pool(x, default_windows().to(device)), equal_nan=True)
    assert got.isnan().all()


@pytest.mark.parametrize("device", DEVICES)
def test_window_pool_many_windows(device):
    # 200 windows: the accumulator tile is 256 windows wide and 8 pixels long.
    g = gen(12)
    win = random_windows(200, g, outside=True).to(device)
    x = torch.randn(2, 5, 9, 7, generator=g).to(device)
    torch.testing.assert_close(kernels.window_pool(x, win, "abs"), reference.window_pool(x, win, "abs"), **TOL)


def test_window_pool_rejects_bad_arguments():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError):
        kernels.window_pool(x, default_windows(), "max")
    with pytest.raises(ValueError):
        kernels.window_pool(x, torch.zeros(3, 3))
    with pytest.raises(UDDError, match="at most 256"):
        kernels.window_pool(x, torch.rand(257, 4))


def test_window_pool_refuses_launches_past_the_grid_and_32_bit_offsets():
    # 2^21 rows of 1 pixel in 32-row tiles times 4 channel chunks: 262144 slices > 65535 (grid dimension y).
    # An expanded map needs no memory; the error comes before any launch.
    tall = torch.zeros(1, 1, 1, 1).expand(1, 64, 2 ** 21, 1)
    with pytest.raises(UDDError, match="65535"):
        kernels.window_pool(tall, default_windows(), split=(2 ** 16, 4))
    wide = torch.empty_strided((1, 2, 2, 2), (0, 2 ** 31, 2, 1), device="meta")
    with pytest.raises(UDDError, match="2\\^31"):
        utils.check_span(wide, slice(1, None), "window_pool")


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
