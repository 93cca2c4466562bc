"""Builds udd_fast and its C++/CUDA extension ``udd_fast._C``.

CUDA kernels are compiled when torch has CUDA and ``$CUDA_HOME/bin/nvcc`` exists (the compiler torch's
build uses); ``UDD_FAST_CPU_ONLY=1`` skips them. When torch has CUDA but no nvcc is found, the build goes on
with CPU kernels only and says so in a banner on stderr (``crop_resize`` on CUDA tensors then falls back to
the reference; backend ``fast`` raises). The arch list defaults to Ampere and Hopper plus PTX (which newer
GPUs compile at load) and follows ``TORCH_CUDA_ARCH_LIST`` when set.
"""
import glob
import os
import sys

# nvcc on PATH may be a wrapper in /usr/local/bin, which makes torch guess CUDA_HOME=/usr/local.
if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def cuda_build() -> tuple[bool, str]:
    """Whether to compile the CUDA kernels, and why not."""
    if not glob.glob("csrc/cuda/*.cu"):
        return False, "no CUDA sources"
    if os.environ.get("UDD_FAST_CPU_ONLY") == "1":
        return False, "UDD_FAST_CPU_ONLY=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} has no CUDA"
    nvcc = os.path.join(CUDA_HOME or "", "bin", "nvcc")
    if not CUDA_HOME or not os.path.isfile(nvcc):
        return False, f"no nvcc at {nvcc if CUDA_HOME else '$CUDA_HOME/bin/nvcc (CUDA_HOME not found)'}"
    return True, ""


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/autograd/*.cpp"))
    # No contraction into fused multiply-adds: the CPU kernels' sample positions then match the GPU's
    # (crop_resize_sampling.h rounds each product on its own there) on compilers that would fuse them.
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off"]
    with_cuda, why_not = cuda_build()
    print(f"udd_fast: building the extension with {'CPU and CUDA' if with_cuda else 'CPU only'} kernels"
          + (f" ({why_not})" if why_not else f" (nvcc under {CUDA_HOME}, archs {os.environ['TORCH_CUDA_ARCH_LIST']})"))
    if not with_cuda and torch.version.cuda is not None and why_not != "UDD_FAST_CPU_ONLY=1":
        bar = "!" * 100
        print(f"{bar}\nudd_fast: torch {torch.__version__} has CUDA {torch.version.cuda}, but the extension is built "
              f"CPU ONLY: {why_not}.\ncrop_resize on CUDA tensors will use the slower reference (backend 'fast' "
              "raises). Point CUDA_HOME at a CUDA toolkit, or set UDD_FAST_CPU_ONLY=1 to build CPU only on "
              f"purpose.\n{bar}", file=sys.stderr, flush=True)
    if with_cuda:
        return CUDAExtension("udd_fast._C", sources + sorted(glob.glob("csrc/cuda/*.cu")),
                             extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-diag-suppress=3189"]},
                             extra_link_args=["-fopenmp"])
    return CppExtension("udd_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


setup(
    name="udd_fast",
    version="0.1.0",
    description="Dataset distillation by mining underutilized regions (UDD), with fused kernels",
    packages=["udd_fast", "udd_fast.kernels"],
    package_dir={"udd_fast": "udd_fast", "udd_fast.kernels": "kernels"},
    package_data={"udd_fast": ["subsets/*.txt"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "torchvision", "numpy", "tqdm", "safetensors", "pillow"],
    ext_modules=[extension()] if glob.glob("csrc/*.cpp") else [],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
