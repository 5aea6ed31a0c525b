"""The per-split partial results of the gather kernels (Triton and CUDA): the
epilogue codes and the buffers the kernels write.

Each (row, split) program writes, for its columns of idx: NCE: the summed loss
terms and sum_k g_k w_k; softmax: the running max m, sum of exp(s - m) and the
exp-weighted row sum. The merge turns them into the row loss and
dq = d row_loss / d query (both fp32): triton_merge.merge_gather_partials,
two sums for NCE and the merge kernel for softmax.
"""
from __future__ import annotations

import torch

# Epilogue codes, shared by the Triton and CUDA kernels of both strategies.
NCE, SOFTMAX, SCORES, SCORES_BWD = 0, 1, 2, 3
EPILOGUE_CODES = {"nce": NCE, "softmax": SOFTMAX}


def gather_buffers(code: int, batch: int, n_cols: int, n_splits: int, dim: int, device: torch.device):
    """(out, dq, run_max, run_sum), fp32, None where epilogue ``code`` writes nothing:
    out is s[B, K+1] (scores) or the per-split loss [B, splits] (NCE); dq the
    per-split query gradient [B, splits, d] (all but scores); run_max, run_sum
    the per-split softmax statistics [B, splits]."""
    f32 = dict(device=device, dtype=torch.float32)
    dq = torch.empty(batch, n_splits, dim, **f32) if code != SCORES else None
    out = None
    if code == SCORES:
        out = torch.empty(batch, n_cols, **f32)
    elif code == NCE:
        out = torch.empty(batch, n_splits, **f32)
    run_max = torch.empty(batch, n_splits, **f32) if code == SOFTMAX else None
    run_sum = torch.empty(batch, n_splits, **f32) if code == SOFTMAX else None
    return out, dq, run_max, run_sum
