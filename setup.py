"""Builds det3d and its compiled ops, det3d._C.

CPU kernels are always built. CUDA kernels are added when torch sees a GPU and CUDA_HOME is
set, or when FORCE_CUDA=1 (for building on a machine without a GPU).
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def get_extensions():
    csrc = os.path.join("det3d", "layers", "csrc")
    sources = sorted(
        glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "*", "*.cpp"))
    )
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "*", "*.cu")))

    use_cuda = (torch.cuda.is_available() and CUDA_HOME is not None) or os.getenv(
        "FORCE_CUDA", "0"
    ) == "1"
    extra_compile_args = {"cxx": ["-O3"]}
    define_macros = []
    extension = CppExtension
    if use_cuda:
        extension = CUDAExtension
        sources += cuda_sources
        define_macros += [("WITH_CUDA", None)]
        extra_compile_args["nvcc"] = [
            "-O3",
            "-DCUDA_HAS_FP16=1",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
        ]
    if not sources:
        return []
    # Find torch's shared libraries (libc10, libtorch_cpu) without importing torch first, so that
    # `import det3d._C` works on its own.
    torch_lib = os.path.join(os.path.dirname(os.path.abspath(torch.__file__)), "lib")
    return [
        extension(
            "det3d._C",
            sources,
            include_dirs=[os.path.abspath(csrc)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=[f"-Wl,-rpath,{torch_lib}"],
        )
    ]


setup(
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
