"""Constants and the split heuristic shared by the Triton and CUDA paths.

Each split of the queue leaves, per query row, base-2 statistics
m_s, l_s, m_t, l_t, cross and (for the gradient) acc_s, acc_t [d]; both
backends merge them in a kernel (see triton.py).
"""
from __future__ import annotations

import torch

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def num_splits_cuda(batch: int, n_rows: int, rows_per_block: int, tile: int, device: torch.device):
    """(splits, queue rows per split) so that about two blocks per SM are busy."""
    row_blocks = -(-batch // rows_per_block)
    n_tiles = -(-n_rows // tile)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, min(n_tiles, -(-2 * sms // row_blocks)))
    tiles_per_split = -(-n_tiles // want)
    splits = -(-n_tiles // tiles_per_split)
    return splits, tiles_per_split * tile
