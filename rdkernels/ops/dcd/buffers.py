"""The fused DCD kernels' outputs, and the CUDA kernels' scratch.

Both backends return the loss and one flat gradient buffer
``[dz_s (B*d) | dz_t (B*d) | d tau | d bias]`` (``dcd_outputs``), beside one
scratch block of their own: three allocations a call. The op is host-bound at
training sizes, and one buffer for the four gradients means backward scales
them with one multiply, not four.

The CUDA kernels' scratch (``dcd_buffers``): each block of 16 rows writes
stats[P, 4] = (sum CE, sum KL, sum G*S, sum G) and, for the gradient, the
first kernel writes rck[3, B] (every row's R, C and KL), which the gradient
kernel reads; a last kernel sums the stats, in a fixed order (deterministic,
no atomics). The Triton kernels lay out their own scratch (triton.py).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from rdkernels.ops._scratch import aligned as _aligned


class DcdBuffers(NamedTuple):
    scratch: torch.Tensor   # fp32, flat: stats, then (with the gradient) rck
    rck_at: int             # element offset of rck in scratch (stats is at 0)
    loss: torch.Tensor      # fp32, 0-dim
    grads: torch.Tensor     # fp32, flat [2*B*d + 2]; empty without the gradient


def dcd_outputs(z_s: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss: fp32 0-dim, grads: fp32 flat [2*B*d + 2], empty without the gradient)."""
    f32 = dict(device=z_s.device, dtype=torch.float32)
    return torch.empty((), **f32), torch.empty(2 * z_s.numel() + 2 if need_grad else 0, **f32)


def dcd_buffers(z_s: torch.Tensor, n_prog: int, need_grad: bool) -> DcdBuffers:
    """The CUDA kernels' buffers for ``n_prog`` blocks."""
    rck_at = _aligned(4 * n_prog)
    end = rck_at + (3 * z_s.shape[0] if need_grad else 0)
    scratch = torch.empty(end, device=z_s.device, dtype=torch.float32)
    return DcdBuffers(scratch, rck_at, *dcd_outputs(z_s, need_grad))


def split_grads(grads: torch.Tensor, like: list[tuple[torch.dtype, torch.Size]]) -> list[torch.Tensor]:
    """The flat gradient buffer as (dz_s, dz_t, d tau, d bias), each in the shape and
    dtype of its input (``like``: (dtype, shape) of z_s, z_t, tau, bias)."""
    sizes = [shape.numel() for _, shape in like]
    return [g.view(shape).to(dtype) for g, (dtype, shape) in zip(grads.split(sizes), like)]
