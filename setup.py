"""Builds udd_fast and its C++/CUDA extension ``udd_fast._C``.

CUDA kernels are compiled when nvcc and a CUDA-enabled torch are present (``UDD_FAST_CPU_ONLY=1`` skips
them); the arch list defaults to Ampere and Hopper and follows ``TORCH_CUDA_ARCH_LIST`` when set.
"""
import glob
import os
import shutil

# nvcc on PATH may be a wrapper in /usr/local/bin, which makes torch guess CUDA_HOME=/usr/local.
if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/autograd/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    cxx = ["-O3", "-fopenmp"]
    with_cuda = (bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None
                 and shutil.which("nvcc") is not None and os.environ.get("UDD_FAST_CPU_ONLY") != "1")
    print(f"udd_fast: building the extension with {'CPU and CUDA' if with_cuda else 'CPU only'} kernels")
    if with_cuda:
        return CUDAExtension("udd_fast._C", sources + cuda_sources,
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
