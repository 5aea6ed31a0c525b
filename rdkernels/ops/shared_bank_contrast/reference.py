"""PyTorch reference of the shared-bank contrast (RRD's relational loss).

For queries q_s[B, d] (student), q_t[B, d] (teacher) and a queue Q[N, d]:

    s = q_s Q^T / tau_s,   t = q_t Q^T / tau_t
    loss[b] = -sum_k softmax(t[b])_k * log_softmax(s[b])_k
            = logsumexp(s[b]) - sum_k softmax(t[b])_k * s[b, k]

The teacher side and the queue are constants (no gradient). The gradient to the
student query is

    d loss[b] / d q_s[b] = sum_k (softmax(s[b])_k - softmax(t[b])_k) Q_k / tau_s.

Both functions here materialise the [B, N] logits: they are the ground truth
(float64-capable) and the torch backend.
"""
from __future__ import annotations

import torch


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def shared_bank_contrast_reference(q_s: torch.Tensor, q_t: torch.Tensor, queue: torch.Tensor,
                                   tau_s: float, tau_t: float) -> torch.Tensor:
    """Per-row loss [B], differentiable in ``q_s`` through autograd (gradcheck-able)."""
    dt = _compute_dtype(q_s, q_t, queue)
    bank = queue.detach().to(dt)
    s = q_s.to(dt) @ bank.t() / tau_s
    t = q_t.detach().to(dt) @ bank.t() / tau_t
    return -(torch.softmax(t, dim=1) * torch.log_softmax(s, dim=1)).sum(dim=1)


@torch.no_grad()
def shared_bank_contrast_fwd_reference(q_s: torch.Tensor, q_t: torch.Tensor, queue: torch.Tensor,
                                       tau_s: float, tau_t: float, need_grad: bool):
    """(loss[B], dq_s[B, d] or an empty tensor): the torch backend.

    Arithmetic in float32 (float64 if any input is float64).
    """
    dt = _compute_dtype(q_s, q_t, queue)
    bank = queue.to(dt)
    # the temperatures scale the [B, d] queries, not the [B, N] logits, and the
    # [B, N] temporaries are reused in place (4 MB each at B = 64, N = 16384)
    log_p_s = torch.log_softmax((q_s.to(dt) / tau_s) @ bank.t(), dim=1)
    p_t = torch.softmax((q_t.to(dt) / tau_t) @ bank.t(), dim=1)
    loss = -torch.linalg.vecdot(p_t, log_p_s, dim=1)
    if not need_grad:
        return loss, loss.new_empty(0)
    dq = (log_p_s.exp_().sub_(p_t) @ bank).div_(tau_s)
    return loss, dq
