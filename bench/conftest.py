import os

import torch

# The Triton interpreter must be chosen before any Triton kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
