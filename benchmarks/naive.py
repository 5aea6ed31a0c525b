"""The formulations the public reference code uses, at the op level.

These are what rdkernels is measured against ("naive" rows): RepDistiller's
materialised gather + bmm + separate elementwise ops for the memory-bank
contrast and update, a PyTorch loop of log-sum-exp updates for Sinkhorn
(differentiated by unrolling, as such loops are in practice), and the DCD and
RRD formulas of their reference code. They are written the way that code
writes them, not optimised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NCE_EPS = 1e-7  # RepDistiller's module constant


def bank_update_(memory: torch.Tensor, y: torch.Tensor, v: torch.Tensor, momentum: float) -> torch.Tensor:
    """RepDistiller ContrastMemory's update: gather, mix, renormalise, index_copy_."""
    with torch.no_grad():
        pos = torch.index_select(memory, 0, y.view(-1))
        pos.mul_(momentum)
        pos.add_(torch.mul(v.to(pos.dtype), 1 - momentum))
        norm = pos.pow(2).sum(1, keepdim=True).pow(0.5)
        updated = pos.div(norm)
        memory.index_copy_(0, y, updated)
    return memory


def gathered_scores(query: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, temperature: float) -> torch.Tensor:
    """s[b,k] = <bank[idx[b,k]], q[b]> / T through the materialised [B,K+1,d] gather.

    RepDistiller is float32 throughout; with a bfloat16 bank or query the
    gathered rows are converted and the math stays float32 (bf16 scores would
    put a 5% error on exp(s/T) at T = 0.07)."""
    batch, cols = idx.shape
    dim = bank.shape[1]
    dtype = torch.promote_types(torch.promote_types(bank.dtype, query.dtype), torch.float32)
    weight = torch.index_select(bank, 0, idx.reshape(-1)).detach().view(batch, cols, dim).to(dtype)
    return torch.bmm(weight, query.to(dtype).view(batch, dim, 1)).squeeze(2) / temperature


def contrast_loss(x: torch.Tensor, n_data: int) -> torch.Tensor:
    """RepDistiller's ContrastLoss (Eq. 18) on x[B, K+1] = exp(s)/Z."""
    bsz = x.shape[0]
    m = x.size(1) - 1
    pn = 1.0 / float(n_data)
    p_pos = x.select(1, 0)
    log_d1 = torch.div(p_pos, p_pos.add(m * pn + NCE_EPS)).log_()
    p_neg = x.narrow(1, 1, m)
    log_d0 = torch.div(p_neg.clone().fill_(m * pn), p_neg.add(m * pn + NCE_EPS)).log_()
    return -(log_d1.sum(0) + log_d0.view(-1, 1).sum(0)) / bsz


def bank_contrast(query, bank, idx, *, temperature, epilogue="nce", z=None, n_data=None):
    """RepDistiller-style contrast: gather, bmm, exp, divide by Z, ContrastLoss."""
    s = gathered_scores(query, bank, idx, temperature)
    if epilogue == "scores":
        return s
    if epilogue == "softmax":
        return F.cross_entropy(s, torch.zeros(s.shape[0], dtype=torch.long, device=s.device))
    out = torch.exp(s)
    out = torch.div(out, z.to(out.dtype))
    return contrast_loss(out, n_data).squeeze(0)


def sinkhorn_loop(cost, a, b, eps, iters):
    """Log-domain Sinkhorn as a PyTorch loop; returns (f, g, plan, <plan, C>).

    Potentials in geomloss's convention: plan = a_i b_j exp((f_i + g_j - C_ij)/eps).
    Autograd unrolls every iteration when cost requires grad."""
    loga, logb = a.log(), b.log()
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    for _ in range(iters):
        f = -eps * torch.logsumexp((g.unsqueeze(1) - cost) / eps + logb.unsqueeze(1), dim=2)
        g = -eps * torch.logsumexp((f.unsqueeze(2) - cost) / eps + loga.unsqueeze(2), dim=1)
    plan = torch.exp((f.unsqueeze(2) + g.unsqueeze(1) - cost) / eps + loga.unsqueeze(2) + logb.unsqueeze(1))
    return f, g, plan, (plan * cost).sum(dim=(1, 2))


class _EnvelopeCost(torch.autograd.Function):
    """<plan*, C> with d/dC = plan* (the plan held constant), as rdkernels defines it."""

    @staticmethod
    def forward(ctx, cost, plan):
        ctx.save_for_backward(plan)
        return (plan * cost).sum(dim=(1, 2))

    @staticmethod
    def backward(ctx, grad):
        (plan,) = ctx.saved_tensors
        return plan * grad.view(-1, 1, 1), None


def sinkhorn_reference(cost, a, b, eps, iters):
    """The loop without autograd, with the envelope gradient: the ground truth."""
    with torch.no_grad():
        f, g, plan, _ = sinkhorn_loop(cost.detach(), a, b, eps, iters)
    return f, g, _EnvelopeCost.apply(cost, plan)


def dcd_loss(z_s, z_t, tau, bias, alpha=0.5, max_tau=10.0):
    """giakoumoglou/distillers DCDLoss on already-normalised embeddings."""
    scale = tau.exp().clamp(0, max_tau)
    logits = z_s @ z_t.t() * scale + bias
    labels = torch.arange(logits.shape[0], device=logits.device)
    contrast = F.cross_entropy(logits, labels)
    consist = F.kl_div(F.log_softmax(logits, dim=1), F.softmax(logits, dim=0).t(), reduction="batchmean")
    return contrast + alpha * consist


def rrd_loss(z_s, z_t, queue, tau_s, tau_t):
    """giakoumoglou/distillers RRDLoss (FIFO) on already-normalised embeddings,
    queue given: -mean_b sum_k softmax(z_t Q^T / tau_t) log_softmax(z_s Q^T / tau_s)."""
    queue = queue.detach()
    out_s = torch.mm(z_s, queue.t())
    out_t = torch.mm(z_t, queue.t()).detach()
    return -(F.softmax(out_t / tau_t, dim=1) * F.log_softmax(out_s / tau_s, dim=1)).sum(dim=1).mean()
