"""Constants and the split heuristic shared by the Triton and CUDA paths.

Each split of the queue leaves, per query row, base-2 statistics
m_s, l_s, m_t, l_t, cross and (for the gradient) acc_s, acc_t [d]; both
backends merge them in a kernel (see triton.py).
"""
from __future__ import annotations

import torch

from rdkernels.ops._scratch import aligned
from rdkernels.ops._splits import split_tiles, splits_wanted

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def split_queue(n_rows: int, want: int, tile: int) -> tuple[int, int]:
    """(splits, queue rows per split): at most ``want`` splits (and at least one), each
    whole tiles of ``tile`` rows, none empty."""
    splits, per = split_tiles(-(-n_rows // tile), want)
    return splits, per * tile


def num_splits_cuda(batch: int, n_rows: int, rows_per_block: int, tile: int, device: torch.device):
    """(splits, queue rows per split) for the CUDA kernel: about two blocks of
    ``rows_per_block`` query rows an SM (ops/_splits.py; not swept as the Triton
    kernel's count was), two on a CPU."""
    want = splits_wanted(-(-batch // rows_per_block), device, programs_per_sm=2, interpreter=2)
    return split_queue(n_rows, want, tile)


def split_buffers(batch: int, dim: int, splits: int, need_grad: bool, device: torch.device,
                  accumulators: bool = False):
    """(scratch, acc_at, loss, dq): the splits' statistics stats[5, splits, B] at the
    start of ``scratch`` and, with the gradient (or ``accumulators``), acc[2, splits,
    B, d] from element ``acc_at`` on (one allocation: the op is host-bound at RRD's
    sizes); the outputs loss[B] and dq[B, d] (empty without the gradient), all fp32."""
    f32 = dict(device=device, dtype=torch.float32)
    acc_at = aligned(5 * splits * batch)
    with_acc = need_grad or accumulators
    scratch = torch.empty(acc_at + 2 * splits * batch * dim if with_acc else 5 * splits * batch, **f32)
    return scratch, acc_at, torch.empty(batch, **f32), torch.empty(batch, dim, **f32) if need_grad else \
        torch.empty(0, **f32)
