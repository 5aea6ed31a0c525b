"""What the ops that write a buffer in place share (bank_update_, fifo_enqueue_)."""
from __future__ import annotations

import torch

__all__ = ["check_writable", "mark_modified", "private_copy"]


def check_writable(name: str, buffer: torch.Tensor, how: str) -> None:
    """Refuse, before anything is written, the writes torch would refuse only after
    a kernel ran (and the fused kernels never refuse): to an inference tensor
    outside inference mode, and to a tensor that requires grad in grad mode.
    ``how`` completes "update it under torch.no_grad()"-style advice, e.g. "update"."""
    # (Dynamo cannot trace is_inference(); a compiled step leaves that check to torch.)
    if not torch.compiler.is_compiling() and buffer.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(f"{name} was created under torch.inference_mode() and cannot be written outside it: "
                         f"{how} it inside torch.inference_mode(), or make the {name} outside it")
    if buffer.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} requires grad; it is a buffer: {how} it under torch.no_grad() or pass a "
                         "tensor that does not require grad")


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
