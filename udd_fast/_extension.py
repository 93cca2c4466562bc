"""The compiled extension ``udd_fast._C`` and the fake implementations of its ops.

Importing ``udd_fast._C`` registers ``torch.ops.udd_fast.crop_resize`` and ``crop_resize_backward`` with
their CPU (and, when built with CUDA, CUDA) kernels and their autograd; this module adds the fake
implementations that ``torch.compile`` and ``torch.library.opcheck`` need. ``udd_fast`` requires the
extension only under backend ``fast`` (:func:`require`); otherwise :func:`available` says whether it is there.
"""
from __future__ import annotations

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


def available() -> bool:
    """True when the compiled ops are registered; otherwise warns once and returns False."""
    global _warned
    if _load_error is None:
        return True
    if not _warned:
        _warned = True
        warnings.warn(f"udd_fast: compiled extension not built ({_load_error}); crop_resize uses the reference. "
                      "Build with `make build` / pip install -e . --no-build-isolation", stacklevel=2)
    return False


def require() -> None:
    """Raise :class:`UDDError` (one line, with the fix) unless the compiled ops are registered."""
    if _load_error is not None:
        reason = " ".join(str(_load_error).split())
        raise UDDError(f"udd_fast: backend 'fast' needs the compiled extension udd_fast._C, which is not built "
                       f"({reason}); build it with `make build` (or `python setup.py build_ext --inplace`), or "
                       "use backend 'auto' to fall back to the reference")


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
