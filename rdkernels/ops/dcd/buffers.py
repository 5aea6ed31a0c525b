"""Buffers shared by the fused DCD kernels (Triton and CUDA).

Each program (block) of 16 rows writes scratch partials: stats[P, 4] = (sum CE,
sum KL, sum G*S, sum G) and, for the gradient, local[2, B, d] (its own rows)
and part[2, P, B, d] (every row; dz / scale). A second kernel of the same call
sums them into the outputs, in a fixed order (deterministic, no atomics).
"""
from __future__ import annotations

import torch


def dcd_buffers(z_s: torch.Tensor, n_prog: int, need_grad: bool):
    """(scratch dict, outputs): outputs = (loss, dz_s, dz_t, d tau, d bias), fp32,
    the last four distinct empty tensors without need_grad (outputs may not alias)."""
    batch, dim = z_s.shape
    f32 = dict(device=z_s.device, dtype=torch.float32)
    stats = torch.empty(n_prog, 4, **f32)
    if need_grad:
        scratch = dict(stats=stats, local=torch.empty(2, batch, dim, **f32),
                       part=torch.empty(2, n_prog, batch, dim, **f32))
        out = (torch.empty((), **f32), torch.empty(batch, dim, **f32), torch.empty(batch, dim, **f32),
               torch.empty((), **f32), torch.empty((), **f32))
    else:
        scratch = dict(stats=stats, local=stats, part=stats)
        out = (torch.empty((), **f32), *(torch.empty(0, **f32) for _ in range(4)))
    return scratch, out
