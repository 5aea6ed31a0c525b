"""Input checks shared by the ops. Every error names the argument at fault.

The checks run before any kernel and before any buffer is written, so a call
that fails leaves memory banks, queues and Z exactly as they were.
"""
from __future__ import annotations

import math
import numbers
import operator
import os
from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BANK_DTYPES = (torch.float32, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def index_checks_enabled() -> bool:
    """Range checks of index tensors cost one host sync per call on a GPU.

    They are on by default; ``RDKERNELS_CHECK_INDICES=0`` turns them off for
    production runs whose indices are known to be valid, and with them the
    checks that share their sync (Z positive and finite, the bank losses'
    features finite), and RRDLoss's check that what it enqueues is finite.
    """
    return os.environ.get("RDKERNELS_CHECK_INDICES", "1") != "0"


def host_reads_allowed(t: torch.Tensor) -> bool:
    """Whether a check may read ``t``'s values on the host right now.

    Not while torch.compile traces (a host read breaks the graph; the ops check
    inside their opaque bodies instead), and not while a CUDA graph is being
    captured: a read there is an error, and a check at capture time would only
    ever see the capture-time values, since a replay runs on whatever the
    captured buffers hold. Captured steps rely on their inputs being valid by
    construction, as a run with ``RDKERNELS_CHECK_INDICES=0`` does. Nor on
    tensors without values (meta or fake tensors, used to infer shapes).
    """
    if torch.compiler.is_compiling() or t.device.type == "meta" or _is_fake(t):
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
        raise ValueError(f"{name} must have {ndim} dimension{'' if ndim == 1 else 's'}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_dtype_names(dtypes)}), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but must be on {device} like the other inputs")
    if nonempty and t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous: it is state the op reads (or writes) in place, so a copy "
                         f"made here would hide a per-call cost (or the update); keep it contiguous")


def check_dim(name: str, t: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(
            f"{name} has size {t.shape[dim]} in dimension {dim} but must match {what} ({expected})"
        )


def check_index_range(name: str, idx: torch.Tensor, upper: int) -> None:
    """All of ``idx`` must lie in [0, upper). One fused reduction, one sync."""
    check_index_ranges({name: idx}, upper)


def check_index_ranges(named: dict, upper: int, positive: dict | None = None, finite: dict | None = None) -> None:
    """Range-check several index tensors with a single host sync.

    ``positive``: one-element float tensors (such as the NCE normaliser Z) that
    must be positive and finite; ``finite``: float tensors that must hold no NaN
    or inf. Both are read in the same sync rather than one of their own; the ops
    never sync just for them.
    """
    named = {k: v for k, v in named.items() if v is not None and v.numel() > 0}
    positive = {k: v for k, v in (positive or {}).items() if v is not None}
    finite = {k: v for k, v in (finite or {}).items() if v is not None}
    tensors = [*named.values(), *positive.values(), *finite.values()]
    if not index_checks_enabled() or not tensors:
        return
    if not all(host_reads_allowed(t) for t in tensors):
        return
    rows = [torch.stack(torch.aminmax(t)).long() for t in named.values()]
    for v in positive.values():
        ok = ((v > 0) & torch.isfinite(v)).all()
        rows.append(torch.stack([ok, ok]).long())
    for v in finite.values():
        ok = torch.isfinite(v).all()
        rows.append(torch.stack([ok, ok]).long())
    bounds = torch.stack(rows).tolist()
    for name, (lo, hi) in zip(named, bounds):
        if lo < 0 or hi >= upper:
            raise ValueError(f"{name} holds values in [{lo}, {hi}] but must lie in [0, {upper})")
    flags = bounds[len(named):]
    for (name, v), (ok, _) in zip(positive.items(), flags):
        if not ok:  # the error path may afford a second read
            raise ValueError(f"{name} must be positive and finite, got {v.reshape(-1).tolist()}")
    for name, (ok, _) in zip(finite, flags[len(positive):]):
        if not ok:
            raise ValueError(f"{name} holds NaN or inf entries; nothing was computed or written")


def check_tensors_finite(named: dict) -> None:
    """Refuse NaN or inf in any of the ``named`` float tensors, with one host sync
    (under the same switch and conditions as :func:`check_index_ranges`)."""
    check_index_ranges({}, 0, finite=named)


def _not_a(kind: str, name: str, value) -> TypeError:
    hint = " (pass a Python number, e.g. t.item())" if isinstance(value, torch.Tensor) else ""
    return TypeError(f"{name} must be {kind}, got {type(value).__name__}{hint}")


def as_real(name: str, value) -> float:
    """``value`` as a Python float: any real scalar (Python or NumPy) but bool.

    bool is a subclass of int, and ``temperature=True`` is a mistake rather than
    1.0. Tensors are refused: reading one costs a host sync per call, and one
    that requires grad would silently get no gradient.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise _not_a("a real number", name, value)


def as_int(name: str, value) -> int:
    """``value`` as a Python int: any integer (Python or NumPy, via operator.index)
    but bool, and not a tensor (see :func:`as_real`)."""
    if not isinstance(value, (bool, torch.Tensor)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise _not_a("an integer", name, value)


def check_positive(name: str, value) -> float:
    """A positive finite real number, returned as a float."""
    number = as_real(name, value)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return number


def check_finite(name: str, value) -> float:
    """A finite real number, returned as a float."""
    number = as_real(name, value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def check_non_negative(name: str, value) -> float:
    """A finite real number >= 0, returned as a float."""
    number = as_real(name, value)
    if not 0.0 <= number < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def check_in_unit_interval(name: str, value) -> float:
    """A real number in [0, 1], returned as a float."""
    number = as_real(name, value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return number


def check_positive_int(name: str, value) -> int:
    """An integer >= 1, returned as an int."""
    number = as_int(name, value)
    if number < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return number


def _is_fake(t: torch.Tensor) -> bool:
    try:
        from torch._subclasses.fake_tensor import FakeTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, FakeTensor)
