"""KD (Hinton et al. 2015): KL divergence between temperature-softened outputs."""
from __future__ import annotations

import torch
from torch import nn

from rdkernels._validation import check_positive
from rdkernels.ops.kd_loss import kd_loss


class KDLoss(nn.Module):
    """``KL(softmax(y_t / T) || softmax(y_s / T)) * T^2``, summed over classes and
    averaged over the batch (RepDistiller's DistillKL: ``kl_div(sum) * T^2 / B``),
    on :func:`rdkernels.ops.kd_loss` (one Triton kernel on a GPU).

    Computed in float32 (float64 for float64 logits) with the teacher's
    probabilities as the target, as in the reference: ``kl_div`` takes
    ``p_t * log p_t`` as 0 where ``p_t == 0`` (xlogy), so a class the teacher
    rules out (a -inf logit, a masked vocabulary entry) or whose probability
    underflows contributes 0 and the student's gradient stays finite. A
    log-space target would give exp(-inf) * (-inf - x) = NaN there. As in the
    reference, a class with -inf logits on both sides gives NaN (0 * -inf).

    As in the reference, the teacher logits are not detached: pass them
    detached (or from a frozen teacher under no_grad) unless the teacher should
    learn; a teacher that learns through -inf logits gets NaN gradients, as in
    the reference.
    The backend is the global one (:mod:`rdkernels.backend`).
    """

    def __init__(self, T: float = 4.0):
        super().__init__()
        check_positive("T", T)
        self.T = float(T)

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        return kd_loss(y_s, y_t, T=self.T)

    def extra_repr(self) -> str:
        return f"T={self.T}"
