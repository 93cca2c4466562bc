"""The one dispatch point for the fast ops ``window_pool``, ``jitter_score``, ``jitter_copies`` and
``crop_resize``. It also holds ``lowest_p``, a plain torch op with no fast kernel (one stable sort on every
backend), so that every region policy selects its windows through this module, as ``jitter_score`` does.

Backend choice (environment variable ``UDD_FAST_BACKEND``, or :func:`set_backend`):

* ``auto`` (default): CUDA tensors go to the Triton kernels, ``crop_resize`` goes to the compiled extension
  on any device when it is built; everything else uses :mod:`udd_fast.reference`.
* ``reference``: always the plain-torch twins.
* ``fast``: always the fast kernels (on CPU, Triton runs only under ``TRITON_INTERPRET=1``); ``crop_resize``
  raises :class:`~udd_fast.errors.UDDError` when the extension is not built instead of falling back.

Nothing outside this module branches on device or backend.
"""
from __future__ import annotations

import os

import torch

from udd_fast import reference

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


def _triton(t: torch.Tensor):
    """The Triton kernels module when this call should use it, else None."""
    if _backend == "reference" or (_backend == "auto" and not t.is_cuda):
        return None
    from udd_fast import kernels  # imported lazily: Triton needs a driver or TRITON_INTERPRET=1

    return kernels


def window_pool(fmap: torch.Tensor, windows: torch.Tensor, mode: str = "value") -> torch.Tensor:
    """Overlap-weighted, channel-averaged mean of ``fmap`` (B, C, h, w) over each window: float32 (B, N)."""
    if mode not in ("value", "abs"):
        raise ValueError(f"window_pool mode must be 'value' or 'abs', got {mode!r}")
    impl = _triton(fmap) or reference
    return impl.window_pool(fmap, windows, mode)


def jitter_score(fmap: torch.Tensor, jittered: torch.Tensor, windows: torch.Tensor, p: int,
                 mode: str = "value") -> tuple[torch.Tensor, torch.Tensor]:
    """Fused, one pass: the jitter sensitivity ``sigma`` (B, N) of every window AND the lowest-``p`` window
    indices (B, p), as ``lowest_p(sigma, p)`` would pick them."""
    impl = _triton(fmap) or reference
    return impl.jitter_score(fmap, jittered, windows, p, mode)


def jitter_copies(images: torch.Tensor, m: int, strength: float, kind: str = "gaussian",
                  seed: int = 0) -> torch.Tensor:
    """``m`` seeded jittered copies of ``images``, shape (m, B, C, H, W)."""
    if kind not in reference.JITTER_KINDS:
        raise ValueError(f"unknown jitter kind {kind!r}; use one of {reference.JITTER_KINDS}")
    impl = _triton(images) or reference
    return impl.jitter_copies(images, m, strength, kind, seed)


def lowest_p(scores: torch.Tensor, p: int) -> torch.Tensor:
    """Indices (B, p) of the p lowest scores per row, ascending, ties to the lower index: a plain torch sort on
    every backend."""
    return reference.lowest_p(scores, p)


def crop_resize(images: torch.Tensor, windows: torch.Tensor, index: torch.Tensor,
                with_source: bool = False) -> torch.Tensor:
    """Chosen windows of each image, bilinearly resized to the image size; differentiable w.r.t. ``images``.

    ``index`` (B, P) picks rows of ``windows`` (N, 4) per image; output (B*P, C, H, W), b-major, with the
    B source images first when ``with_source``. Needs the compiled extension under backend ``fast``; ``auto``
    falls back to the reference (with one warning) when it is not built.
    """
    if _backend != "reference":
        from udd_fast import _extension

        if _backend == "fast":
            _extension.require()
        if _extension.available():
            coords = torch.float64 if images.dtype == torch.float64 else torch.float32
            return torch.ops.udd_fast.crop_resize(images, windows.to(images.device, coords),
                                                  index.to(images.device, torch.int64), with_source)
    return reference.crop_resize(images, windows, index, with_source)
