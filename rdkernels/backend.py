"""Which implementation runs an op: ``auto | cuda | triton | torch``.

``set_backend(name)`` (or the ``RDKERNELS_BACKEND`` environment variable) forces
one; ``auto`` picks, per call, from the tensors' device:

* CUDA tensors: the CUDA extension if it is built and has a kernel for the op,
  else Triton, else torch.
* CPU tensors: torch. Triton's interpreter (``TRITON_INTERPRET=1``) can run the
  Triton kernels on CPU tensors, but it is a correctness tool (milliseconds per
  program), so ``auto`` never picks it; ask for ``"triton"`` explicitly.

A backend that is asked for and cannot run raises :class:`BackendUnavailable`
with the reason; ``auto`` never fails for lack of a GPU.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

BACKENDS = ("auto", "cuda", "triton", "torch")
_ENV_VAR = "RDKERNELS_BACKEND"
_forced: str | None = None


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run the op on these tensors."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name.lower()


def set_backend(name: str) -> None:
    """Force a backend for every op (``"auto"`` restores the per-call choice)."""
    global _forced
    _forced = _check_name(name)


def get_backend() -> str:
    """The backend asked for: set_backend's, else RDKERNELS_BACKEND's, else auto."""
    if _forced is not None:
        return _forced
    return _check_name(os.environ.get(_ENV_VAR, "auto"))


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`."""
    global _forced
    previous, _forced = _forced, _check_name(name)
    try:
        yield
    finally:
        _forced = previous


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Import probes, done once. A plain dict rather than functools.lru_cache so that
# torch.compile traces the lookups without warnings.
_probes: dict = {}


def _triton_import_error() -> str | None:
    if "triton" not in _probes:
        try:
            import triton  # noqa: F401
            _probes["triton"] = None
        except Exception as exc:  # ImportError, or a broken install
            _probes["triton"] = f"triton cannot be imported ({exc})"
    return _probes["triton"]


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None if Triton kernels can run on ``device``, else why not."""
    err = _triton_import_error()
    if err:
        return err
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if triton_interpreter_enabled():
            return None
        return ("Triton kernels run on CPU tensors only under its interpreter: "
                "set TRITON_INTERPRET=1 before importing rdkernels' kernels")
    return f"Triton has no backend for device type {device.type!r}"


def _cuda_extension():
    if "cuda" not in _probes:
        try:
            from rdkernels import _C
            _probes["cuda"] = (_C, None)
        except ImportError as exc:
            _probes["cuda"] = (None, f"the CUDA extension rdkernels._C is not built ({exc})")
    return _probes["cuda"]


def cuda_extension():
    """The compiled module ``rdkernels._C``; raises BackendUnavailable if missing."""
    module, err = _cuda_extension()
    if module is None:
        raise BackendUnavailable(err)
    return module


def cuda_unavailable_reason(device: torch.device, op: str) -> str | None:
    if device.type != "cuda":
        return f"the cuda backend needs CUDA tensors, got {device.type} tensors"
    module, err = _cuda_extension()
    if module is None:
        return err
    if not hasattr(module, op):
        return f"rdkernels._C has no CUDA kernel for {op!r}"
    return None


def resolve(device: torch.device, op: str, requested: str | None = None) -> str:
    """The concrete backend (``cuda | triton | torch``) that runs ``op`` here.

    ``op`` names the function the CUDA extension exports for this op.
    """
    name = _check_name(requested) if requested is not None else get_backend()
    if name == "torch":
        return "torch"
    if name == "cuda":
        reason = cuda_unavailable_reason(device, op)
        if reason:
            raise BackendUnavailable(f"backend 'cuda' cannot run {op}: {reason}")
        return "cuda"
    if name == "triton":
        reason = triton_unavailable_reason(device)
        if reason:
            raise BackendUnavailable(f"backend 'triton' cannot run {op}: {reason}")
        return "triton"
    # auto
    if device.type == "cuda":
        if cuda_unavailable_reason(device, op) is None:
            return "cuda"
        if triton_unavailable_reason(device) is None:
            return "triton"
    return "torch"


def available_backends(device: torch.device | str, op: str) -> list[str]:
    """Concrete backends that can run ``op`` on ``device`` (for tests and benchmarks)."""
    device = torch.device(device)
    out = ["torch"]
    if triton_unavailable_reason(device) is None:
        out.append("triton")
    if cuda_unavailable_reason(device, op) is None:
        out.append("cuda")
    return out
