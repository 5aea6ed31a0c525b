"""The CUDA extension's SIMT kernels, built for the CPU and run on CPU tensors.

``csrc/emulation/simt.h`` lets the host compiler build the kernel sources
unchanged: blocks run one after another, a block's threads as cooperative
fibers that switch at barriers and shuffles (see the header). This module
builds that variant of the extension once per source state (cached under
``~/.cache/rdkernels/emulation``, or ``$RDKERNELS_EMULATION_CACHE``) and
hands it to the ops' CUDA wrappers in place of ``rdkernels._C``, so their
tests run where no GPU is: every kernel of ``csrc/``, the bank-contrast ones
included (their tensor-core ``mma.sync`` is emulated from the warp's fragments).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
SOURCES = sorted(p.name for p in CSRC.glob("*.cu")) + ["bindings.cpp"]   # what CMakeLists.txt builds
MODULE = "_C_emulated"
ORDERS = ("forward", "reverse", "shuffle:1")   # RDKERNELS_EMULATION_ORDER values (simt.h)

class EmulationUnavailable(RuntimeError):
    """No C++ compiler or no pybind11 here: the emulated tests skip (a failed build fails them)."""


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _sanitizer_flags() -> list[str]:
    """RDKERNELS_EMULATION_SANITIZE=address builds the module with AddressSanitizer: an
    out-of-bounds global or shared-memory access of a kernel then stops the test with
    ASan's report (run python with LD_PRELOAD=$(gcc -print-file-name=libasan.so) and
    ASAN_OPTIONS=detect_leaks=0; ASan warns that it does not fully support the fibers'
    swapcontext). A C++ exception (an argument a binding refuses) then aborts the
    process: the preloaded ASan's __cxa_throw interceptor finds no libstdc++ to call."""
    mode = os.environ.get("RDKERNELS_EMULATION_SANITIZE", "")
    if mode not in ("", "address"):
        raise ValueError(f"RDKERNELS_EMULATION_SANITIZE must be empty or 'address', got {mode!r}")
    return ["-g", "-fsanitize=address", "-fno-omit-frame-pointer"] if mode else []


def _command(cxx: str, out: Path) -> list[str]:
    import pybind11
    return [cxx, "-std=c++17", "-O1", *_sanitizer_flags(), "-shared", "-fPIC", "-w", "-DRDK_CPU_EMULATION",
            f"-DRDK_MODULE_NAME={MODULE}",
            "-include", str(CSRC / "emulation" / "simt.h"), f"-I{CSRC}", f"-I{pybind11.get_include()}",
            f"-I{sysconfig.get_paths()['include']}", "-x", "c++", *(str(CSRC / s) for s in SOURCES), "-o", str(out)]


def _fingerprint(cxx: str) -> str:
    build = f"{cxx} {sys.version} {sysconfig.get_config_var('EXT_SUFFIX')} {_sanitizer_flags()}"
    digest = hashlib.sha256(build.encode())
    for path in sorted(CSRC.rglob("*")):
        if path.suffix in (".cu", ".cuh", ".h", ".cpp"):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def build() -> object:
    """The emulated extension module; builds it on first use (about 15 s). Raises
    EmulationUnavailable without a C++ compiler or pybind11, RuntimeError if the
    build fails."""
    cxx = _compiler()
    if cxx is None:
        raise EmulationUnavailable("no C++ compiler (c++, g++ or $CXX) to build the CUDA emulation")
    try:
        import pybind11  # noqa: F401
    except ImportError as exc:
        raise EmulationUnavailable("pybind11 is needed to build the CUDA emulation") from exc
    cache = Path(os.environ.get("RDKERNELS_EMULATION_CACHE", Path.home() / ".cache" / "rdkernels" / "emulation"))
    folder = cache / _fingerprint(cxx)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / (MODULE + sysconfig.get_config_var("EXT_SUFFIX"))
    with open(folder / "lock", "w") as lock:  # test workers build it once between them
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            partial = out.with_suffix(".partial")
            done = subprocess.run(_command(cxx, partial), capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"building the CUDA emulation failed:\n{done.stderr[-4000:]}")
            partial.replace(out)
    spec = importlib.util.spec_from_file_location(MODULE, out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install(module, monkeypatch, order: str = "forward") -> None:
    """Until ``monkeypatch`` undoes it, the ops' CUDA wrappers call ``module`` (CPU
    tensors, stream 0), whose block threads run in ``order``. The shared-memory checks
    (ops/_cuda_common.py) ask ``module`` too: CPU tensors stand on an emulated GPU
    whose blocks get the shared memory the emulation reports (an H100's)."""
    from rdkernels.ops._cuda_common import extension_patches
    for target, name, value in extension_patches(module):
        monkeypatch.setattr(target, name, value)
    monkeypatch.setenv("RDKERNELS_EMULATION_ORDER", order)
