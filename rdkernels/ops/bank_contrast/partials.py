"""The per-split partial results of the bank-contrast kernels (gather and
dense, Triton and CUDA): the epilogue codes and the buffers the kernels write.

Each (row, split) program writes, for its columns of idx (gather) or its bank
tiles (dense): NCE: the summed loss terms and sum_k g_k w_k; softmax: the
running max m, sum of exp(s - m) and the exp-weighted row sum. The merges in
triton_merge.py turn them into the row loss and dq = d row_loss / d query
(both fp32).
"""
from __future__ import annotations

import torch

# Epilogue codes, shared by the Triton and CUDA kernels of both strategies.
NCE, SOFTMAX, SCORES, SCORES_BWD = 0, 1, 2, 3
EPILOGUE_CODES = {"nce": NCE, "softmax": SOFTMAX}


def split_buffers(code: int, batch: int, n_splits: int, dim: int, device: torch.device):
    """(loss, dq, run_max, run_sum) of a loss epilogue, fp32, None where ``code``
    writes nothing: the per-split loss [B, splits] (NCE), the per-split query
    gradient [B, splits, d], the per-split softmax statistics [B, splits]."""
    f32 = dict(device=device, dtype=torch.float32)
    return (torch.empty(batch, n_splits, **f32) if code == NCE else None,
            torch.empty(batch, n_splits, dim, **f32),
            torch.empty(batch, n_splits, **f32) if code == SOFTMAX else None,
            torch.empty(batch, n_splits, **f32) if code == SOFTMAX else None)


def gather_buffers(code: int, batch: int, n_cols: int, n_splits: int, dim: int, device: torch.device):
    """(out, dq, run_max, run_sum) of a gather kernel: as :func:`split_buffers`
    for the loss epilogues; for scores, out is s[B, K+1] and nothing else."""
    if code == SCORES:
        return torch.empty(batch, n_cols, device=device, dtype=torch.float32), None, None, None
    return split_buffers(code, batch, n_splits, dim, device)
