"""The fused DCD kernels' outputs.

Both backends return the loss and one flat gradient buffer
``[dz_s (B*d) | dz_t (B*d) | d tau | d bias]`` (``dcd_outputs``), beside one
scratch block of their own (S and S^T, 2 B^2 floats, and a few floats a row;
Triton's laid out in triton.py, CUDA's in csrc/dcd.cu): three allocations a
call. The op is host-bound at training sizes, and one buffer for the four
gradients means backward scales them with one multiply, not four.
"""
from __future__ import annotations

import torch


def dcd_outputs(z_s: torch.Tensor, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss: fp32 0-dim, grads: fp32 flat [2*B*d + 2], empty without the gradient)."""
    f32 = dict(device=z_s.device, dtype=torch.float32)
    return torch.empty((), **f32), torch.empty(2 * z_s.numel() + 2 if need_grad else 0, **f32)


def split_grads(grads: torch.Tensor, like: list[tuple[torch.dtype, torch.Size]]) -> list[torch.Tensor]:
    """The flat gradient buffer as (dz_s, dz_t, d tau, d bias), each in the shape and
    dtype of its input (``like``: (dtype, shape) of z_s, z_t, tau, bias)."""
    sizes = [shape.numel() for _, shape in like]
    return [g.view(shape).to(dtype) for g, (dtype, shape) in zip(grads.split(sizes), like)]
