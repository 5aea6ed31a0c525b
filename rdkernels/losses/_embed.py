"""Projection heads shared by the losses."""
from __future__ import annotations

import torch
from torch import nn

from rdkernels.ops.l2_normalize import l2_normalize as fused_l2_normalize


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ||x||_2 per row, with no eps (RepDistiller's Normalize(2))."""
    return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


class Embed(nn.Module):
    """CRD's projection: flatten, Linear (with bias), L2-normalise.

    The submodule is named ``linear`` so state_dict keys match RepDistiller's
    (``embed_s.linear.weight``, ...). ``fused=True`` normalises with the fused op
    (:func:`rdkernels.ops.l2_normalize`: one kernel each way instead of ~14 torch
    launches); the reference losses keep RepDistiller's formulation.
    """

    def __init__(self, dim_in: int, dim_out: int = 128, *, fused: bool = False):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.fused = fused

    @property
    def weight(self) -> torch.Tensor:
        """The linear layer's weight: where the loss's input checks read the device and dtype."""
        return self.linear.weight

    def forward(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """``backend``: the fused op's (see l2_normalize); the owning loss passes its own."""
        v = self.linear(x.reshape(x.shape[0], -1))
        return fused_l2_normalize(v, backend=backend) if self.fused else l2_normalize(v)
