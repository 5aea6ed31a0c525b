"""WCoRD written the straightforward PyTorch way: the gathered [B, K+1, d] bank
rows, bmm, cross-entropy, and a plain log-domain Sinkhorn loop.

The paper has no public code; this is the formulation rdkernels.WCoRDLoss
documents, written as one would without fused ops. Same constructor and
state_dict keys as :class:`rdkernels.WCoRDLoss`. Works in float64
(``.double()``) as the ground truth of the WCoRD tests.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from rdkernels.losses._embed import Embed


def sinkhorn_cost(C: torch.Tensor, eps: float, iters: int, tol: float | None = None) -> torch.Tensor:
    """<plan, C> of entropic OT with uniform marginals. The iterations run without
    autograd; the plan is then rebuilt from the detached potentials, so the
    gradient is d/dC = plan (envelope theorem), as in rdkernels.ops.sinkhorn."""
    n, m = C.shape
    log_a = torch.full((n,), -math.log(n), dtype=C.dtype, device=C.device)
    log_b = torch.full((m,), -math.log(m), dtype=C.dtype, device=C.device)
    with torch.no_grad():
        Cs = C.detach() / eps
        f = torch.zeros(n, dtype=C.dtype, device=C.device)  # potentials / eps
        g = torch.zeros(m, dtype=C.dtype, device=C.device)
        for it in range(iters):
            f_new = -torch.logsumexp(log_b[None, :] + g[None, :] - Cs, dim=1)
            if tol is not None and it > 0:
                if float((log_a.exp() * torch.expm1(f - f_new).abs()).sum()) <= tol:
                    break
            f = f_new
            g = -torch.logsumexp(log_a[:, None] + f[:, None] - Cs, dim=0)
        plan = torch.exp(log_a[:, None] + log_b[None, :] + f[:, None] + g[None, :] - Cs)
    return (plan * C).sum()


class _Bank(nn.Module):
    """Holds ``memory`` so the keys read ``memory_s.memory`` as in rdkernels.MemoryBank."""

    def __init__(self, n_data: int, dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory", torch.rand(n_data, dim).mul_(2 * bound).add_(-bound))


class WCoRDLoss(nn.Module):
    def __init__(self, s_dim, t_dim, n_data, feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5, lambda_global=1.0,
                 lambda_local=1.0, eps=0.05, iters=100, cost="cosine", gp_weight=0.0, *, tol=None):
        super().__init__()
        self.n_data, self.nce_k, self.nce_t, self.nce_m = n_data, nce_k, nce_t, nce_m
        self.lambda_global, self.lambda_local, self.gp_weight = lambda_global, lambda_local, gp_weight
        self.eps, self.iters, self.cost, self.tol = eps, iters, cost, tol
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.memory_s = _Bank(n_data, feat_dim)
        self.memory_t = _Bank(n_data, feat_dim)

    def _info_nce(self, memory, query, contrast_idx):
        batch, cols = contrast_idx.shape
        w = memory[contrast_idx.reshape(-1)].detach().view(batch, cols, -1).to(query.dtype)
        logits = torch.bmm(w, query.unsqueeze(2)).squeeze(2) / self.nce_t
        return F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=query.device))

    def forward(self, f_s, f_t, idx, contrast_idx=None):
        if contrast_idx is None:
            contrast_idx = torch.randint(0, self.n_data, (idx.shape[0], self.nce_k + 1), device=idx.device)
            contrast_idx[:, 0] = idx
        v_s, v_t = self.embed_s(f_s), self.embed_t(f_t)
        loss = 0.0
        if self.lambda_global:
            glob = (self._info_nce(self.memory_t.memory, v_s, contrast_idx)
                    + self._info_nce(self.memory_s.memory, v_t, contrast_idx))
            loss = loss + self.lambda_global * glob
        if self.lambda_local:
            with torch.autocast(v_s.device.type, enabled=False):  # fp32 (or fp64) cost, even under AMP
                wide = torch.promote_types(v_s.dtype, torch.float32)
                sim = v_s.to(wide) @ v_t.to(wide).t()
            C = 1.0 - sim if self.cost == "cosine" else (2.0 - 2.0 * sim).clamp_min(0.0)
            loss = loss + self.lambda_local * sinkhorn_cost(C, self.eps, self.iters, self.tol)
        if self.gp_weight:
            xs = f_s.detach().requires_grad_(True)
            xt = f_t.detach().requires_grad_(True)
            critic = (self.embed_s(xs) * self.embed_t(xt)).sum(dim=1)
            gs, gt = torch.autograd.grad(critic.sum(), (xs, xt), create_graph=True)
            sq = gs.flatten(1).pow(2).sum(1) + gt.flatten(1).pow(2).sum(1)
            norm = sq.clamp_min(1e-12).sqrt()  # sqrt'(0) = inf: a pair with v_s == v_t would give NaN
            loss = loss + self.gp_weight * torch.relu(norm - 1.0).pow(2).mean()
        with torch.no_grad():
            for memory, v in ((self.memory_s.memory, v_s), (self.memory_t.memory, v_t)):
                mixed = memory[idx] * self.nce_m + v.to(memory.dtype) * (1 - self.nce_m)
                memory.index_copy_(0, idx, mixed / mixed.pow(2).sum(1, keepdim=True).sqrt())
        return loss
