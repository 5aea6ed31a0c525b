"""Buffers shared by the fused DCD kernels (Triton and CUDA).

Each program (block) of 16 rows writes scratch partials: stats[P, 4] = (sum CE,
sum KL, sum G*S, sum G) and, for the gradient, local[2, B, d] (its own rows)
and part[2, P, B, d] (every row; dz / scale). A second kernel of the same call
sums them into the outputs, in a fixed order (deterministic, no atomics).

Three allocations a call, whatever the backend: one scratch block carved into
the partials, the loss, and one flat gradient buffer
``[dz_s (B*d) | dz_t (B*d) | d tau | d bias]``. The op is host-bound at
training sizes (its kernels run in tens of microseconds), and one buffer for
the four gradients means backward scales them with one multiply, not four.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from rdkernels.ops._scratch import aligned as _aligned


class DcdBuffers(NamedTuple):
    scratch: torch.Tensor   # fp32, flat: stats, then (with the gradient) local, part, then `extra`
    local_at: int           # element offsets of the segments in scratch (stats is at 0)
    part_at: int
    extra_at: int
    loss: torch.Tensor      # fp32, 0-dim
    grads: torch.Tensor     # fp32, flat [2*B*d + 2]; empty without the gradient


def dcd_buffers(z_s: torch.Tensor, n_prog: int, need_grad: bool, extra: int = 0) -> DcdBuffers:
    """The call's buffers; ``extra`` floats of backend scratch go at the end of ``scratch``."""
    batch, dim = z_s.shape
    bd = batch * dim
    local_at = _aligned(4 * n_prog)
    part_at = local_at + (_aligned(2 * bd) if need_grad else 0)
    extra_at = part_at + (_aligned(2 * n_prog * bd) if need_grad else 0)
    f32 = dict(device=z_s.device, dtype=torch.float32)
    return DcdBuffers(torch.empty(extra_at + extra, **f32), local_at, part_at, extra_at, torch.empty((), **f32),
                      torch.empty(2 * bd + 2 if need_grad else 0, **f32))


def split_grads(grads: torch.Tensor, like: list[tuple[torch.dtype, torch.Size]]) -> list[torch.Tensor]:
    """The flat gradient buffer as (dz_s, dz_t, d tau, d bias), each in the shape and
    dtype of its input (``like``: (dtype, shape) of z_s, z_t, tau, bias)."""
    sizes = [shape.numel() for _, shape in like]
    return [g.view(shape).to(dtype) for g, (dtype, shape) in zip(grads.split(sizes), like)]
