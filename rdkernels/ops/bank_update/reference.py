"""PyTorch reference of the bank update (also the torch backend).

M[y] = normalize(m * M[y] + (1 - m) * v), in place. Duplicate ids in y: the
last occurrence wins, and it mixes with the row as it was before the call.
Arithmetic in float32 (float64 for a float64 bank); no eps in the norm, as in
RepDistiller's ContrastMemory.
"""
from __future__ import annotations

import torch


def last_occurrence(index: torch.Tensor) -> torch.Tensor:
    """For each position b, the last position holding the same id as index[b].

    A [B, B] comparison: no sort and no data-dependent shapes, so no host sync
    on a GPU (torch.unique would need one). Batches are small (B <= a few
    thousand), so the B*B booleans are cheap.
    """
    position = torch.arange(index.numel(), device=index.device)
    same = index[:, None] == index[None, :]
    return torch.where(same, position[None, :], -1).amax(dim=1)


def bank_update_reference_(bank: torch.Tensor, index: torch.Tensor, values: torch.Tensor,
                           momentum: float) -> torch.Tensor:
    compute = torch.float64 if bank.dtype == torch.float64 else torch.float32
    rows = index.long()
    # Every occurrence of an id writes the value its last occurrence defines,
    # so index_copy_ gets identical values for duplicates: deterministic.
    source = values[last_occurrence(rows)]
    mixed = bank[rows].to(compute) * momentum + source.to(compute) * (1.0 - momentum)
    mixed = mixed / mixed.pow(2).sum(dim=1, keepdim=True).sqrt()
    bank.index_copy_(0, rows, mixed.to(bank.dtype))
    return bank
