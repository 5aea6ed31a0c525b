"""Plain-PyTorch references for bank contrast.

``bank_contrast_reference`` is the ground truth: it materialises the gathered
[B, K+1, d] rows, works in any float dtype (float64 for tests, gradcheck) and
lets autograd differentiate it. ``bank_contrast_loss_torch`` is the torch
backend: the same math streamed over chunks of K with the gradient computed in
the forward pass, so it never holds more than a chunk of gathered rows.
"""
from __future__ import annotations

import math

import torch

NCE_EPS = 1e-7  # RepDistiller's module constant in ContrastLoss


def nce_constants(n_negatives: int, n_data: int) -> tuple[float, float]:
    """(log c, log(m*Pn / c)) with c = m*Pn + eps, m = K, Pn = 1/n_data."""
    m_pn = n_negatives / float(n_data)
    c = m_pn + NCE_EPS
    return math.log(c), math.log(m_pn / c)


def bank_contrast_reference(query, bank, idx, *, temperature, epilogue="softmax", z=None, n_data=None,
                            reduction="mean"):
    """Reference formulation (materialises the gather). Returns the loss
    (reduced as asked) or, for ``epilogue="scores"``, s[B, K+1]."""
    dtype = torch.promote_types(query.dtype, torch.float32)
    weights = bank[idx.long()].to(dtype)                       # [B, K+1, d]
    scores = torch.einsum("bkd,bd->bk", weights, query.to(dtype)) / temperature
    if epilogue == "scores":
        return scores
    if epilogue == "softmax":
        rows = torch.logsumexp(scores, dim=1) - scores[:, 0]
    elif epilogue == "nce":
        # RepDistiller's ContrastLoss, written as there: x = exp(s) / Z
        x = torch.exp(scores) / z.to(dtype).reshape(())
        m = idx.shape[1] - 1
        m_pn = m / float(n_data)
        log_d1 = torch.log(x[:, 0] / (x[:, 0] + m_pn + NCE_EPS))
        log_d0 = torch.log(m_pn / (x[:, 1:] + m_pn + NCE_EPS))
        rows = -(log_d1 + log_d0.sum(dim=1))
    else:
        raise ValueError(f"unknown epilogue {epilogue!r}")
    return reduce_rows(rows, reduction)


def reduce_rows(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return rows.mean()
    if reduction == "sum":
        return rows.sum()
    return rows


def _chunks(batch: int, dim: int, cols: int):
    """Column chunks that keep a gathered chunk near 16M elements."""
    step = max(1, (1 << 24) // max(1, batch * dim))
    for start in range(0, cols, step):
        yield start, min(cols, start + step)


def bank_contrast_loss_torch(query, bank, idx, z, temperature, epilogue, n_data):
    """Torch backend for the nce/softmax epilogues.

    Returns (row_loss[B] fp32, dq[B, d] fp32) where dq is d row_loss / d query,
    computed in the forward pass (the bank may change before backward runs).
    """
    q = query.float()
    batch, cols = idx.shape
    inv_t = 1.0 / temperature
    dq = torch.zeros_like(q)
    if epilogue == "nce":
        log_c, log_mpn_c = nce_constants(cols - 1, n_data)
        log_z = z.float().reshape(()).log()
        loss = torch.zeros(batch, device=q.device)
        for start, stop in _chunks(batch, q.shape[1], cols):
            w = bank[idx[:, start:stop].long()].float()
            lx = torch.einsum("bkd,bd->bk", w, q) * inv_t - log_z
            is_pos = (torch.arange(start, stop, device=q.device) == 0)[None, :]
            t = torch.where(is_pos, log_c - lx, lx - log_c)
            loss += torch.where(is_pos, torch.nn.functional.softplus(t),
                                torch.nn.functional.softplus(t) - log_mpn_c).sum(dim=1)
            g = torch.where(is_pos, -torch.sigmoid(t), torch.sigmoid(t)) * inv_t
            dq += torch.einsum("bk,bkd->bd", g, w)
        return loss, dq
    # softmax: online logsumexp and probability-weighted row sum
    run_max = torch.full((batch,), -float("inf"), device=q.device)
    run_sum = torch.zeros(batch, device=q.device)
    for start, stop in _chunks(batch, q.shape[1], cols):
        w = bank[idx[:, start:stop].long()].float()
        s = torch.einsum("bkd,bd->bk", w, q) * inv_t
        new_max = torch.maximum(run_max, s.max(dim=1).values)
        scale = torch.exp(run_max - new_max)
        p = torch.exp(s - new_max[:, None])
        run_sum = run_sum * scale + p.sum(dim=1)
        dq = dq * scale[:, None] + torch.einsum("bk,bkd->bd", p, w)
        run_max = new_max
    w0 = bank[idx[:, 0].long()].float()
    s0 = (w0 * q).sum(dim=1) * inv_t
    loss = run_max + run_sum.log() - s0
    dq = (dq / run_sum[:, None] - w0) * inv_t
    return loss, dq


def bank_scores_torch(query, bank, idx, temperature):
    out = torch.empty(idx.shape, device=query.device, dtype=torch.float32)
    q = query.float()
    for start, stop in _chunks(*query.shape, idx.shape[1]):
        w = bank[idx[:, start:stop].long()].float()
        out[:, start:stop] = torch.einsum("bkd,bd->bk", w, q) / temperature
    return out


def bank_scores_backward_torch(grad_scores, bank, idx, temperature):
    batch, dim = idx.shape[0], bank.shape[1]
    dq = torch.zeros(batch, dim, device=bank.device, dtype=torch.float32)
    g = grad_scores.float()
    for start, stop in _chunks(batch, dim, idx.shape[1]):
        w = bank[idx[:, start:stop].long()].float()
        dq += torch.einsum("bk,bkd->bd", g[:, start:stop], w)
    return dq / temperature
