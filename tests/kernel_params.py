"""Parameters shared by the Triton kernel tests (test_window_pool, test_jitter_score, test_jitter_copies,
test_ops).

On CPU the kernels run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), where each
program instance costs milliseconds: the tests keep every launch to about 100 programs or fewer. The ``cuda``
parametrizations and the ``cuda_only`` tests run the same checks on a GPU when one is present.
"""
import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="Triton on CPU needs TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The reference pools the same rounded input (fmap.float()), so every dtype differs only in summation order.
TOL = dict(atol=2e-5, rtol=2e-5)

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)
