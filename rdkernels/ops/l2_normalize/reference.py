"""PyTorch reference of the row-wise L2 normalisation under the losses' projections.

    y = x / max(||x||_2, eps)      per row

eps = 0 is RepDistiller's ``Normalize(2)`` (``x / x.pow(2).sum(1).pow(1/2)``: a
zero row gives NaN); eps = 1e-12 is ``F.normalize``'s default (DCD, RRD).
"""
from __future__ import annotations

import torch


def l2_normalize_reference(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Differentiable through autograd; computes in x's dtype, or float64 for float64 x."""
    norm = x.pow(2).sum(dim=1, keepdim=True).sqrt()
    return x / (norm.clamp_min(eps) if eps > 0 else norm)


def l2_normalize_backward_reference(grad: torch.Tensor, y: torch.Tensor, norm: torch.Tensor,
                                    eps: float) -> torch.Tensor:
    """d loss / d x from d loss / d y, y and the unclamped row norms [B, 1] (all fp32):
    (g - y <g, y>) / ||x|| where the norm is above eps; g / eps where the clamp holds it
    (clamp_min passes no gradient below its bound, as in F.normalize)."""
    clamped = norm < eps
    dx = (grad - y * (grad * y).sum(dim=1, keepdim=True)) / norm
    return torch.where(clamped, grad / eps, dx) if eps > 0 else dx
