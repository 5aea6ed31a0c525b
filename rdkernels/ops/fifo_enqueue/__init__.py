"""fifo_enqueue_: write a batch of keys into a FIFO queue of embeddings and advance its pointer.

    queue[(ptr + i) mod N] = keys[i]   for the last min(B, N) keys;   ptr = (ptr + B) mod N

RRD (and MoCo-style losses) enqueue the teacher's embeddings every step. As
torch ops that is seven kernel launches (the positions, the copy, the
pointer's update), all computed on the device so that no step waits for the
host; the Triton kernel does it in one. The pointer is a one-element int64
tensor beside the queue, so a CUDA graph captures the step and its replays
move on. No autograd: the queue is a buffer, the keys are detached.

Backends: ``triton`` (a GPU, or CPU tensors under Triton's interpreter) and
``torch``; ``cuda`` runs Triton's kernel (the extension has none). Batches of
more than MAX_ELEMENTS values take the torch formulation under every backend
(the kernel is one program: see triton.py).
"""
from __future__ import annotations

import torch

from rdkernels import backend as _backend
from rdkernels._validation import FLOAT_DTYPES, check_dim, check_tensor
from rdkernels.ops._eager import eager_or_compiled, op_body
from rdkernels.ops._in_place import check_writable, mark_modified, private_copy
from rdkernels.ops.fifo_enqueue.reference import fifo_enqueue_reference_

__all__ = ["fifo_enqueue_", "fifo_enqueue_reference_"]

MAX_ELEMENTS = 1 << 17   # keys values one program copies (B = 1024 at d = 128): ~0.5 MB of fp32


def _validate(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    check_tensor("queue", queue, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("ptr", ptr, dtypes=(torch.int64,), device=queue.device)
    if ptr.numel() != 1:
        raise ValueError(f"ptr must hold exactly one element (the next row to write), got shape {tuple(ptr.shape)}")
    check_tensor("keys", keys, ndim=2, dtypes=FLOAT_DTYPES, device=queue.device, contiguous=False,
                 nonempty=False)
    check_dim("keys", keys, 1, queue.shape[1], "the queue's row width")
    check_writable("queue", queue, "enqueue into")
    check_writable("ptr", ptr, "enqueue with")


def _resolve(keys: torch.Tensor, requested: str | None) -> str:
    """triton where its kernel runs and the batch is within MAX_ELEMENTS, else torch;
    an explicit ``triton`` that cannot run raises. A larger batch is not refused:
    the torch formulation is this op's path for it under every backend."""
    return _backend.resolve_triton_only(keys.device, "fifo_enqueue_", requested,
                                        torch_only=keys.numel() > MAX_ELEMENTS)


@op_body
def _fifo_enqueue_impl(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor, backend: str) -> None:
    keys = private_copy(keys, queue)   # rows of the queue itself
    if backend == "triton":
        from rdkernels.ops.fifo_enqueue.triton import fifo_enqueue_triton_
        fifo_enqueue_triton_(queue, ptr, keys)
    else:
        fifo_enqueue_reference_(queue, ptr, keys)


_fifo_enqueue_op = torch.library.custom_op("rdkernels::fifo_enqueue_", _fifo_enqueue_impl,
                                           mutates_args=("queue", "ptr"))
_fifo_enqueue = eager_or_compiled(_fifo_enqueue_op, _fifo_enqueue_impl)


@_fifo_enqueue_op.register_fake
def _(queue, ptr, keys, backend) -> None:
    return None


def fifo_enqueue_(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor, *,
                  backend: str | None = None) -> torch.Tensor:
    """Write ``keys`` [B, d] at rows ptr, ptr + 1, ... (mod N) of ``queue`` [N, d] and
    advance ``ptr`` by B (mod N), in place; return ``queue``.

    Any B works (no N % B == 0 requirement): with B > N only the last N keys
    survive, as writing them one after another would leave the queue. ``keys``
    may carry autograd history (they are detached) and any dtype of the three
    float types (converted to the queue's); strided keys are copied first.
    ``ptr``: a one-element int64 tensor on the queue's device, read and
    written there (no host sync). ``backend``: ``"triton" | "torch"``
    (``"cuda"``: Triton's kernel on a GPU); default per :mod:`rdkernels.backend`.
    """
    _validate(queue, ptr, keys)
    name = _resolve(keys, backend)
    keys = keys.detach()
    if keys.stride(1) != 1:   # the kernel reads a row as one vector
        keys = keys.contiguous()
    _fifo_enqueue(queue, ptr, keys, name)
    if name == "triton" and not torch.compiler.is_compiling():
        mark_modified(queue, ptr)
    return queue
