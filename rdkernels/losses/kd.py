"""KD (Hinton et al. 2015): KL divergence between temperature-softened outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rdkernels._validation import FLOAT_DTYPES, check_dim, check_positive, check_tensor


class KDLoss(nn.Module):
    """``KL(softmax(y_t / T) || softmax(y_s / T)) * T^2``, summed over classes and
    averaged over the batch (RepDistiller's DistillKL: ``kl_div(sum) * T^2 / B``).

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
    """

    def __init__(self, T: float = 4.0):
        super().__init__()
        check_positive("T", T)
        self.T = float(T)

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        check_tensor("y_s", y_s, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,), contiguous=False)
        check_tensor("y_t", y_t, ndim=2, dtypes=FLOAT_DTYPES + (torch.float64,), device=y_s.device,
                     contiguous=False)
        check_dim("y_t", y_t, 0, y_s.shape[0], "y_s's batch size")
        check_dim("y_t", y_t, 1, y_s.shape[1], "y_s's number of classes")
        dt = torch.float64 if torch.float64 in (y_s.dtype, y_t.dtype) else torch.float32
        log_p_s = F.log_softmax(y_s.to(dt) / self.T, dim=1)
        p_t = F.softmax(y_t.to(dt) / self.T, dim=1)
        return F.kl_div(log_p_s, p_t, reduction="sum") * (self.T ** 2) / y_s.shape[0]

    def extra_repr(self) -> str:
        return f"T={self.T}"
