"""Merging per-split online-softmax statistics (shared by the Triton and CUDA paths).

Each split of the queue leaves, per query row, base-2 statistics
m_s, l_s, m_t, l_t, cross and (for the gradient) acc_s, acc_t [d]; see triton.py.
"""
from __future__ import annotations

import torch

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def merge_splits(stats: torch.Tensor, acc: torch.Tensor | None, tau_s: float):
    """stats [5, splits, B], acc [2, splits, B, d] or None -> (loss[B], dq_s[B, d] or empty)."""
    m_s, l_s, m_t, l_t, cross = stats.unbind(0)  # each [splits, B]
    big_s = m_s.amax(dim=0)
    big_t = m_t.amax(dim=0)
    w_s = torch.exp2(m_s - big_s)
    w_t = torch.exp2(m_t - big_t)
    sum_s = (l_s * w_s).sum(dim=0)
    sum_t = (l_t * w_t).sum(dim=0)
    cross_total = (cross * w_t).sum(dim=0) / sum_t
    loss = (big_s + torch.log2(sum_s) - cross_total) * LN2
    if acc is None:
        return loss, loss.new_empty(0)
    acc_s, acc_t = acc.unbind(0)  # [splits, B, d]
    dq = (torch.einsum("sbd,sb->bd", acc_s, w_s / sum_s) - torch.einsum("sbd,sb->bd", acc_t, w_t / sum_t)) / tau_s
    return loss, dq


def num_splits_cuda(batch: int, n_rows: int, rows_per_block: int, tile: int, device: torch.device):
    """(splits, queue rows per split) so that about two blocks per SM are busy."""
    row_blocks = -(-batch // rows_per_block)
    n_tiles = -(-n_rows // tile)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, min(n_tiles, -(-2 * sms // row_blocks)))
    tiles_per_split = -(-n_tiles // want)
    splits = -(-n_tiles // tiles_per_split)
    return splits, tiles_per_split * tile
