"""Summing the per-program results of the fused DCD kernels (Triton and CUDA)."""
from __future__ import annotations

import torch


def finish(stats: torch.Tensor, local: torch.Tensor | None, part: torch.Tensor | None, params: torch.Tensor,
           alpha: float, batch: int):
    """stats [P, 4] = (sum CE, sum KL, sum G*S, sum G); local [2, B, d]; part [2, P, B, d]
    (dz / scale) -> (loss, dz_s, dz_t, d scale, d bias); the last four empty without local."""
    totals = stats.sum(dim=0)
    loss = (totals[0] + alpha * totals[1]) / batch
    if local is None:
        return (loss, *(loss.new_empty(0) for _ in range(4)))  # distinct: outputs may not alias
    scale = params[0]
    dzs = (local[0] + part[0].sum(dim=0)) * scale
    dzt = (local[1] + part[1].sum(dim=0)) * scale
    return loss, dzs, dzt, totals[2].clone(), totals[3].clone()
