"""The FIFO enqueue as torch ops: the reference, and the path for wide batches."""
from __future__ import annotations

import torch


@torch.no_grad()
def fifo_enqueue_reference_(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` [B, d] at rows ptr, ptr+1, ... (mod N) of ``queue`` [N, d]; advance ``ptr``.

    Works for any B: no N % B == 0 requirement (the reference code asserts it).
    When B > N only the last N keys survive, exactly as writing them one after
    another would leave the queue. ``ptr`` is a one-element int64 tensor on the
    queue's device; the write positions are computed there, so there is no host
    sync. Seven kernels on a GPU (arange, two adds, remainder, index_copy_, and
    the pointer's add_ and remainder_).
    """
    n_rows = queue.shape[0]
    batch = keys.shape[0]
    if batch > n_rows:
        keys = keys[batch - n_rows:]
    skip = batch - keys.shape[0]
    pos = (ptr.reshape(()) + skip + torch.arange(keys.shape[0], device=queue.device)) % n_rows
    queue.index_copy_(0, pos, keys.detach().to(queue.dtype))
    ptr.add_(batch).remainder_(n_rows)
