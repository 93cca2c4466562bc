"""The compiled op ``torch.ops.udd_fast.crop_resize`` against its reference twin and torchvision roi_align.

Forward and backward per dtype, window borders and odd sizes, channels_last, with_source, gradcheck and
gradgradcheck, opcheck, determinism across runs and thread counts, torch.compile, and the dispatch from
``udd_fast.ops`` (including the fallback when the build has no kernel for the tensors' device). The CUDA
section runs where a GPU is present.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.ops import roi_align

from udd_fast import _extension, ops, reference
from udd_fast.errors import UDDError
from windows import default_windows, random_windows

OP = torch.ops.udd_fast.crop_resize
OP_BACKWARD = torch.ops.udd_fast.crop_resize_backward
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# (rtol, atol) of the op against the float32/float64 reference on the same (rounded) input: float64 and
# float32 agree to rounding; float16/bfloat16 outputs are one rounding of the float32 result (half an ulp),
# and their gradients sum a few dozen terms accumulated in float32 before one final rounding.
FORWARD_TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5),
               torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}
BACKWARD_TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5),
                torch.float16: (2e-3, 2e-3), torch.bfloat16: (1e-2, 1e-2)}


def window_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_float(images, windows, index, with_source=False):
    """The reference evaluated in float32 (float64 stays float64) on the given, possibly rounded, images."""
    work = images if images.dtype == torch.float64 else images.float()
    return reference.crop_resize(work, windows, index, with_source)


def make_case(dtype, b=3, c=2, h=13, w=17, p=5, n_random=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    windows = torch.cat([default_windows(dtype=torch.float64), random_windows(n_random, gen)]).to(window_dtype(dtype))
    index = torch.randint(0, len(windows), (b, p), generator=gen)
    return images, windows, index


# ---------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_default_windows_all_corners(dtype):
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 13, 17, generator=gen, dtype=torch.float64).to(dtype)
    windows = default_windows(dtype=torch.float64).to(window_dtype(dtype))
    index = torch.stack([torch.randperm(12, generator=gen) for _ in range(4)])  # every window, every image
    out = OP(images, windows, index, False)
    assert out.shape == (48, 3, 13, 17) and out.dtype == dtype
    rtol, atol = FORWARD_TOL[dtype]
    torch.testing.assert_close(out.to(torch.float64), reference_float(images, windows, index).to(torch.float64),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_forward_equals_roi_align_random_windows(dtype):
    images, windows, index = make_case(dtype, b=4, c=3, h=17, w=13, p=6, n_random=20, seed=2)
    b, _, h, w = images.shape
    boxes = windows[index.flatten()] * torch.tensor([h, w, h, w], dtype=dtype)
    batch = torch.arange(b, dtype=dtype).repeat_interleave(index.shape[1])
    rois = torch.stack([batch, boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2]], 1)
    expected = roi_align(images, rois, (h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    rtol, atol = FORWARD_TOL[dtype]
    torch.testing.assert_close(OP(images, windows, index, False), expected, rtol=rtol, atol=atol)


def test_forward_odd_and_degenerate_windows():
    """Windows past the image (clamped and dropped samples), inverted and zero-size windows, 1-pixel axes."""
    windows = torch.tensor([[-0.6, -0.1, 0.4, 1.3], [0.9, 0.7, 0.2, 0.1], [0.5, 0.25, 0.5, 0.25],
                            [0.0, 0.0, 1.0, 1.0], [0.3, -2.0, 1.8, 0.2]], dtype=torch.float64)
    for shape in ((2, 2, 9, 11), (2, 1, 1, 6), (2, 1, 5, 1)):
        images = torch.randn(*shape, dtype=torch.float64)
        index = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
        x, x_ref = images.clone().requires_grad_(), images.clone().requires_grad_()
        out, expected = OP(x, windows, index, True), reference.crop_resize(x_ref, windows, index, True)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        grad = torch.randn_like(out)
        out.backward(grad)
        expected.backward(grad)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_forward_many_crops_channels_last_with_source(dtype):
    images, windows, index = make_case(dtype, b=16, c=3, h=28, w=28, p=12, n_random=12, seed=3)
    expected = reference_float(images, windows, index, True)
    rtol, atol = FORWARD_TOL[dtype]
    out = OP(images, windows, index, True)
    assert out.shape == (16 + 16 * 12, 3, 28, 28) and out.is_contiguous()
    assert torch.equal(out[:16], images)
    torch.testing.assert_close(out.float(), expected.float(), rtol=rtol, atol=atol)
    out_cl = OP(images.contiguous(memory_format=torch.channels_last), windows, index, True)
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and not out_cl.is_contiguous()
    assert torch.equal(out_cl, out)


def test_forward_strided_input_and_int32_index():
    images, windows, index = make_case(torch.float32, b=3, c=4, h=15, w=30, p=4, seed=4)
    strided = images[:, ::2, :, ::2]  # not contiguous in any format
    torch.testing.assert_close(OP(strided, windows, index.int(), True),
                               reference.crop_resize(strided, windows, index, True), rtol=1e-5, atol=1e-5)


def test_forward_empty_and_bad_arguments():
    images, windows, index = make_case(torch.float32, p=2)
    assert OP(images, windows, index[:, :0], False).shape == (0, 2, 13, 17)
    assert torch.equal(OP(images, windows, index[:, :0], True), images)
    for bad in (torch.full_like(index, len(windows)), torch.full_like(index, -1), index.int().fill_(len(windows))):
        with pytest.raises(RuntimeError, match="out of range"):
            OP(images, windows, bad, False)
        with pytest.raises(RuntimeError, match="out of range"):
            OP_BACKWARD(torch.zeros(3 * 2, 2, 13, 17), windows, bad, False)
    with pytest.raises(RuntimeError, match=r"\(N, 4\)"):
        OP(images, windows[:, :3], index, False)
    with pytest.raises(RuntimeError, match="rows"):
        OP(images, windows, index[:2], False)


# --------------------------------------------------------------------------------------------- backward


@pytest.mark.parametrize("with_source", (False, True))
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference(dtype, with_source):
    images, windows, index = make_case(dtype, b=4, c=3, h=13, w=17, p=6, seed=5)
    ref_in = (images if dtype == torch.float64 else images.float()).detach().clone().requires_grad_()
    ref_out = reference.crop_resize(ref_in, windows, index, with_source)
    grad = torch.randn(ref_out.shape, dtype=ref_out.dtype, generator=torch.Generator().manual_seed(6))
    ref_out.backward(grad.to(dtype).to(ref_out.dtype))  # the same rounded upstream gradient
    x = images.clone().requires_grad_()
    OP(x, windows, index, with_source).backward(grad.to(dtype))
    assert x.grad.dtype == dtype
    rtol, atol = BACKWARD_TOL[dtype]
    torch.testing.assert_close(x.grad.to(torch.float64), ref_in.grad.to(torch.float64), rtol=rtol, atol=atol)


def test_backward_op_channels_last_and_expanded_grad():
    images, windows, index = make_case(torch.float64, b=3, c=3, h=11, w=9, p=5, seed=7)
    rows = 3 + 15
    grad = torch.randn(rows, 3, 11, 9, dtype=torch.float64)
    expected = OP_BACKWARD(grad, windows, index, True)
    grad_cl = OP_BACKWARD(grad.contiguous(memory_format=torch.channels_last), windows, index, True)
    assert grad_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad_cl, expected, rtol=1e-12, atol=1e-12)
    ones = torch.ones((), dtype=torch.float64).expand(rows, 3, 11, 9)  # stride-0 gradient, as sum() gives
    torch.testing.assert_close(OP_BACKWARD(ones, windows, index, True),
                               OP_BACKWARD(ones.contiguous(), windows, index, True), rtol=0, atol=0)


def _grad_case():
    windows = torch.tensor([[0, 0, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1, 1], [0, 0, 1, 1], [-0.1, 0.25, 0.55, 1.1],
                            [0.2, 0.1, 0.7, 0.45]], dtype=torch.float64)
    index = torch.tensor([[0, 1, 3], [2, 4, 4]])
    images = torch.randn(2, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    return images, windows, index


@pytest.mark.parametrize("with_source", (False, True))
def test_gradcheck_and_gradgradcheck(with_source):
    images, windows, index = _grad_case()

    def fn(x):
        return OP(x, windows, index, with_source)

    assert torch.autograd.gradcheck(fn, (images,))
    assert torch.autograd.gradgradcheck(fn, (images,))


def test_backward_is_deterministic_across_runs_and_threads():
    images, windows, index = make_case(torch.float32, b=8, c=3, h=32, w=32, p=8, seed=8)
    grad = torch.randn(8 + 64, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 2, 1):
            torch.set_num_threads(n)
            results.append(OP_BACKWARD(grad, windows, index, True))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        assert torch.equal(r, results[0])
        assert torch.equal(r.view(torch.int32), results[0].view(torch.int32))  # bit for bit


# ---------------------------------------------------------------------------------- registration, compile


@pytest.mark.parametrize("channels_last", (False, True))
def test_opcheck(channels_last):
    images, windows, index = make_case(torch.float32, b=2, c=3, h=6, w=5, p=3, seed=10)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = images.contiguous(memory_format=fmt).requires_grad_()
    torch.library.opcheck(OP, (images, windows, index, True))
    grad = torch.randn(2 + 6, 3, 6, 5).contiguous(memory_format=fmt).requires_grad_()
    torch.library.opcheck(OP_BACKWARD, (grad, windows, index, True))
    torch.library.opcheck(OP, (images.detach().double(), windows.double(), index, False))


def test_torch_compile_fullgraph():
    images, windows, index = make_case(torch.float32, b=2, c=1, h=8, w=8, p=2, seed=11)

    def loss(x):
        return OP(x, windows, index, True).square().sum()

    compiled = torch.compile(loss, fullgraph=True)
    x1, x2 = images.clone().requires_grad_(), images.clone().requires_grad_()
    loss(x1).backward()
    compiled(x2).backward()
    torch.testing.assert_close(x2.grad, x1.grad)


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_ops_dispatch_uses_extension(monkeypatch):
    monkeypatch.setattr(ops, "_backend", "auto")
    images, windows, index = make_case(torch.float32, seed=12)
    with _RecordOps() as rec:
        out = ops.crop_resize(images, windows.double(), index, with_source=True)
    assert any(name.startswith("udd_fast.crop_resize") for name in rec.names), rec.names
    assert torch.equal(out, OP(images, windows, index, True))
    monkeypatch.setattr(ops, "_backend", "reference")
    with _RecordOps() as rec:
        ops.crop_resize(images, windows, index, with_source=True)
    assert not any(name.startswith("udd_fast") for name in rec.names)


def test_available_warns_once_when_not_built(monkeypatch):
    assert _extension.available()
    monkeypatch.setattr(_extension, "_load_error", ImportError("No module named 'udd_fast._C'"))
    monkeypatch.setattr(_extension, "_warned", False)
    with pytest.warns(UserWarning, match="compiled extension not built"):
        assert not _extension.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _extension.available()


@pytest.fixture
def no_kernel_for(monkeypatch):
    """Make the dispatcher report no crop_resize kernel for one dispatch key, as a build without it would
    (a CPU-only build for "CUDA"); the warnings are reset so that each test sees its first one."""
    query = torch._C._dispatch_has_kernel_for_dispatch_key
    monkeypatch.setattr(_extension, "_warned_devices", set())

    def missing(key):
        monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key",
                            lambda op, k: False if (op, k) == ("udd_fast::crop_resize", key) else query(op, k))

    return missing


def test_has_kernel_asks_the_dispatcher():
    assert _extension.has_kernel("cpu") and _extension.has_kernel(torch.device("cpu"))
    assert _extension.has_kernel("cuda") == torch._C._dispatch_has_kernel_for_dispatch_key("udd_fast::crop_resize",
                                                                                            "CUDA")


def test_cpu_only_build_cuda_fallback_and_fast_error(no_kernel_for):
    """What a CPU-only build does for CUDA tensors (no GPU needed: the device is only named)."""
    no_kernel_for("CUDA")
    assert _extension.has_kernel("cpu") and not _extension.has_kernel("cuda")
    with pytest.warns(UserWarning, match=r"no CUDA kernel for crop_resize \(built CPU only"):
        assert not _extension.available(torch.device("cuda", 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per device type
        assert not _extension.available("cuda")
        assert _extension.available("cpu")
    with pytest.raises(UDDError, match="backend 'fast' needs a crop_resize kernel for cuda tensors") as err:
        _extension.require("cuda")
    assert "\n" not in str(err.value) and "CUDA_HOME" in str(err.value)
    _extension.require("cpu")


def test_check_build_reports_the_devices(no_kernel_for, monkeypatch, capsys):
    assert _extension.check_build("cpu") == 0
    assert "crop_resize kernels for cpu" in capsys.readouterr().out
    no_kernel_for("CUDA")
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # torch with CUDA, a build without it
    monkeypatch.delenv("UDD_FAST_CPU_ONLY", raising=False)
    assert _extension.check_build() == 0 and _extension.check_build("cuda") == 1
    assert "built CPU ONLY" in capsys.readouterr().err
    monkeypatch.setenv("UDD_FAST_CPU_ONLY", "1")  # asked for: no banner
    assert _extension.check_build("cpu") == 0 and "CPU ONLY" not in capsys.readouterr().err


def test_ops_falls_back_when_the_device_has_no_kernel(no_kernel_for, monkeypatch):
    """The path a CUDA tensor takes on a CPU-only build, taken here by CPU tensors with the CPU kernel hidden:
    ``auto`` uses the reference with one warning and never calls the op; ``fast`` raises."""
    no_kernel_for("CPU")
    images, windows, index = make_case(torch.float32, seed=13)
    monkeypatch.setattr(ops, "_backend", "auto")
    with _RecordOps() as rec, pytest.warns(UserWarning, match="no CPU kernel for crop_resize"):
        out = ops.crop_resize(images, windows, index, with_source=True)
    assert not any(name.startswith("udd_fast") for name in rec.names), rec.names
    torch.testing.assert_close(out, reference.crop_resize(images, windows, index, True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.crop_resize(images, windows, index)
    monkeypatch.setattr(ops, "_backend", "fast")
    with pytest.raises(UDDError, match="no CPU kernel"):
        ops.crop_resize(images, windows, index)


# ------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCUDA:
    @pytest.mark.parametrize("with_source", (False, True))
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_forward_backward_vs_cpu_reference(self, dtype, with_source):
        images, windows, index = make_case(dtype, b=6, c=3, h=29, w=31, p=8, n_random=12, seed=20)
        ref_in = (images if dtype == torch.float64 else images.float()).detach().clone().requires_grad_()
        ref_out = reference.crop_resize(ref_in, windows, index, with_source)
        grad = torch.randn(ref_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(21)).to(dtype)
        ref_out.backward(grad.to(ref_out.dtype))
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = images.cuda().contiguous(memory_format=fmt).requires_grad_()
            out = OP(x, windows.cuda(), index.cuda(), with_source)
            rtol, atol = FORWARD_TOL[dtype]
            torch.testing.assert_close(out.cpu().to(torch.float64), ref_out.detach().to(torch.float64),
                                       rtol=rtol, atol=atol)
            out.backward(grad.cuda().contiguous(memory_format=fmt))
            rtol, atol = BACKWARD_TOL[dtype]
            torch.testing.assert_close(x.grad.cpu().to(torch.float64), ref_in.grad.to(torch.float64),
                                       rtol=rtol, atol=atol)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_cuda_matches_cpu_op(self, dtype):
        images, windows, index = make_case(dtype, b=4, c=3, h=32, w=32, p=12, seed=22)
        torch.testing.assert_close(OP(images.cuda(), windows.cuda(), index.cuda(), True).cpu(),
                                   OP(images, windows, index, True),
                                   rtol=FORWARD_TOL[dtype][0], atol=FORWARD_TOL[dtype][1])
        grad = torch.randn(4 + 48, 3, 32, 32, dtype=torch.float64).to(dtype)
        torch.testing.assert_close(OP_BACKWARD(grad.cuda(), windows.cuda(), index.cuda(), True).cpu(),
                                   OP_BACKWARD(grad, windows, index, True),
                                   rtol=BACKWARD_TOL[dtype][0], atol=BACKWARD_TOL[dtype][1])

    def test_backward_deterministic(self):
        images, windows, index = make_case(torch.float32, b=16, c=3, h=64, w=64, p=12, seed=23)
        grad = torch.randn(16 * 12, 3, 64, 64, device="cuda")
        first = OP_BACKWARD(grad, windows.cuda(), index.cuda(), False)
        for _ in range(3):
            assert torch.equal(OP_BACKWARD(grad, windows.cuda(), index.cuda(), False), first)

    def test_gradcheck(self):
        images, windows, index = _grad_case()
        x = images.detach().cuda().requires_grad_()

        def fn(t):
            return OP(t, windows.cuda(), index.cuda(), True)

        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))

    def test_opcheck(self):
        images, windows, index = make_case(torch.float32, b=2, c=3, h=6, w=5, p=3, seed=24)
        torch.library.opcheck(OP, (images.cuda().requires_grad_(), windows.cuda(), index.cuda(), True))

    def test_build_has_the_cuda_kernel(self):
        assert _extension.has_kernel("cuda"), "udd_fast._C was built without its CUDA kernels"

    def test_bad_index_raises_on_the_host(self):
        """Checked before any launch: a RuntimeError, not a device-side assert that would poison the context."""
        images, windows, index = make_case(torch.float32, seed=25)
        images, windows = images.cuda(), windows.cuda()
        for bad in (torch.full_like(index, len(windows)), torch.full_like(index, -3)):
            with pytest.raises(RuntimeError, match="out of range"):
                OP(images, windows, bad.cuda(), True)
            with pytest.raises(RuntimeError, match="out of range"):
                OP_BACKWARD(torch.zeros(3 + 15, 2, 13, 17, device="cuda"), windows, bad.cuda(), True)
        torch.testing.assert_close(OP(images, windows, index.cuda(), True).cpu(),
                                   OP(images.cpu(), windows.cpu(), index, True), rtol=1e-5, atol=1e-5)

    def test_64bit_index_path(self):
        """Offsets past 2**31 elements take the uint64 index math: views into a 6 GiB float16 buffer whose rows
        lie 2**31 (images) and 2**29 (gradient) elements apart, against the same values packed densely (the
        uint32 path): the same arithmetic, so bit-identical."""
        gen = torch.Generator().manual_seed(26)
        b, c, h, w, p = 2, 3, 16, 16, 2
        windows = torch.cat([default_windows(dtype=torch.float64), random_windows(4, gen)]).float().cuda()
        index = torch.randint(0, len(windows), (b, p), generator=gen).cuda()
        buffer = torch.empty(2**31 + 2**30, dtype=torch.float16, device="cuda")
        images = buffer.as_strided((b, c, h, w), (2**31, h * w, w, 1))
        images.copy_(torch.randn(b, c, h, w, generator=gen).half())
        grad = buffer.as_strided((b + b * p, c, h, w), (2**29, h * w, w, 1), 1024)  # apart from images
        grad.copy_(torch.randn(grad.shape, generator=gen).half())
        assert torch.equal(OP(images, windows, index, True), OP(images.contiguous(), windows, index, True))
        assert torch.equal(OP_BACKWARD(grad, windows, index, True),
                           OP_BACKWARD(grad.contiguous(), windows, index, True))
        del buffer, images, grad
        torch.cuda.empty_cache()
