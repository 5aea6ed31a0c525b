"""Which implementation runs an op: ``auto | cuda | triton | torch``.

``set_backend(name)`` (or the ``RDKERNELS_BACKEND`` environment variable) forces
one; ``auto`` picks, per call, from the tensors' device:

* CUDA tensors: the CUDA extension if it is built, has a kernel for the op and
  was compiled for this GPU's architecture (or an older one), else Triton, else torch.
  Triton counts only from release 3.4 (``MIN_TRITON``), the oldest the kernels are
  tested with; the CUDA bank contrast needs it too (its merges are Triton kernels).
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

from rdkernels._versions import dotted, older_than

BACKENDS = ("auto", "cuda", "triton", "torch")
_ENV_VAR = "RDKERNELS_BACKEND"
_forced: str | None = None


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run the op on these tensors."""


def _check_name(name: str, what: str = "backend") -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}, got {name!r}")
    return name.lower()


def set_backend(name: str) -> None:
    """Force a backend for every op (``"auto"`` restores the per-call choice)."""
    global _forced
    _forced = _check_name(name)


def get_backend() -> str:
    """The backend asked for: set_backend's, else RDKERNELS_BACKEND's (empty: unset), else auto."""
    if _forced is not None:
        return _forced
    return _check_name(os.environ.get(_ENV_VAR) or "auto", what=f"the environment variable {_ENV_VAR}")


def requested_backend(requested: str | None = None) -> str:
    """The backend a call asks for, lower-cased and checked: ``requested`` (a per-call or
    per-module setting), else the global one (:func:`get_backend`)."""
    return _check_name(requested) if requested is not None else get_backend()


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


def triton_runs_compiled(device: torch.device) -> bool:
    """Whether a Triton kernel launched on this device's tensors runs compiled on a
    GPU; else the interpreter runs it on CPU tensors (tile sizes, split counts and
    timings are then the interpreter's)."""
    return device.type == "cuda" and not triton_interpreter_enabled()


# Triton reads TRITON_INTERPRET once, when it is imported, and importing rdkernels
# imports it (torch.compile's modules do): a variable set later leaves Triton's own
# jitted helpers compiled for a GPU, and an interpreted kernel that calls one fails
# with "Cannot call @triton.jit'd outside of the scope of a kernel".
_INTERPRETER_AT_IMPORT = triton_interpreter_enabled()


# Import probes, done once. A plain dict rather than functools.lru_cache so that
# torch.compile traces the lookups without warnings.
_probes: dict = {}


# The oldest Triton the kernels are tested with (its interpreter runs the op and loss
# tests; 3.1's rejects the kernels, 3.2's and 3.3's cannot run them on the CPU).
MIN_TRITON = (3, 4)


def triton_version_shortfall(version: str) -> str | None:
    """Why Triton ``version`` cannot run rdkernels' kernels, or None."""
    if not older_than(version, MIN_TRITON):
        return None
    return (f"triton {version} is older than {dotted(MIN_TRITON)}, the oldest release rdkernels' Triton kernels "
            f"are tested with (pip install 'triton>={dotted(MIN_TRITON)}', or use backend 'cuda' or 'torch')")


def _triton_import_error() -> str | None:
    if "triton" not in _probes:
        try:
            import triton
            _probes["triton"] = triton_version_shortfall(getattr(triton, "__version__", ""))
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
        if not triton_interpreter_enabled():
            return ("Triton kernels run on CPU tensors only under its interpreter: "
                    "set TRITON_INTERPRET=1 before importing rdkernels")
        if not _INTERPRETER_AT_IMPORT:
            return ("TRITON_INTERPRET=1 was set after rdkernels was imported, and Triton (which rdkernels imports) "
                    "reads it only at import: set it before importing rdkernels, e.g. at the top of the script "
                    "or in the shell")
        return None
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


# The CUDA kernels use TF32 tensor-core mma (bank_contrast_dense.cu): nothing below sm_80 builds.
MIN_CUDA_ARCH = 80


def cuda_index(device: torch.device) -> int:
    """The index of CUDA ``device`` (``cuda`` alone is the current device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def multiprocessor_count(device: torch.device) -> int:
    """The SM count of CUDA ``device``, asked once per device: the split heuristics
    run on every call, and torch's property lookup costs microseconds of host time
    in ops whose kernels run in tens of them."""
    index = cuda_index(device)
    key = f"sms:{index}"
    if key not in _probes:
        _probes[key] = torch.cuda.get_device_properties(index).multi_processor_count
    return _probes[key]


def _device_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _kernel_image_error(module, index: int) -> str:
    """The extension's answer for device ``index`` ("" if it has code the GPU can run)."""
    if not hasattr(module, "kernel_image_error"):
        return ""
    with torch.cuda.device(index):  # torch's switch: no context made on the device it leaves
        return module.kernel_image_error()


# What the runtime says when a module has no code for the device; a rebuild for the GPU helps.
_NO_IMAGE_ERRORS = ("cudaErrorNoKernelImageForDevice", "cudaErrorInvalidDeviceFunction",
                    "cudaErrorUnsupportedPtxVersion")


def arch_mismatch(capability: tuple[int, int], compiled: list[int], image_error: str = "") -> str | None:
    """Why the extension cannot run on a GPU of ``capability``, or None.

    ``compiled`` is its architecture list (800 = sm_80), ``image_error`` what the
    CUDA runtime said when asked for one of its kernels on that GPU ("" if found).
    Code for sm_XY runs on sm_XZ with Z >= Y, and PTX is compiled on load for newer
    GPUs; the list alone cannot tell whether PTX was embedded, the runtime can."""
    gpu = f"{capability[0]}{capability[1]}"
    if 10 * capability[0] + capability[1] < MIN_CUDA_ARCH:
        return (f"rdkernels' CUDA kernels need sm_{MIN_CUDA_ARCH} or newer (TF32 tensor-core mma); "
                f"this GPU is sm_{gpu}")
    if image_error and not image_error.startswith(_NO_IMAGE_ERRORS):
        # e.g. a driver too old for the CUDA runtime the extension was built with
        return f"the CUDA runtime of rdkernels._C cannot run its kernels here ({image_error})"
    cc = 100 * capability[0] + 10 * capability[1]
    if not image_error and (not compiled or any(arch <= cc for arch in compiled)):
        return None  # (an extension too old to say either: the launch will tell)
    built = ", ".join(f"sm_{arch // 10}" for arch in compiled) or "unknown architectures"
    why = f" ({image_error})" if image_error else ""
    return (f"rdkernels._C was built for {built}, with no code this GPU (sm_{gpu}) can run{why}: "
            f"rebuild with RDKERNELS_CUDA_ARCHS={gpu} to use it")


@torch.compiler.assume_constant_result
def _cuda_arch_reason(index: int) -> str | None:
    """arch_mismatch for CUDA device ``index``, probed once per device. A constant to
    torch.compile, which cannot trace the calls into the extension."""
    key = f"cuda_arch:{index}"
    if key not in _probes:
        module, _ = _cuda_extension()
        compiled = list(module.compiled_archs()) if hasattr(module, "compiled_archs") else []
        _probes[key] = arch_mismatch(_device_capability(index), compiled, _kernel_image_error(module, index))
    return _probes[key]


# CUDA ops whose wrappers also launch Triton kernels (bank contrast's split merges and
# the dense strategy's table of sampled rows, shared with the Triton backend).
_CUDA_OPS_USING_TRITON = ("bank_contrast",)


def cuda_device_reason(device: torch.device) -> str | None:
    """Why the cuda backend cannot run on ``device``'s tensors, whatever the op."""
    if device.type != "cuda":
        return f"the cuda backend needs CUDA tensors, got {device.type} tensors"
    return None


def cuda_unavailable_reason(device: torch.device, op: str) -> str | None:
    reason = cuda_device_reason(device)
    if reason:
        return reason
    module, err = _cuda_extension()
    if module is None:
        return err
    if not hasattr(module, op):
        return f"rdkernels._C has no CUDA kernel for {op!r}"
    if op in _CUDA_OPS_USING_TRITON:
        reason = triton_unavailable_reason(device)
        if reason:
            return f"its {op} merges partial results with Triton kernels, and {reason}"
    return _cuda_arch_reason(cuda_index(device))


def resolve(device: torch.device, op: str, requested: str | None = None, *, public_name: str | None = None) -> str:
    """The concrete backend (``cuda | triton | torch``) that runs ``op`` here.

    ``op`` names the function the CUDA extension exports for this op; ``public_name``,
    the op the caller called, where that is another (estimate_nce_z runs bank_contrast).
    """
    name = requested_backend(requested)
    if name == "torch":
        return "torch"
    if name == "cuda":
        reason = cuda_unavailable_reason(device, op)
        if reason:
            raise BackendUnavailable(f"backend 'cuda' cannot run {public_name or op}: {reason}")
        return "cuda"
    if name == "triton":
        reason = triton_unavailable_reason(device)
        if reason:
            raise BackendUnavailable(f"backend 'triton' cannot run {public_name or op}: {reason}")
        return "triton"
    # auto
    if device.type == "cuda":
        if cuda_unavailable_reason(device, op) is None:
            return "cuda"
        if triton_unavailable_reason(device) is None:
            return "triton"
    return "torch"


def resolve_triton_only(device: torch.device, op: str, requested: str | None = None,
                        too_large: str | None = None, torch_only: bool = False) -> str:
    """The backend (``triton | torch``) of an op with a Triton kernel and no CUDA one.

    ``auto`` takes Triton's kernel on a GPU where Triton runs, torch otherwise.
    ``cuda`` does the same on CUDA tensors (the GPU path, with or without Triton: a
    ``cuda`` setting serves every loss where the extension is built) and raises on
    others, as it does for the ops with a CUDA kernel: a script that asked for the GPU
    path and runs on CPU tensors hears of it at its first op. ``triton`` takes the
    kernel wherever Triton runs (the interpreter included) and raises where it cannot.
    ``too_large``, the reason the kernel cannot take this call's size, sends ``auto``
    and ``cuda`` to torch and makes ``triton`` raise. ``torch_only``: a call the op
    sends to its torch formulation under every backend, by design (the request is
    still checked: a misspelt name, cuda on CPU tensors, or triton where Triton
    cannot run raises all the same).
    """
    name = requested_backend(requested)
    reason = cuda_device_reason(device) if name == "cuda" else None
    if reason:
        raise BackendUnavailable(f"backend 'cuda' cannot run {op}: {reason}")
    triton_reason = triton_unavailable_reason(device)
    if name == "triton" and (triton_reason or (too_large and not torch_only)):
        raise BackendUnavailable(f"backend 'triton' cannot run {op}: {triton_reason or too_large}")
    if torch_only or name == "torch":
        return "torch"
    if name == "triton":
        return "triton"
    return "triton" if device.type == "cuda" and not (triton_reason or too_large) else "torch"


def available_backends(device: torch.device | str, op: str) -> list[str]:
    """Concrete backends that can run ``op`` on ``device`` (for tests and benchmarks)."""
    device = torch.device(device)
    out = ["torch"]
    if triton_unavailable_reason(device) is None:
        out.append("triton")
    if cuda_unavailable_reason(device, op) is None:
        out.append("cuda")
    return out
