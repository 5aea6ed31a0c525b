"""Merging the per-split partial results of the gather kernels (Triton and CUDA).

Each (row, split) program writes, for its columns of idx: NCE: the summed loss
terms and sum_k g_k w_k; softmax: the running max m, sum of exp(s - m) and the
exp-weighted row sum. A few torch ops on [B, splits, d] turn them into the
row loss and dq = d row_loss / d query (both fp32).
"""
from __future__ import annotations

import torch


def combine_gather_partials(epilogue: str, query, bank, idx, temperature, loss_parts, dq_parts, max_parts,
                            sum_parts) -> tuple[torch.Tensor, torch.Tensor]:
    if epilogue == "nce":
        return loss_parts.sum(dim=1), dq_parts.sum(dim=1)
    top = max_parts.max(dim=1, keepdim=True).values
    scale = torch.exp(max_parts - top)                     # rescale each split to the row max
    total = (sum_parts * scale).sum(dim=1)
    weighted = (dq_parts * scale[:, :, None]).sum(dim=1)
    w0 = bank[idx[:, 0].long()].float()                     # the positive: one row per query
    s0 = (w0 * query.float()).sum(dim=1) / temperature
    loss = top.squeeze(1) + total.log() - s0
    dq = (weighted / total[:, None] - w0) / temperature
    return loss, dq
