"""What a report or a result records about the machine: the versions of the
packages a timing depends on, the CPU's model, and the device a run asks for.
One reader for the environment report (``python -m rdkernels``), the benchmarks
and the harness."""
from __future__ import annotations

import platform

import torch


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


def resolve_device(name: str) -> torch.device:
    """'auto' (the current GPU if torch sees one, else the CPU), or 'cpu', 'cuda' or
    'cuda:N' where this process can run on it; anything else is a ValueError that says why."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):   # a name torch does not know
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"device {name!r}: torch sees no CUDA GPU here (torch {torch.__version__}, {build})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0")
    return device
