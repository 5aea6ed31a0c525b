"""bank_update_: in-place momentum update of memory-bank rows.

    bank[index[b]] = normalize(momentum * bank[index[b]] + (1 - momentum) * values[b])

Duplicate ids in ``index`` are deterministic: the last occurrence wins, mixed
with the row as it was before the call. No autograd: the bank is a buffer.

The Triton and CUDA kernels write through a raw pointer, which autograd does not
see; the wrapper bumps the bank's version counter itself, so a backward that
saved the bank (``bank_contrast(..., epilogue="scores")``) raises instead of
using the new rows.
"""
from __future__ import annotations

import torch

from rdkernels import backend as _backend
from rdkernels._validation import (BANK_DTYPES, FLOAT_DTYPES, INDEX_DTYPES, check_dim,
                                   check_in_unit_interval, check_index_range, check_tensor)
from rdkernels.ops._eager import eager_or_compiled, op_body
from rdkernels.ops._in_place import check_writable, mark_modified, private_copy
from rdkernels.ops.bank_update.reference import bank_update_reference_

__all__ = ["bank_update_", "bank_update_reference_"]


def _validate(bank, index, values, momentum) -> float:
    """All checks, before anything is written; returns ``momentum`` as a float."""
    check_tensor("bank", bank, ndim=2, dtypes=BANK_DTYPES)
    check_tensor("index", index, ndim=1, dtypes=INDEX_DTYPES, device=bank.device, contiguous=False)
    check_tensor("values", values, ndim=2, dtypes=FLOAT_DTYPES, device=bank.device, contiguous=False)
    check_dim("values", values, 0, index.shape[0], "index's length")
    check_dim("values", values, 1, bank.shape[1], "the bank's row width")
    momentum = check_in_unit_interval("momentum", momentum)
    check_writable("bank", bank, "update")
    return momentum


@op_body
def _bank_update_impl(bank: torch.Tensor, index: torch.Tensor, values: torch.Tensor, momentum: float,
                    backend: str, check_indices: bool) -> None:
    if check_indices:
        check_index_range("index", index, bank.shape[0])
    if backend == "cuda":
        from rdkernels.ops.bank_update.cuda import bank_update_cuda_
        bank_update_cuda_(bank, index, private_copy(values, bank), momentum)
    elif backend == "triton":
        from rdkernels.ops.bank_update.triton import bank_update_triton_
        bank_update_triton_(bank, index, private_copy(values, bank), momentum)
    else:  # reads the values rows (a gather: a copy) before it writes
        bank_update_reference_(bank, index, values, momentum)


_bank_update_op = torch.library.custom_op("rdkernels::bank_update_", _bank_update_impl, mutates_args=("bank",))
_bank_update = eager_or_compiled(_bank_update_op, _bank_update_impl)


@_bank_update_op.register_fake
def _(bank, index, values, momentum, backend, check_indices) -> None:
    return None


def bank_update_(bank: torch.Tensor, index: torch.Tensor, values: torch.Tensor, momentum: float,
                 *, backend: str | None = None, check_indices: bool = True) -> torch.Tensor:
    """Update ``bank`` (contiguous) in place and return it. ``values`` may carry
    autograd history; it is detached (the bank is a buffer). Strided ``index`` or
    ``values`` are copied first. ``check_indices=False``
    skips the range check of ``index`` (one host sync) for callers that made it.

    ``bank`` must not require grad while grad mode is on (update a parameter
    under ``torch.no_grad()``), and a bank made under ``torch.inference_mode()``
    can only be updated inside it."""
    momentum = _validate(bank, index, values, momentum)
    name = _backend.resolve(bank.device, "bank_update", backend)
    _bank_update(bank, index.contiguous(), values.detach().contiguous(), momentum, name, check_indices)
    if not torch.compiler.is_compiling():  # compiled: the custom op declares the mutation
        mark_modified(bank)
    return bank

