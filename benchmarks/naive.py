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


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """RepDistiller's Normalize(2) (models/util.py), with its projection heads."""
    return x.div(x.pow(2).sum(1, keepdim=True).pow(1.0 / 2))


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


def crd_contrast_memory(memory, v1, v2, y, idx):
    """RepDistiller's ContrastMemory.forward on ``memory`` (a module holding its
    ``params`` [K, T, Z_v1, Z_v2, momentum], ``memory_v1`` and ``memory_v2``).

    As there, the scalars are read with .item() first, before any kernel is
    queued: one host sync per call, at the top, where it costs least."""
    K = int(memory.params[0].item())
    T = memory.params[1].item()
    Z_v1 = memory.params[2].item()
    Z_v2 = memory.params[3].item()
    momentum = memory.params[4].item()
    batch_size = v1.size(0)
    output_size = memory.memory_v1.size(0)
    input_size = memory.memory_v1.size(1)
    weight_v1 = torch.index_select(memory.memory_v1, 0, idx.view(-1)).detach()
    weight_v1 = weight_v1.view(batch_size, K + 1, input_size)
    out_v2 = torch.exp(torch.div(torch.bmm(weight_v1, v2.view(batch_size, input_size, 1)), T))
    weight_v2 = torch.index_select(memory.memory_v2, 0, idx.view(-1)).detach()
    weight_v2 = weight_v2.view(batch_size, K + 1, input_size)
    out_v1 = torch.exp(torch.div(torch.bmm(weight_v2, v1.view(batch_size, input_size, 1)), T))
    with torch.no_grad():   # Z: first call only, a constant ever after
        if Z_v1 < 0:
            memory.params[2] = out_v1.mean() * output_size
            Z_v1 = memory.params[2].item()
        if Z_v2 < 0:
            memory.params[3] = out_v2.mean() * output_size
            Z_v2 = memory.params[3].item()
    out_v1 = torch.div(out_v1, Z_v1).contiguous()
    out_v2 = torch.div(out_v2, Z_v2).contiguous()
    bank_update_(memory.memory_v1, y, v1, momentum)
    bank_update_(memory.memory_v2, y, v2, momentum)
    return out_v1, out_v2


def crd_loss(module, f_s, f_t, idx, contrast_idx):
    """RepDistiller's CRDLoss.forward on ``module``'s embeddings and memory
    (rdkernels.losses.reference.crd.CRDLoss holds the same weights and buffers)."""
    v_s, v_t = module.embed_s(f_s), module.embed_t(f_t)
    out_s, out_t = crd_contrast_memory(module.contrast, v_s, v_t, idx, contrast_idx)
    n_data = module.contrast.memory_v1.size(0)
    return (contrast_loss(out_s, n_data) + contrast_loss(out_t, n_data)).squeeze(0)


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


@torch.no_grad()
def fifo_enqueue_(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """RRD's public code: the pointer read on the host (a sync), one slice write, the
    pointer written back; it asserts N % B == 0 (its loader drops the last batch)."""
    p = int(ptr)
    assert queue.shape[0] % keys.shape[0] == 0
    queue[p:p + keys.shape[0]] = keys
    ptr[0] = (p + keys.shape[0]) % queue.shape[0]
