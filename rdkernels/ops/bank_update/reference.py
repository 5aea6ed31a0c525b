"""PyTorch reference of the bank update (also the torch backend).

M[y] = normalize(m * M[y] + (1 - m) * v), in place. Duplicate ids in y: the
last occurrence wins, and it mixes with the row as it was before the call.
Arithmetic in float32 (float64 for a float64 bank); no eps in the norm, as in
RepDistiller's ContrastMemory.
"""
from __future__ import annotations

import torch


def last_occurrence_mask(index: torch.Tensor) -> torch.Tensor:
    """mask[b] is True iff no later position of ``index`` holds index[b]."""
    n = index.numel()
    position = torch.arange(n, device=index.device)
    _, inverse = torch.unique(index, return_inverse=True)
    last = torch.full((n,), -1, dtype=torch.long, device=index.device)
    last = last.scatter_reduce(0, inverse, position, reduce="amax")
    mask = torch.zeros(n, dtype=torch.bool, device=index.device)
    mask[last[last >= 0]] = True
    return mask


def bank_update_reference_(bank: torch.Tensor, index: torch.Tensor, values: torch.Tensor,
                           momentum: float) -> torch.Tensor:
    compute = torch.float64 if bank.dtype == torch.float64 else torch.float32
    keep = last_occurrence_mask(index)
    rows = index[keep].long()
    mixed = bank[rows].to(compute) * momentum + values[keep].to(compute) * (1.0 - momentum)
    mixed = mixed / mixed.pow(2).sum(dim=1, keepdim=True).sqrt()
    bank.index_copy_(0, rows, mixed.to(bank.dtype))
    return bank
