"""What a report or a result records about the machine: the versions of the
packages a timing depends on, and the CPU's model. One reader for the
environment report (``python -m rdkernels``), the benchmarks and the harness."""
from __future__ import annotations

import platform


def module_version(name: str) -> str | None:
    """``name``'s ``__version__``; None if it does not import (not installed, or a
    broken install: a report says so rather than raising)."""
    try:
        module = __import__(name)
    except Exception:
        return None
    return getattr(module, "__version__", "unknown")


def cuda_extension_built() -> bool:
    try:
        from rdkernels import _C  # noqa: F401
    except Exception:
        return False
    return True


def versions(*extra_modules: str) -> dict:
    """Python's, torch's (and the CUDA it was built with), Triton's and numpy's
    versions, then ``extra_modules``', and whether the CUDA extension is built."""
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    out.update({name: module_version(name) for name in ("triton", "numpy", *extra_modules)})
    out["rdkernels_cuda_extension"] = cuda_extension_built()
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
