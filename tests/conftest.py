import os
import tempfile

import pytest
import torch

# The Triton interpreter must be chosen before any Triton kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
# what udd_fast learns about a machine (a folder's unreadable files, the precision "auto" chose) goes to a fresh
# directory per test, not the user's: no test sees what another one left there
os.environ.setdefault("UDD_FAST_CACHE", tempfile.mkdtemp(prefix="udd_fast-test-cache-"))


@pytest.fixture(autouse=True)
def fresh_cache_dir(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("UDD_FAST_CACHE", str(tmp_path_factory.mktemp("udd_fast-cache")))
