import os
import tempfile

import torch

# The Triton interpreter must be chosen before any Triton kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
# what udd_fast learns about files (the unreadable ones of a folder) goes to a fresh directory, not the user's
os.environ.setdefault("UDD_FAST_CACHE", tempfile.mkdtemp(prefix="udd_fast-test-cache-"))
