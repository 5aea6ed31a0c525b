"""KD as RepDistiller's DistillKL computes it: kl_div(sum) * T^2 / B.

Same constructor as :class:`rdkernels.KDLoss`; no state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KDLoss(nn.Module):
    def __init__(self, T: float = 4.0):
        super().__init__()
        self.T = float(T)

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return F.kl_div(p_s, p_t, reduction="sum") * (self.T ** 2) / y_s.shape[0]
