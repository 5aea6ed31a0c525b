"""CRD as RepDistiller's ``crd/`` computes it: the gathered [B, K+1, d] weights,
bmm, exp, the one-time Z, ContrastLoss (Eq. 18), then the bank update.

Same constructor and state_dict keys as :class:`rdkernels.CRDLoss`. Works in
float64 (``.double()``) as the ground truth of the CRD tests.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rdkernels.losses._embed import Embed

EPS = 1e-7
_OPT_FIELDS = ("s_dim", "t_dim", "n_data", "feat_dim", "nce_k", "nce_t", "nce_m")


def nce_loss(x: torch.Tensor, n_data: int) -> torch.Tensor:
    """ContrastLoss: x[B, K+1] = exp(s)/Z, positive in column 0; sum over
    columns, mean over the batch."""
    m = x.shape[1] - 1
    m_pn = m / float(n_data)
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + m_pn + EPS))
    log_d0 = torch.log(torch.full_like(x[:, 1:], m_pn) / (x[:, 1:] + m_pn + EPS))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


class ContrastMemory(nn.Module):
    def __init__(self, feat_dim, n_data, nce_k, nce_t, nce_m):
        super().__init__()
        self.n_data = n_data
        self.register_buffer("params", torch.tensor([float(nce_k), nce_t, -1.0, -1.0, nce_m]))
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_v1", torch.rand(n_data, feat_dim).mul_(2 * bound).add_(-bound))
        self.register_buffer("memory_v2", torch.rand(n_data, feat_dim).mul_(2 * bound).add_(-bound))

    def forward(self, v1, v2, y, idx):
        batch, cols = idx.shape
        temperature, momentum = self.params[1].item(), self.params[4].item()
        w1 = self.memory_v1[idx.reshape(-1)].detach().view(batch, cols, -1)   # student bank
        out_v2 = torch.exp(torch.bmm(w1, v2.unsqueeze(2)).squeeze(2) / temperature)
        w2 = self.memory_v2[idx.reshape(-1)].detach().view(batch, cols, -1)   # teacher bank
        out_v1 = torch.exp(torch.bmm(w2, v1.unsqueeze(2)).squeeze(2) / temperature)
        with torch.no_grad():  # Z: first call only, a constant ever after
            if self.params[2] < 0:
                self.params[2] = out_v1.mean() * self.n_data
            if self.params[3] < 0:
                self.params[3] = out_v2.mean() * self.n_data
        out_v1 = out_v1 / self.params[2].item()
        out_v2 = out_v2 / self.params[3].item()
        with torch.no_grad():
            for memory, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
                mixed = memory[y] * momentum + v * (1 - momentum)
                memory.index_copy_(0, y, mixed / mixed.pow(2).sum(1, keepdim=True).pow(0.5))
        return out_v1, out_v2


class CRDLoss(nn.Module):
    """RepDistiller's CRDLoss: ``CRDLoss(s_dim, t_dim, n_data, ...)`` or ``CRDLoss(opt)``."""

    def __init__(self, s_dim=None, t_dim=None, n_data=None, feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5):
        super().__init__()
        if s_dim is not None and not isinstance(s_dim, int) and all(hasattr(s_dim, f) for f in _OPT_FIELDS):
            s_dim, t_dim, n_data, feat_dim, nce_k, nce_t, nce_m = (getattr(s_dim, f) for f in _OPT_FIELDS)
        self.n_data, self.nce_k = n_data, nce_k
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.contrast = ContrastMemory(feat_dim, n_data, nce_k, nce_t, nce_m)

    def forward(self, f_s, f_t, idx, contrast_idx=None):
        v_s, v_t = self.embed_s(f_s), self.embed_t(f_t)
        if contrast_idx is None:
            contrast_idx = torch.randint(0, self.n_data, (idx.shape[0], self.nce_k + 1), device=idx.device)
            contrast_idx[:, 0] = idx
        out_s, out_t = self.contrast(v_s, v_t, idx, contrast_idx)
        return nce_loss(out_s, self.n_data) + nce_loss(out_t, self.n_data)
