"""Build rdkernels.

Pure Python + Triton everywhere; where nvcc is found, also the CUDA extension
``rdkernels._C`` (CMake + Ninja + pybind11). Environment:

* ``RDKERNELS_BUILD_CUDA``: ``auto`` (default: build if nvcc is found),
  ``1`` (build; a failure is an error), ``0`` (skip).
* ``RDKERNELS_CUDA_ARCHS``: CMake CUDA architectures, default ``80;90``.
* ``RDKERNELS_PTXAS_VERBOSE=0``: silence the register/spill report.

setup.py never imports torch, so the build works with any torch (or none).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _want_cuda():
    mode = os.environ.get("RDKERNELS_BUILD_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise RuntimeError(f"RDKERNELS_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    nvcc = _find_nvcc()
    if mode == "0":
        return False
    if mode == "1" and nvcc is None:
        raise RuntimeError("RDKERNELS_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
    if nvcc is None:
        print("rdkernels: nvcc not found, installing without the CUDA extension", file=sys.stderr)
    return nvcc is not None


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        nvcc = _find_nvcc()
        cmake = shutil.which("cmake") or "cmake"
        configure = [
            cmake, "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DRDKERNELS_OUTPUT_DIR={out_dir}",
            f"-DCMAKE_CUDA_COMPILER={nvcc}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        ninja = shutil.which("ninja")
        if ninja:
            configure.append(f"-DCMAKE_MAKE_PROGRAM={ninja}")
        subprocess.run(configure, check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run([cmake, "--build", str(build_dir), "--parallel", jobs], check=True)


ext_modules = [CMakeExtension("rdkernels._C")] if _want_cuda() else []

setup(
    name="rdkernels",
    version="0.1.0",
    description="Fused Triton and CUDA kernels for representation-distillation losses (CRD, WCoRD, DCD, RRD)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rdkernels", "rdkernels.*"]),
    install_requires=["torch>=2.5", "numpy"],
    extras_require={
        "triton": ["triton>=3.4"],
        "test": ["pytest", "pytest-xdist", "scipy", "triton>=3.4"],
        "bench": ["matplotlib", "tqdm", "pot", "geomloss"],
        "harness": ["tqdm", "matplotlib"],
    },
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
