"""Projection heads shared by the losses."""
from __future__ import annotations

import torch
from torch import nn


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ||x||_2 per row, with no eps (RepDistiller's Normalize(2))."""
    return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


class Embed(nn.Module):
    """CRD's projection: flatten, Linear (with bias), L2-normalise.

    The submodule is named ``linear`` so state_dict keys match RepDistiller's
    (``embed_s.linear.weight``, ...).
    """

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.linear(x.reshape(x.shape[0], -1)))
