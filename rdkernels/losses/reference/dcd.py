"""DCD as the public reference code computes it: the B x B logits, cross_entropy,
kl_div(log_softmax(L, 1), softmax(L, 0).T, "batchmean"), all through autograd.

Same constructor and state_dict keys as :class:`rdkernels.DCDLoss` (``tau``,
``bias``; the reference's ``params.tau`` / ``params.b`` load too). Works in
float64 (``.double()``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DCDLoss(nn.Module):
    def __init__(self, s_dim: int, t_dim: int, feat_dim: int = 128, init_tau: float = 1.0,
                 init_bias: float = 0.0, alpha: float = 0.5, max_scale: float = 10.0):
        super().__init__()
        self.alpha = float(alpha)
        self.max_scale = float(max_scale)
        self.embed_s = nn.Linear(s_dim, feat_dim)
        self.embed_t = nn.Linear(t_dim, feat_dim)
        self.tau = nn.Parameter(torch.tensor(float(init_tau)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))
        self.register_load_state_dict_pre_hook(load_reference_keys)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s = F.normalize(self.embed_s(f_s.reshape(f_s.shape[0], -1)), dim=1)
        f_t = F.normalize(self.embed_t(f_t.reshape(f_t.shape[0], -1)), dim=1)
        n = f_s.size(0)
        scale = self.tau.exp().clamp(0, self.max_scale)
        logits = torch.mm(f_s, f_t.t()) * scale + self.bias
        labels = torch.arange(n, device=logits.device)
        contrastive = F.cross_entropy(logits, labels)
        p1 = F.log_softmax(logits, dim=1)
        p2 = F.softmax(logits, dim=0).t()
        invariance = F.kl_div(p1, p2, reduction="batchmean")
        return contrastive + self.alpha * invariance


def load_reference_keys(module, state_dict, prefix, *args) -> None:
    """A load_state_dict pre-hook that renames the public code's ``params.tau`` / ``params.b``
    to ``tau`` / ``bias`` (shared with :class:`rdkernels.DCDLoss`)."""
    for old, new in (("params.tau", "tau"), ("params.b", "bias")):
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
