"""PyTorch reference of the KD loss (RepDistiller's DistillKL).

    loss = KL(softmax(y_t / T) || softmax(y_s / T)) * T^2, summed over classes, averaged over rows

``kl_div`` on probabilities takes ``p_t * log p_t`` as 0 where ``p_t == 0``
(xlogy): a class the teacher rules out (a -inf logit) or whose probability
underflows adds nothing, and the student's gradient stays finite.

``kd_loss_rows_torch`` is the torch backend: the Triton kernel's formulas (each
row's value and its gradients from log-probabilities), so both backends give
the same results where the reference's autograd does not: a teacher whose
probabilities underflow gets a finite gradient from them, where the gradient
through ``softmax`` and ``kl_div`` is NaN (0 * log 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss_reference(y_s: torch.Tensor, y_t: torch.Tensor, T: float) -> torch.Tensor:
    """Differentiable through autograd, to both logits; float32 arithmetic (float64
    when either input is float64)."""
    dt = torch.float64 if torch.float64 in (y_s.dtype, y_t.dtype) else torch.float32
    log_p_s = F.log_softmax(y_s.to(dt) / T, dim=1)
    p_t = F.softmax(y_t.to(dt) / T, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * (T ** 2) / y_s.shape[0]


def kd_loss_rows_torch(y_s: torch.Tensor, y_t: torch.Tensor, T: float, need_grad: bool, teacher_grad: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows [B], d rows / d y_s, d rows / d y_t), each gradient an empty tensor where not
    asked for (teacher_grad implies need_grad), with
    rows = T^2 sum_c (xlogy(p_t, p_t) - p_t log p_s), in float32 (float64 for float64 inputs)."""
    dt = torch.float64 if torch.float64 in (y_s.dtype, y_t.dtype) else torch.float32
    log_p_s = F.log_softmax(y_s.to(dt) / T, dim=1)
    log_p_t = F.log_softmax(y_t.to(dt) / T, dim=1)
    p_t = log_p_t.exp()
    rows = (torch.xlogy(p_t, p_t) - p_t * log_p_s).sum(dim=1) * (T * T)
    if not need_grad:
        return rows, rows.new_empty(0), rows.new_empty(0)
    grad_s = (log_p_s.exp() - p_t) * T
    if not teacher_grad:
        return rows, grad_s, grad_s.new_empty(0)
    a = log_p_t - log_p_s
    return rows, grad_s, p_t * (a - (p_t * a).sum(dim=1, keepdim=True)) * T
