"""The one dispatch point for the fast ops ``window_pool``, ``jitter_score``, ``jitter_copies`` and
``crop_resize``, and for the two network layers with a faster form on CPU (:mod:`udd_fast.cpu`), ``avg_pool``
and ``instance_norm``. It also holds ``lowest_p``, a plain torch op with no fast kernel (one stable sort on
every backend), so that every region policy selects its windows through this module, as ``jitter_score``
does.

Backend choice (environment variable ``UDD_FAST_BACKEND``, or :func:`set_backend`):

* ``auto`` (default): CUDA tensors go to the Triton kernels (as ``torch.ops.udd_fast`` custom ops),
  ``crop_resize`` goes to the compiled extension on any device it has a kernel for, ``avg_pool`` and
  ``instance_norm`` take their CPU forms on CPU tensors; everything else uses :mod:`udd_fast.reference`.
* ``reference``: always the plain-torch twins.
* ``fast``: always the fast kernels (on CPU, Triton runs only under ``TRITON_INTERPRET=1``), and the layers'
  CPU forms on CPU tensors; ``crop_resize`` raises :class:`~udd_fast.errors.UDDError` when the extension
  is not built, or has no kernel for the tensors' device, instead of falling back.

Nothing outside this module branches on device or backend.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from udd_fast import cpu, reference

BACKENDS = ("auto", "reference", "fast")
_backend = os.environ.get("UDD_FAST_BACKEND", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"UDD_FAST_BACKEND={_backend!r} is not one of {BACKENDS}")


def set_backend(name: str) -> None:
    """Select ``auto``, ``reference`` or ``fast`` for every later op call."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {BACKENDS}")
    _backend = name


def get_backend() -> str:
    return _backend


def _triton(t: torch.Tensor) -> bool:
    """Whether this call goes to the Triton kernels (through their ``torch.ops.udd_fast`` custom ops)."""
    return _backend == "fast" or (_backend == "auto" and t.is_cuda)


def _cpu_form(t: torch.Tensor) -> bool:
    """Whether a network layer takes its CPU form (``avg_pool``, ``instance_norm``): on CPU tensors, unless the
    backend is ``reference``."""
    return _backend != "reference" and t.device.type == "cpu"


def _kernels():
    from udd_fast import kernels  # imported lazily: Triton needs a driver or TRITON_INTERPRET=1

    return kernels


# The Triton kernels as torch.library custom ops, so that torch.compile traces through them (to one opaque
# node, shaped by the fake implementation) instead of breaking the graph at a Triton launch. None of them is
# differentiable: they score and jitter detached images.
@torch.library.custom_op("udd_fast::window_pool", mutates_args=())
def _window_pool_op(fmap: torch.Tensor, windows: torch.Tensor, mode: str) -> torch.Tensor:
    return _kernels().window_pool(fmap, windows, mode)


@_window_pool_op.register_fake
def _(fmap, windows, mode):
    return fmap.new_empty((fmap.shape[0], windows.shape[0]), dtype=torch.float32)


@torch.library.custom_op("udd_fast::jitter_score", mutates_args=())
def _jitter_score_op(fmap: torch.Tensor, jittered: torch.Tensor, windows: torch.Tensor, p: int,
                     mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels().jitter_score(fmap, jittered, windows, p, mode)


@_jitter_score_op.register_fake
def _(fmap, jittered, windows, p, mode):
    return (fmap.new_empty((fmap.shape[0], windows.shape[0]), dtype=torch.float32),
            fmap.new_empty((fmap.shape[0], p), dtype=torch.int64))


@torch.library.custom_op("udd_fast::jitter_copies", mutates_args=())
def _jitter_copies_op(images: torch.Tensor, m: int, strength: float, kind: str, seed: int,
                      first_image: int) -> torch.Tensor:
    return _kernels().jitter_copies(images, m, strength, kind, seed, first_image)


@_jitter_copies_op.register_fake
def _(images, m, strength, kind, seed, first_image):
    return images.new_empty((m, *images.shape))


def window_pool(fmap: torch.Tensor, windows: torch.Tensor, mode: str = "value") -> torch.Tensor:
    """Overlap-weighted, channel-averaged mean of ``fmap`` (B, C, h, w) over each window: float32 (B, N)."""
    if mode not in ("value", "abs"):
        raise ValueError(f"window_pool mode must be 'value' or 'abs', got {mode!r}")
    if _triton(fmap):
        return torch.ops.udd_fast.window_pool(fmap.detach(), windows, mode)
    return reference.window_pool(fmap, windows, mode)


def jitter_score(fmap: torch.Tensor, jittered: torch.Tensor, windows: torch.Tensor, p: int,
                 mode: str = "value") -> tuple[torch.Tensor, torch.Tensor]:
    """Fused, one pass: the jitter sensitivity ``sigma`` (B, N) of every window AND the lowest-``p`` window
    indices (B, p), as ``lowest_p(sigma, p)`` would pick them."""
    if _triton(fmap):
        return torch.ops.udd_fast.jitter_score(fmap.detach(), jittered.detach(), windows, p, mode)
    return reference.jitter_score(fmap, jittered, windows, p, mode)


def jitter_copies(images: torch.Tensor, m: int, strength: float, kind: str = "gaussian", seed: int = 0,
                  first_image: int = 0) -> torch.Tensor:
    """``m`` jittered copies of ``images``, shape (m, B, C, H, W). The noise of ``images[b]`` is a function of
    ``seed`` and its global index ``first_image + b`` only (the same on every backend and in any batch)."""
    if kind not in reference.JITTER_KINDS:
        raise ValueError(f"unknown jitter kind {kind!r}; use one of {reference.JITTER_KINDS}")
    if _triton(images):
        return torch.ops.udd_fast.jitter_copies(images.detach(), m, float(strength), kind, seed, first_image)
    return reference.jitter_copies(images, m, strength, kind, seed, first_image)


def lowest_p(scores: torch.Tensor, p: int) -> torch.Tensor:
    """Indices (B, p) of the p lowest scores per row, ascending, ties to the lower index: a plain torch sort on
    every backend."""
    return reference.lowest_p(scores, p)


def crop_resize(images: torch.Tensor, windows: torch.Tensor, index: torch.Tensor,
                with_source: bool = False) -> torch.Tensor:
    """Chosen windows of each image, bilinearly resized to the image size; differentiable w.r.t. ``images``.

    ``index`` (B, P) picks rows of ``windows`` (N, 4) per image; output (B*P, C, H, W), b-major, with the
    B source images first when ``with_source``. Needs the compiled extension, with a kernel for the images'
    device, under backend ``fast``; ``auto`` falls back to the reference (with one warning) when the extension
    is not built or has no kernel for that device (a CPU-only build, for CUDA tensors).
    """
    if _backend != "reference":
        from udd_fast import _extension

        if _backend == "fast":
            _extension.require(images.device)
        if _extension.available(images.device):
            coords = torch.float64 if images.dtype == torch.float64 else torch.float32
            return torch.ops.udd_fast.crop_resize(images, windows.to(images.device, coords),
                                                  index.to(images.device, torch.int64), with_source)
    return reference.crop_resize(images, windows, index, with_source)


def avg_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of each k x k block of ``x`` (..., C, H, W), stride k (:func:`udd_fast.reference.avg_pool`); on CPU
    as one matrix product (:func:`udd_fast.cpu.avg_pool`)."""
    if _cpu_form(x):
        return cpu.avg_pool(x, k)
    return reference.avg_pool(x, k)


def instance_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
                  relu: bool = False) -> torch.Tensor:
    """``GroupNorm(C, C)`` of ``x`` (N, C, H, W) (:func:`udd_fast.reference.instance_norm`), then ReLU when
    ``relu``; on CPU wholly in ``x``'s dtype, bf16 under autocast, with its backward and double backward (the
    ReLU's folded in) as the extension's kernels (:func:`udd_fast.cpu.fused_instance_norm`), or ATen's composite
    (:func:`udd_fast.cpu.instance_norm`) where the extension lacks them or under ``torch.func.vmap`` (the
    kernels have no batching rule)."""
    if _cpu_form(x):
        if _fused_norm() and not _under_vmap():
            return cpu.fused_instance_norm(x, weight, bias, eps, relu)
        y = cpu.instance_norm(x, weight, bias, eps)
    else:
        y = reference.instance_norm(x, weight, bias, eps)
    return F.relu(y) if relu else y


def _under_vmap() -> bool:
    """Whether a ``torch.func.vmap`` is active (the batched step): the norm's kernels have no batching rule."""
    stack = torch._C._functorch.get_interpreter_stack()
    return bool(stack) and any(i.key() == torch._C._functorch.TransformType.Vmap for i in stack)


def _fused_norm() -> bool:
    """Whether the compiled extension carries the norm's backward kernels with the ReLU folded in (a build from
    before them does not)."""
    from udd_fast import _extension

    return _extension.has_op("instance_norm_double_backward", "relu_out")
