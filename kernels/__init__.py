"""Triton kernels behind :mod:`udd_fast.ops`: one module per op, each a kernel plus its Python wrapper;
:mod:`utils` holds what the kernels share.

On CPU tensors they run only under the Triton interpreter (``TRITON_INTERPRET=1`` set before import).
"""
from .jitter_copies import jitter_copies
from .jitter_score import jitter_score
from .window_pool import window_pool

__all__ = ["window_pool", "jitter_score", "jitter_copies"]
