"""``udd_fast.cpu``: the layers' CPU forms against their reference twins (forward, backward, double backward,
each dtype, under vmap), the norm's fused kernels, alone and with the ReLU folded in (also inside the matching
loss, and opcheck), the routing through ``ops``, and the allocator setting."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from udd_fast import _extension, cpu, losses, ops, reference
from udd_fast.models import AvgPool, ConvNet, InstanceNorm

FUSED = _extension.has_op("instance_norm_double_backward", "relu_out")
needs_fused = pytest.mark.skipif(not FUSED, reason="the compiled extension (make build) carries the norm's kernels")

SHAPES = [(2, 3, 8, 8), (2, 3, 7, 9), (1, 2, 32, 32), (3, 4, 17, 16)]  # odd sizes drop the last row/column
# bf16 keeps 8 significant bits: a value, its gradient and the gradient of that each add roundings
L2_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
SAME_DTYPE_ATOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2}  # of the largest magnitude


def norm_case(shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).to(dtype)
    w = (torch.rand(shape[-3], generator=g, dtype=torch.float64) + 0.5).to(dtype)
    b = torch.randn(shape[-3], generator=g, dtype=torch.float64).to(dtype)
    return x, w, b


LAYERS = {"avg_pool": (lambda x, w, b, k: cpu.avg_pool(x, k), lambda x, w, b, k: reference.avg_pool(x, k)),
          "instance_norm": (lambda x, w, b, k: cpu.instance_norm(x, w, b), lambda x, w, b, k: reference.instance_norm(x, w, b)),
          "fused_instance_norm": pytest.param(
              (lambda x, w, b, k: cpu.fused_instance_norm(x, w, b), lambda x, w, b, k: reference.instance_norm(x, w, b)),
              marks=needs_fused),
          # the block's norm and ReLU in one op: the ReLU's backward folded into the norm's kernels
          "fused_instance_norm_relu": pytest.param(
              (lambda x, w, b, k: cpu.fused_instance_norm(x, w, b, relu=True),
               lambda x, w, b, k: F.relu(reference.instance_norm(x, w, b))),
              marks=needs_fused)}


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layer", list(LAYERS.values()), ids=list(LAYERS))
def test_layer_matches_reference_through_double_backward_fp64(layer, shape, k):
    """fp64: the CPU forms are the reference's function, exactly in value and as gradcheck sees both
    derivatives (gradient matching differentiates every layer twice; for the fused norm, gradgradcheck of the
    square also drives the weight and bias gradients' own backward)."""
    fast, ref = layer
    x, w, b = (t.requires_grad_() for t in norm_case(shape, torch.float64))
    torch.testing.assert_close(fast(x, w, b, k), ref(x, w, b, k), atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: fast(*t, k), (x, w, b))
    assert torch.autograd.gradgradcheck(lambda *t: fast(*t, k) ** 2, (x, w, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layer", list(LAYERS.values()), ids=list(LAYERS))
def test_layer_forward_backward_and_double_backward_in_each_dtype(layer, dtype):
    """In fp32 and in bf16 (the dtype autocast now runs them in), the value, the gradient w.r.t. the input and
    the gradient of that gradient's square (what a matching loss's backward takes) are as close to the fp64
    reference as the reference run in the same dtype: within rounding of it, and within ``L2_TOL`` (relative,
    in the L2 norm) of fp64, or, where the reference in that dtype is further off (a ReLU's mask flips where bf16
    rounds a value across zero), within 1.25x the reference's own distance. Measured: bf16 0.2-1.4 % (4.3 % for
    the gradient through the ReLU, the reference's 4.35 %), fp32 below 3e-7, for every form alike."""
    fast, ref = layer
    x64, w64, b64 = norm_case((3, 8, 16, 16), torch.float64)

    def derivatives(fn, x, w, b):
        x = x.clone().requires_grad_()
        y = fn(x, w, b, 2)
        gx, = torch.autograd.grad(y.double().sin().sum(), x, create_graph=True)
        ggx, = torch.autograd.grad(gx.double().pow(2).sum(), x)
        return y.double(), gx.double(), ggx.double()

    args = [t.to(dtype) for t in (x64, w64, b64)]
    got, same_dtype, exact = derivatives(fast, *args), derivatives(ref, *args), derivatives(ref, x64, w64, b64)
    assert fast(*args, 2).dtype == dtype
    for g, r, e, name in zip(got, same_dtype, exact, ("value", "gradient", "double backward")):
        scale = e.abs().max()
        torch.testing.assert_close(g / scale, r / scale, atol=SAME_DTYPE_ATOL[dtype], rtol=0,
                                   msg=lambda m: f"{dtype} {name} against the reference in {dtype}: {m}")
        bound = max(L2_TOL[dtype], 1.25 * ((r - e).norm() / e.norm()).item())
        assert ((g - e).norm() / e.norm()).item() < bound, f"{dtype} {name} against fp64"


class NormDtypes(TorchDispatchMode):
    """Records (map, weight, statistics) dtypes of every group-norm kernel call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.native_group_norm.default:
            self.calls.append((args[0].dtype, args[1].dtype, out[1].dtype))
        return out


def test_instance_norm_keeps_weight_bias_and_statistics_in_the_maps_dtype_under_autocast():
    """Autocast hands group norm the bf16 map with fp32 weight and bias, so the statistics come out fp32 and
    the twice-differentiable backward promotes every map-sized intermediate to fp32; the CPU form casts
    weight and bias to the map's dtype, so all of it stays bf16, and the result stays near fp32's."""
    x, w, b = norm_case((2, 4, 8, 8), torch.float32)
    seen = {}
    for name, fn in (("cpu", cpu.instance_norm), ("reference", reference.instance_norm)):
        with torch.autocast("cpu", torch.bfloat16), NormDtypes() as mode:
            h = F.conv2d(x, torch.eye(4)[:, :, None, None])
            out = fn(h, w, b)
        seen[name] = mode.calls
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), F.group_norm(h.float(), 4, w, b), atol=3e-2, rtol=2e-2)
    assert seen == {"cpu": [(torch.bfloat16,) * 3], "reference": [(torch.bfloat16, torch.float32, torch.float32)]}


@pytest.mark.parametrize("layer", ["avg_pool", "instance_norm"])
def test_layers_under_vmap_and_func_grad(layer):
    """The batched step vmaps the matching over classes and differentiates twice with torch.func (the fused
    norm has no batching rule: ``ops`` routes vmapped maps to the composite form, tested below)."""
    fast, ref = LAYERS[layer]
    x, w, b = norm_case((5, 2, 3, 8, 8), torch.float64)

    def second(fn):
        def inner(x):
            return grad(lambda t: fn(t, w, b, 2).sin().sum())(x).pow(2).sum()
        return vmap(grad(inner))(x)

    torch.testing.assert_close(vmap(lambda t: fast(t, w, b, 2))(x), vmap(lambda t: ref(t, w, b, 2))(x))
    torch.testing.assert_close(second(fast), second(ref), atol=1e-10, rtol=1e-8)


@pytest.fixture
def backend():
    before = ops.get_backend()
    yield ops.set_backend
    ops.set_backend(before)


def test_ops_route_layers_to_cpu_forms_on_cpu_only_when_not_reference(backend, monkeypatch):
    calls = []
    monkeypatch.setattr(cpu, "avg_pool", lambda x, k: calls.append("avg_pool") or reference.avg_pool(x, k))
    for form in ("instance_norm", "fused_instance_norm"):
        monkeypatch.setattr(cpu, form, lambda x, w, b, eps, *relu: calls.append("norm") or reference.instance_norm(x, w, b, eps))
    net = ConvNet(1, 3, 28, width=4)
    for name in ("auto", "fast", "reference"):
        backend(name)
        calls.clear()
        net(torch.rand(2, 1, 28, 28))
        assert calls == ([] if name == "reference" else ["norm", "avg_pool"] * 3), name


def test_a_build_without_the_norm_kernels_takes_the_composite(backend, monkeypatch):
    """An extension built before the kernels (or before their ``relu_out``) loads, and the norm then runs ATen's
    composite."""
    assert _extension.has_op("no_such_op") is False
    assert _extension.has_op("crop_resize", "no_such_argument") is False
    monkeypatch.setattr(_extension, "has_op", lambda *a: False)
    calls = []
    monkeypatch.setattr(cpu, "instance_norm", lambda *a: calls.append("composite") or reference.instance_norm(*a))
    backend("auto")
    ops.instance_norm(*norm_case((2, 3, 8, 8), torch.float32))
    assert calls == ["composite"]


@needs_fused
def test_ops_norm_takes_the_fused_kernels_except_under_vmap(backend, monkeypatch):
    """The fused norm on CPU maps, under ``torch.func.grad`` too (the synthetic side of matching); the
    composite form under ``vmap`` (the batched step), whose maps the kernels cannot take."""
    calls = []
    monkeypatch.setattr(cpu, "fused_instance_norm",
                        lambda x, w, b, eps, relu: calls.append("fused") or reference.instance_norm(x, w, b, eps))
    monkeypatch.setattr(cpu, "instance_norm", lambda *a: calls.append("composite") or reference.instance_norm(*a))
    backend("auto")
    x, w, b = norm_case((2, 3, 4, 8, 8), torch.float32)
    ops.instance_norm(x[0], w, b)
    grad(lambda t: ops.instance_norm(t, w, b, relu=True).sum())(x[0])
    vmap(lambda t: ops.instance_norm(t, w, b))(x)
    out = vmap(grad(lambda t: ops.instance_norm(t, w, b, relu=True).square().sum()))(x)
    assert calls == ["fused", "fused", "composite", "composite"]
    torch.testing.assert_close(out, vmap(grad(lambda t: F.relu(reference.instance_norm(t, w, b)).square().sum()))(x))


class KernelCalls(TorchDispatchMode):
    """Counts calls of the norm's kernels and of ReLU's backward (``threshold_backward``)."""

    def __init__(self):
        super().__init__()
        self.calls = {"backward": 0, "double_backward": 0, "threshold_backward": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for name in self.calls:
            op = torch.ops.aten.threshold_backward if name == "threshold_backward" else \
                getattr(torch.ops.udd_fast, f"instance_norm_{name}")
            if func is op.default:
                self.calls[name] += 1
        return func(*args, **(kwargs or {}))


def matching_loss_and_grad(dtype, weighted=False):
    """A ConvNet's gradient matching loss and its gradient w.r.t. the synthetic images, in ``dtype``."""
    torch.manual_seed(0)
    net = ConvNet(3, 4, 16, width=8).to(dtype)
    params = {n: p.detach() for n, p in net.named_parameters()}
    x_real, y_real = torch.randn(8, 3, 16, 16, dtype=dtype), torch.arange(8) % 4
    w_syn = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=dtype) if weighted else None
    x_syn = torch.randn(4, 3, 16, 16, dtype=dtype, generator=torch.Generator().manual_seed(1)).requires_grad_()
    loss, _ = losses.grad_match(net, params, losses.matched_names(net), x_real, y_real, x_syn, torch.arange(4), w_syn)
    return loss.detach(), torch.autograd.grad(loss, x_syn)[0]


@needs_fused
@pytest.mark.parametrize("weighted", [False, True])
def test_matching_loss_through_the_fused_norm_equals_the_composite(weighted, monkeypatch):
    """The gradient matching loss and its gradient w.r.t. the synthetic images (the double backward through
    every norm layer) are the composite form's in fp64, and the fused path runs both kernels, ReLU's backward
    folded into them."""
    with KernelCalls() as mode:
        fused = matching_loss_and_grad(torch.float64, weighted)
    # 3 norm layers; backward: the real and the synthetic gradients, then the outer pass's way through the
    # forward layers; double backward: the outer pass's way back through the synthetic gradients
    assert mode.calls == {"backward": 3 * 3, "double_backward": 3, "threshold_backward": 0}
    monkeypatch.setattr(ops, "_fused_norm", lambda: False)
    with KernelCalls() as mode:
        composite = matching_loss_and_grad(torch.float64, weighted)
    assert mode.calls == {"backward": 0, "double_backward": 0, "threshold_backward": 3 * 3 + 3}
    torch.testing.assert_close(fused, composite, rtol=1e-10, atol=1e-14)


@needs_fused
def test_folding_the_relu_into_the_norm_kernels_changes_no_bit(monkeypatch):
    """The ReLU's mask applied inside the kernels gives what ReLU's own backward gives them, bit for bit in
    fp32: folding it in changes the speed of a run, not its set."""
    folded = matching_loss_and_grad(torch.float32, True)
    norm_alone = cpu.fused_instance_norm
    monkeypatch.setattr(cpu, "fused_instance_norm",
                        lambda x, w, b, eps, relu: (F.relu if relu else torch.nn.Identity())(norm_alone(x, w, b, eps)))
    with KernelCalls() as mode:
        separate = matching_loss_and_grad(torch.float32, True)
    assert mode.calls["threshold_backward"] == 3 * 3 + 3
    assert all(torch.equal(a, b) for a, b in zip(folded, separate))


@needs_fused
def test_norm_kernels_opcheck():
    """Schema, fake tensors and autograd registration of the two kernels (``torch.library.opcheck``)."""
    x, w, _ = norm_case((2, 3, 5, 6), torch.float64)
    n, c = x.shape[:2]
    _, mean, rstd = torch.native_group_norm(x, w, None, n, c, 30, c, 1e-5)
    g, u = torch.randn_like(x), torch.randn_like(x)
    y = F.relu(torch.randn_like(x))
    for relu_out in (None, y):
        torch.library.opcheck(torch.ops.udd_fast.instance_norm_backward, (g, x, mean, rstd, w, relu_out))
        torch.library.opcheck(torch.ops.udd_fast.instance_norm_double_backward,
                              (u, w, None, g, x, mean, rstd, w, relu_out))


def test_model_layers_keep_torch_types_and_state_dict_keys():
    """Checkpoints and code that look for GroupNorm / AvgPool2d see the same modules and keys as before."""
    norm, pool = InstanceNorm(6), AvgPool(2)
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == 6 and isinstance(pool, torch.nn.AvgPool2d)
    assert list(norm.state_dict()) == list(torch.nn.GroupNorm(6, 6).state_dict())
    x = torch.rand(2, 6, 9, 9)
    torch.testing.assert_close(pool(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(norm(x), F.group_norm(x, 6, norm.weight, norm.bias))


ALLOCATION_FAULTS = """
import resource, sys, torch
from udd_fast.cpu import keep_freed_memory
applied = keep_freed_memory()
faults = []
for _ in range(6):  # 64 MiB, touched, freed: glibc's mmap path faults every page back in each time
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, max(faults[3:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_stops_the_page_faults_of_reallocation():
    """Measured, not assumed: a freed 64 MiB buffer allocated again costs its 16,384 page faults every time
    under glibc's defaults, and none once the setting is in effect and the heap has grown to hold it (the
    first two allocations fault); UDD_FAST_KEEP_FREED_MEMORY=0 turns it off."""
    runs = {}
    for value in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", ALLOCATION_FAULTS], capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, "UDD_FAST_KEEP_FREED_MEMORY": value})
        applied, faults = out.stdout.split()
        runs[value] = applied == "True", int(faults)
    assert runs["0"] == (False, runs["0"][1]) and runs["0"][1] > 10_000
    assert runs["1"][0] and runs["1"][1] < 100
