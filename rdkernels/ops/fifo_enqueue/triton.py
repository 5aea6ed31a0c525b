"""Triton kernel of the FIFO enqueue: one launch writes the keys and advances the pointer.

One program does all of it. Every write position depends on the pointer, and
the pointer must advance only after every position was computed from its old
value; programs of one launch cannot wait for each other, so a second program
could read a pointer the first had already moved. A single program reads it
once, writes the rows, then, behind a barrier (its warps too run apart),
stores the new value. That bounds the batch the kernel is worth launching for
(MAX_ELEMENTS in __init__.py): RRD enqueues a few hundred rows of 128 floats,
tens of kilobytes, where one program's copy takes about a microsecond and the
torch formulation seven launches.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.ops._aot_types import FLOAT_TYPES
from rdkernels.ops._blocks import block_width
from rdkernels.ops._compile_options import COMPILE_OPTIONS

TILE_ELEMENTS = 4096   # rows x columns a loop step copies: 16 KB of fp32, 16 values a thread
MAX_BLOCK_D = 256      # wider rows are copied in column blocks


@triton.jit
def fifo_enqueue_kernel(queue_ptr, ptr_ptr, keys_ptr, n_rows, batch, dim, stride_keys, first,
                        BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """Keys rows first..batch-1 go to queue rows (ptr + row) mod n_rows (rows before
    ``first`` would be overwritten by later ones: batch > n_rows); ptr += batch."""
    start = tl.load(ptr_ptr)
    start = start % n_rows
    start = tl.where(start < 0, start + n_rows, start)   # torch's remainder: the divisor's sign
    offs_b = tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    for row0 in range(first, batch, BLOCK_B):
        rows = row0 + offs_b
        row_ok = rows < batch
        pos = (start + rows) % n_rows
        for col0 in range(0, dim, BLOCK_D):
            cols = col0 + offs_d
            mask = row_ok[:, None] & (cols < dim)[None, :]
            key = tl.load(keys_ptr + rows.to(tl.int64)[:, None] * stride_keys + cols[None, :], mask=mask)
            tl.store(queue_ptr + pos[:, None] * dim + cols[None, :], key.to(queue_ptr.dtype.element_ty),
                     mask=mask)
    # Every warp read the pointer at the top; none may store the new one before all have,
    # or a warp running late would place its rows from the moved pointer. (The tile loop
    # usually holds a barrier of its own, a layout change through shared memory, but
    # nothing guarantees one.)
    tl.debug_barrier()
    tl.store(ptr_ptr, (start + batch) % n_rows)


def launch_config(dim: int) -> dict:
    block_d = min(MAX_BLOCK_D, block_width(dim))
    # one program: more warps, more loads in flight
    return dict(BLOCK_B=TILE_ELEMENTS // block_d, BLOCK_D=block_d, num_warps=8)


def fifo_enqueue_triton_(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """``queue`` [N, d] contiguous, ``ptr`` one int64, ``keys`` [B, d] with unit column stride."""
    n_rows, dim = queue.shape
    batch = keys.shape[0]
    fifo_enqueue_kernel[(1,)](queue, ptr, keys, n_rows, batch, dim, keys.stride(0), max(0, batch - n_rows),
                              **launch_config(dim), **COMPILE_OPTIONS)


def aot_variants() -> list[dict]:
    """Each column block the launch picks, for every queue and key dtype pair."""
    out = []
    for block_d in (16, 32, 64, 128, 256):
        cfg = launch_config(block_d)
        for queue_dt, queue_name in FLOAT_TYPES.items():
            for key_dt, key_name in FLOAT_TYPES.items():
                out.append({
                    "name": f"fifo_enqueue_d{block_d}_{queue_name}_{key_name}",
                    "kernel": fifo_enqueue_kernel,
                    "signature": {"queue_ptr": f"*{queue_name}", "ptr_ptr": "*i64", "keys_ptr": f"*{key_name}",
                                  "n_rows": "i32", "batch": "i32", "dim": "i32", "stride_keys": "i32",
                                  "first": "i32"},
                    "constexprs": {"BLOCK_B": cfg["BLOCK_B"], "BLOCK_D": cfg["BLOCK_D"]},
                    "num_warps": cfg["num_warps"], "num_stages": 1,
                })
    return out
