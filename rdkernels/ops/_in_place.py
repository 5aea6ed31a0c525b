"""What the ops that write a buffer in place share (bank_update_, fifo_enqueue_)."""
from __future__ import annotations

import torch

__all__ = ["mark_modified", "private_copy"]


def private_copy(values: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """``values``, copied if it shares memory with ``buffer``.

    A kernel reads ``values`` while it (or another program) writes rows of the
    buffer, so a ``values`` that is a view of the buffer could be read after its
    rows were overwritten (and ``index_copy_`` refuses the overlap). Checked in the
    op's body, where the tensors are real under torch.compile too.
    """
    if values.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr():
        return values.clone()
    return values


def mark_modified(*tensors: torch.Tensor) -> None:
    """Bump the version counters as an in-place torch op would: the eager path skips
    the dispatcher, and the kernels write through raw pointers, which autograd does
    not see (a compiled call's custom op declares the mutation instead). Inference
    tensors have no version counter."""
    for t in tensors:
        if not t.is_inference():
            torch.autograd.graph.increment_version(t)
