"""``udd_fast.ops``, the one dispatch point: which implementation each backend runs, and how ``fast`` fails
when what it needs is missing.
"""
import pytest
import torch

from kernel_params import INTERPRET, TOL, gen
from udd_fast import _extension, kernels, ops, reference
from udd_fast.errors import UDDError
from windows import default_windows


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
    for name in ("window_pool", "jitter_score", "jitter_copies"):
        fn = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _fn=fn, _name=name, **k: calls.append(_name) or _fn(*a, **k))
    device = "cpu" if INTERPRET else "cuda"
    win = default_windows().to(device)
    x = torch.randn(2, 4, 4, 4, generator=gen(9)).to(device)
    torch.testing.assert_close(ops.window_pool(x, win, "abs"), reference.window_pool(x, win, "abs"), **TOL)
    jit = ops.jitter_copies(x, 2, 0.1, "gaussian", seed=3)
    sigma, index = ops.jitter_score(x, jit, win, 3)
    want_sigma, want_index = reference.jitter_score(x, jit, win, 3)
    torch.testing.assert_close(sigma, want_sigma, atol=1e-5, rtol=1e-4)
    assert torch.equal(index, want_index)
    assert calls == ["window_pool", "jitter_copies", "jitter_score"]


@pytest.fixture
def extension_not_built(monkeypatch):
    monkeypatch.setattr(_extension, "_load_error", ImportError("No module named 'udd_fast._C'"))
    monkeypatch.setattr(_extension, "_warned", False)


def crop_case():
    images = torch.rand(2, 3, 8, 8, generator=gen(10))
    return images, default_windows(), torch.tensor([[0, 5], [11, 2]])


def test_crop_resize_fast_backend_fails_loudly_without_extension(fast_backend, extension_not_built):
    with pytest.raises(UDDError, match="not built") as err:
        ops.crop_resize(*crop_case())
    message = str(err.value)
    assert "\n" not in message and "backend 'fast'" in message and "build_ext --inplace" in message


def test_crop_resize_auto_backend_falls_back_with_one_warning(monkeypatch, extension_not_built):
    monkeypatch.setattr(ops, "_backend", "auto")
    images, windows, index = crop_case()
    with pytest.warns(UserWarning, match="compiled extension not built"):
        out = ops.crop_resize(images, windows, index)
    torch.testing.assert_close(out, reference.crop_resize(images, windows, index))


def custom_op_cases():
    win = default_windows()
    x = torch.randn(2, 3, 5, 4, generator=gen(11))
    jit = x.unsqueeze(0) + 0.1 * torch.randn(2, *x.shape, generator=gen(12))
    return [("window_pool", (x, win, "abs")), ("jitter_score", (x, jit, win, 3, "value")),
            ("jitter_copies", (x, 2, 0.1, "gaussian", 5 + (1 << 40), 7))]


@pytest.mark.skipif(not INTERPRET, reason="runs the Triton ops on CPU tensors, in the interpreter")
@pytest.mark.parametrize("name,args", custom_op_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_triton_custom_ops_pass_opcheck(name, args):
    # Schema, fake (meta) implementation against the kernel, and tracing under AOT dispatch.
    torch.library.opcheck(getattr(torch.ops.udd_fast, name).default, args)


@pytest.mark.skipif(not INTERPRET, reason="runs the Triton ops on CPU tensors, in the interpreter")
def test_torch_compile_traces_through_the_triton_ops(fast_backend):
    win = default_windows()
    x = torch.rand(2, 3, 8, 8, generator=gen(13))

    def score(images):
        copies = ops.jitter_copies(images, 2, 0.1, "gaussian", seed=3, first_image=4)
        pooled = ops.window_pool(images, win, "abs")
        sigma, index = ops.jitter_score(images, copies, win, 3)
        return pooled, sigma, index

    compiled = torch.compile(score, fullgraph=True, backend="aot_eager")  # fullgraph: no break at a launch
    for got, want in zip(compiled(x), score(x)):
        assert torch.equal(got, want)
