"""Input checks shared by the ops. Every error names the argument at fault.

The checks run before any kernel and before any buffer is written, so a call
that fails leaves memory banks, queues and Z exactly as they were.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BANK_DTYPES = (torch.float32, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def index_checks_enabled() -> bool:
    """Range checks of index tensors cost one host sync per call on a GPU.

    They are on by default; ``RDKERNELS_CHECK_INDICES=0`` turns them off for
    production runs whose indices are known to be valid.
    """
    return os.environ.get("RDKERNELS_CHECK_INDICES", "1") != "0"


def host_reads_allowed(t: torch.Tensor) -> bool:
    """Whether a check may read ``t``'s values on the host right now.

    Not while torch.compile traces (a host read breaks the graph; the ops check
    inside their opaque bodies instead), and not while a CUDA graph is being
    captured: a read there is an error, and a check at capture time would only
    ever see the capture-time values, since a replay runs on whatever the
    captured buffers hold. Captured steps rely on their inputs being valid by
    construction, as a run with ``RDKERNELS_CHECK_INDICES=0`` does.
    """
    if torch.compiler.is_compiling():
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    t,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    contiguous: bool = True,
    nonempty: bool = True,
) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_dtype_names(dtypes)}), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but must be on {device} like the other inputs")
    if nonempty and t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


def check_dim(name: str, t: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(
            f"{name} has size {t.shape[dim]} in dimension {dim} but must match {what} ({expected})"
        )


def check_index_range(name: str, idx: torch.Tensor, upper: int) -> None:
    """All of ``idx`` must lie in [0, upper). One fused reduction, one sync."""
    check_index_ranges({name: idx}, upper)


def check_index_ranges(named: dict, upper: int) -> None:
    """Range-check several index tensors with a single host sync."""
    named = {k: v for k, v in named.items() if v is not None and v.numel() > 0}
    if not index_checks_enabled() or not named:
        return
    if any(t.device.type == "meta" or _is_fake(t) or not host_reads_allowed(t) for t in named.values()):
        return
    bounds = torch.stack([torch.stack(torch.aminmax(t)).long() for t in named.values()]).tolist()
    for name, (lo, hi) in zip(named, bounds):
        if lo < 0 or hi >= upper:
            raise ValueError(f"{name} holds values in [{lo}, {hi}] but must lie in [0, {upper})")


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and value == value and value != float("inf")):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_in_unit_interval(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def _is_fake(t: torch.Tensor) -> bool:
    try:
        from torch._subclasses.fake_tensor import FakeTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, FakeTensor)
