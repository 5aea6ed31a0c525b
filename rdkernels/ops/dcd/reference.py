"""PyTorch reference of the DCD loss (Discriminative and Consistent Distillation).

For L2-normalised embeddings z_s, z_t [B, d] and learnable tau, bias:

    scale  = clamp(exp(tau), 0, max_scale)
    L      = scale * z_s z_t^T + bias                      (B x B, in-batch)
    loss   = CE(L, arange(B)) + alpha * KL(colsoftmax(L)^T || rowsoftmax(L)), batchmean

written exactly as the reference code writes it (``kl_div(log_softmax(L, 1),
softmax(L, 0).T, "batchmean")``); neither softmax is detached.

Gradient (used by the fused kernels; R_i / C_j are the row / column
log-sum-exps, P the row softmax, Qc the column softmax, both of L):

    dloss/dL[x, y] = (P[x, y] - delta_xy) / B
                   + alpha / B * (P[x, y] - Qc[y, x] + Qc[x, y] * (g[x, y] - KL_y))
    g[x, y] = (L[x, y] - C_y) - (L[y, x] - R_y),   KL_y = sum_x Qc[x, y] g[x, y]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dcd_reference(z_s: torch.Tensor, z_t: torch.Tensor, tau: torch.Tensor, bias: torch.Tensor,
                  alpha: float = 0.5, max_scale: float = 10.0) -> torch.Tensor:
    """0-dim loss, differentiable in all four inputs through autograd (gradcheck-able).

    Computes in float32, or float64 if any input is float64.
    """
    dt = torch.float64 if any(t.dtype == torch.float64 for t in (z_s, z_t, tau, bias)) else torch.float32
    scale = tau.to(dt).exp().clamp(0, max_scale)
    logits = z_s.to(dt) @ z_t.to(dt).t() * scale + bias.to(dt)
    labels = torch.arange(logits.shape[0], device=logits.device)
    contrast = F.cross_entropy(logits, labels)
    consist = F.kl_div(F.log_softmax(logits, dim=1), F.softmax(logits, dim=0).t(), reduction="batchmean")
    return contrast + alpha * consist


@torch.no_grad()
def dcd_fwd_reference(z_s, z_t, tau, bias, alpha: float, max_scale: float, need_grad: bool):
    """(loss 0-dim, dz_s, dz_t, dtau 0-dim, dbias 0-dim): the torch backend.

    The gradient is the closed form in the module docstring (the fused kernels'
    formula, materialised); float32, or float64 for float64 inputs.
    """
    dt = torch.float64 if z_s.dtype == torch.float64 else torch.float32
    zs, zt = z_s.to(dt), z_t.to(dt)
    e = tau.to(dt).reshape(()).exp()
    scale = e.clamp(0, max_scale)
    sim = zs @ zt.t()
    logits = sim * scale + bias.to(dt).reshape(())
    n = logits.shape[0]
    lse_r = torch.logsumexp(logits, dim=1)
    lse_c = torch.logsumexp(logits, dim=0)
    log_p = logits - lse_r[:, None]
    log_q = logits - lse_c[None, :]
    g = log_q - log_p.t()
    q = log_q.exp()
    kl = (q * g).sum(dim=0)
    loss = (lse_r - logits.diagonal()).mean() + alpha * kl.sum() / n
    if not need_grad:
        return (loss, *(loss.new_empty(0) for _ in range(4)))  # distinct: outputs may not alias
    p = log_p.exp()
    grad = (p - torch.eye(n, dtype=dt, device=p.device)) / n + alpha / n * (p - q.t() + q * (g - kl[None, :]))
    d_sim = grad * scale
    inside = (e >= 0) & (e <= max_scale)  # torch.clamp's gradient mask
    dtau = (grad * sim).sum() * torch.where(inside, e, torch.zeros_like(e))
    return loss, d_sim @ zt, d_sim.t() @ zs, dtau, grad.sum()
