"""The compiled extension ``udd_fast._C`` and the fake implementations of its ops.

Importing ``udd_fast._C`` registers ``torch.ops.udd_fast.crop_resize`` and ``crop_resize_backward`` with
their CPU (and, when built with CUDA, CUDA) kernels and their autograd, and the CPU kernels of instance
norm's backward and double backward, with or without a ReLU after the norm (``instance_norm_backward``,
``instance_norm_double_backward``, whose autograd is :func:`udd_fast.cpu.fused_instance_norm`); this module
adds the fake implementations that ``torch.compile`` and ``torch.library.opcheck`` need. ``udd_fast`` requires the
extension only under backend ``fast`` (:func:`require`); otherwise :func:`available` says whether it is there
and has a kernel for the tensors' device. A build can load and still lack the CUDA kernels (built where no
nvcc was found), so the device is asked of the dispatcher, not inferred from a successful import.
"""
from __future__ import annotations

import functools
import os
import sys
import warnings

import torch

from udd_fast.errors import UDDError

try:
    from udd_fast import _C  # noqa: F401  (registers the ops)
except (ImportError, OSError) as exc:  # not built, or built against another torch
    _load_error: Exception | None = exc
else:
    _load_error = None

_warned = False
_warned_devices: set[str] = set()
_BUILD = "`make build` (or `python setup.py build_ext --inplace`)"


def _dispatch_key(device: torch.device | str) -> str:
    kind = torch.device(device).type
    return {"cpu": "CPU", "cuda": "CUDA"}.get(kind, kind.upper())


def has_kernel(device: torch.device | str) -> bool:
    """True when the extension is loaded and registers a ``crop_resize`` kernel for tensors on ``device``."""
    return _load_error is None and torch._C._dispatch_has_kernel_for_dispatch_key("udd_fast::crop_resize",
                                                                                   _dispatch_key(device))


def has_op(name: str, argument: str | None = None) -> bool:
    """True when the extension is loaded and defines ``torch.ops.udd_fast.<name>`` with a CPU kernel and, given
    ``argument``, an argument of that name (False for a build from before the op or the argument)."""
    return _load_error is None and _registered(name, argument)


@functools.cache  # asked on every norm call; the registered ops are fixed once ``_C`` is imported
def _registered(name: str, argument: str | None) -> bool:
    try:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"udd_fast::{name}", "CPU"):
            return False
    except RuntimeError:  # no such operator
        return False
    schema = getattr(torch.ops.udd_fast, name).default._schema
    return argument is None or any(a.name == argument for a in schema.arguments)


def _missing_kernel(device: torch.device | str) -> str:
    key = _dispatch_key(device)
    why = " (built CPU only: no nvcc under CUDA_HOME at build time, or UDD_FAST_CPU_ONLY=1)" if key == "CUDA" else ""
    return f"udd_fast._C has no {key} kernel for crop_resize{why}"


def available(device: torch.device | str | None = None) -> bool:
    """True when the compiled ops are registered and, given ``device``, have a kernel for its tensors;
    otherwise warns once (once per device type for a missing kernel) and returns False."""
    global _warned
    if _load_error is not None:
        if not _warned:
            _warned = True
            warnings.warn(f"udd_fast: compiled extension not built ({_load_error}); crop_resize uses the reference. "
                          f"Build with {_BUILD}", stacklevel=2)
        return False
    if device is None or has_kernel(device):
        return True
    kind = torch.device(device).type
    if kind not in _warned_devices:
        _warned_devices.add(kind)
        warnings.warn(f"udd_fast: {_missing_kernel(device)}; crop_resize on {kind} tensors uses the reference. "
                      f"Rebuild with {_BUILD} and CUDA_HOME pointing at a CUDA toolkit", stacklevel=2)
    return False


def require(device: torch.device | str | None = None) -> None:
    """Raise :class:`UDDError` (one line, with the fix) unless the compiled ops are registered and, given
    ``device``, have a kernel for its tensors."""
    if _load_error is not None:
        reason = " ".join(str(_load_error).split())
        raise UDDError(f"udd_fast: backend 'fast' needs the compiled extension udd_fast._C, which is not built "
                       f"({reason}); build it with {_BUILD}, or use backend 'auto' to fall back to the reference")
    if device is not None and not has_kernel(device):
        raise UDDError(f"udd_fast: backend 'fast' needs a crop_resize kernel for {torch.device(device).type} "
                       f"tensors, but {_missing_kernel(device)}; rebuild with {_BUILD} and CUDA_HOME pointing at a "
                       "CUDA toolkit, or use backend 'auto' to fall back to the reference")


def check_build(require_device: str | None = None) -> int:
    """Print which devices the compiled kernels cover; on stderr, loudly, when torch has CUDA and the build
    has no CUDA kernel (unless UDD_FAST_CPU_ONLY=1 asked for that). Returns 1 when the extension is not loaded
    or lacks ``require_device``'s kernel."""
    if _load_error is not None:
        print(f"udd_fast._C: NOT LOADED ({' '.join(str(_load_error).split())})", file=sys.stderr)
        return 1
    kinds = [k for k in ("cpu", "cuda") if has_kernel(k)]
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
    print(f"udd_fast._C: crop_resize kernels for {', '.join(kinds) or 'no device'} (torch {torch.__version__}, {cuda})")
    if torch.version.cuda and "cuda" not in kinds and os.environ.get("UDD_FAST_CPU_ONLY") != "1":
        bar = "!" * 100
        print(f"{bar}\nudd_fast: torch has {cuda} but the extension was built CPU ONLY: crop_resize on CUDA tensors "
              f"uses the slower reference (backend 'fast' raises).\nRebuild with {_BUILD} and CUDA_HOME pointing at a CUDA "
              f"toolkit (the build log says what was missing).\n{bar}", file=sys.stderr)
    return 0 if require_device is None or require_device in kinds else 1


def _prefers_channels_last(t: torch.Tensor) -> bool:
    # The kernels' rule for the memory format of their result (crop_resize.cpp).
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _empty_like_format(like: torch.Tensor, shape) -> torch.Tensor:
    fmt = torch.channels_last if _prefers_channels_last(like) else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def _check_args(data: torch.Tensor, windows: torch.Tensor, index: torch.Tensor, name: str) -> None:
    torch._check(data.dim() == 4, lambda: f"crop_resize: {name} must be (B, C, H, W), got {tuple(data.shape)}")
    torch._check(data.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
                 lambda: f"crop_resize: {name} must be float32, float64, float16 or bfloat16, got {data.dtype}")
    torch._check(windows.dim() == 2 and windows.shape[1] == 4,
                 lambda: f"crop_resize: windows must be (N, 4), got {tuple(windows.shape)}")
    torch._check(index.dim() == 2, lambda: f"crop_resize: index must be (B, P), got {tuple(index.shape)}")


if _load_error is None:

    @torch.library.register_fake("udd_fast::crop_resize")
    def _crop_resize_fake(images, windows, index, with_source):
        _check_args(images, windows, index, "images")
        b, c, h, w = images.shape
        torch._check(index.shape[0] == b, lambda: "crop_resize: index must have one row per image")
        rows = b * index.shape[1] + (b if with_source else 0)
        return _empty_like_format(images, (rows, c, h, w))

    @torch.library.register_fake("udd_fast::crop_resize_backward")
    def _crop_resize_backward_fake(grad, windows, index, with_source):
        _check_args(grad, windows, index, "grad")
        b, p = index.shape
        _, c, h, w = grad.shape
        torch._check(grad.shape[0] == b * p + (b if with_source else 0),
                     lambda: "crop_resize_backward: grad rows do not match index")
        return _empty_like_format(grad, (b, c, h, w))

    if has_op("instance_norm_double_backward", "relu_out"):

        @torch.library.register_fake("udd_fast::instance_norm_backward")
        def _instance_norm_backward_fake(grad, x, mean, rstd, weight, relu_out=None):
            return torch.empty_like(x, memory_format=torch.contiguous_format), weight.new_empty(weight.shape), \
                weight.new_empty(weight.shape)

        @torch.library.register_fake("udd_fast::instance_norm_double_backward")
        def _instance_norm_double_backward_fake(u, uw, ub, grad, x, mean, rstd, weight, relu_out=None):
            like = torch.empty_like(x, memory_format=torch.contiguous_format)
            return like, torch.empty_like(like), weight.new_empty(weight.shape)
