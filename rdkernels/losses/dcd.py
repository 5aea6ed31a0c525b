"""DCD (Giakoumoglou & Stathaki 2024): Discriminative and Consistent Distillation."""
from __future__ import annotations

import torch
from torch import nn

from rdkernels._validation import FLOAT_DTYPES, check_dim, check_finite, check_positive_int, check_tensor
from rdkernels.losses._inputs import check_fits_projection
from rdkernels.losses.reference.dcd import load_reference_keys
from rdkernels.ops.dcd import check_dcd_scalars, dcd_loss
from rdkernels.ops.l2_normalize import l2_normalize


def _check_features(name: str, f: torch.Tensor, width: int, what: str) -> None:
    check_tensor(name, f, dtypes=FLOAT_DTYPES, contiguous=False)
    if f.dim() < 2:
        raise ValueError(f"{name} must have a batch dimension and features, got shape {tuple(f.shape)}")
    if f[0].numel() != width:
        raise ValueError(f"{name} has {f[0].numel()} features per sample but the loss was built with {what}={width}")


def _check_pair(f_s: torch.Tensor, f_t: torch.Tensor, s_dim: int, t_dim: int,
                projections: tuple[nn.Module, nn.Module]) -> None:
    _check_features("f_s", f_s, s_dim, "s_dim")
    _check_features("f_t", f_t, t_dim, "t_dim")
    if f_t.device != f_s.device:
        raise ValueError(f"f_t is on {f_t.device} but must be on {f_s.device} like f_s")
    check_dim("f_t", f_t, 0, f_s.shape[0], "f_s's batch size")
    check_fits_projection("f_s", f_s, projections[0])
    check_fits_projection("f_t", f_t, projections[1])


def _embed(linear: nn.Linear, f: torch.Tensor) -> torch.Tensor:
    """``F.normalize(linear(f), dim=1)`` (eps 1e-12), normalised by the fused op."""
    return l2_normalize(linear(f.reshape(f.shape[0], -1)), eps=1e-12)


class DCDLoss(nn.Module):
    """DCD: in-batch contrast of student and teacher embeddings, plus consistency.

    ``embed_s``/``embed_t`` are plain ``nn.Linear`` projections followed by L2
    normalisation; the logits are ``clamp(exp(tau), 0, max_scale) * z_s z_t^T + bias``
    over the batch (the diagonal holds the positives) and

        loss = CE(logits, arange(B)) + alpha * KL(colsoftmax(logits)^T || rowsoftmax(logits))

    ``tau`` and ``bias`` are learnable scalars (initial scale e^1 ~ 2.72). The
    loss and all gradients come from one fused op (:func:`rdkernels.ops.dcd_loss`),
    which takes tau and bias in float32: a module cast with ``.to(torch.bfloat16)``
    passes them up-cast (their gradients flow back through the cast).
    Checkpoints of the reference code (keys ``params.tau``, ``params.b``) load as
    they are.

    Reference checkpoints saved with ``trainable=False`` mean something else under
    the same keys: that mode stores ``params.tau = opt.nce_t`` (0.07) and uses it
    as the scale itself (no exp, no clamp), with the bias fixed at 0, whereas here
    ``tau`` is always the log of the scale. Nothing in such a checkpoint marks the
    mode (the keys, shapes and dtypes are those of a trainable one, and a trained
    log-scale tau may take any value), so it cannot be detected on load; convert
    it before loading, and freeze the two scalars to keep the mode::

        state["params.tau"] = state["params.tau"].log()   # scale 0.07 -> tau = log(0.07)
        dcd.load_state_dict(state)
        dcd.tau.requires_grad_(False); dcd.bias.requires_grad_(False)

    (exact while the scale is <= max_scale, so the clamp does not act).

    Forward: ``loss = dcd(f_s, f_t)`` with features [B, s_dim] and [B, t_dim].
    """

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int = 128, init_tau: float = 1.0,
                 init_bias: float = 0.0, alpha: float = 0.5, max_scale: float = 10.0):
        super().__init__()
        check_dcd_scalars(alpha, max_scale)  # the op's rules, here rather than failing every forward
        self.s_dim, self.t_dim, self.feat_dim = (check_positive_int(name, value) for name, value in (
            ("s_dim", s_dim), ("t_dim", t_dim), ("feat_dim", feat_dim)))
        self.alpha = float(alpha)
        self.max_scale = float(max_scale)
        self.embed_s = nn.Linear(self.s_dim, self.feat_dim)
        self.embed_t = nn.Linear(self.t_dim, self.feat_dim)
        self.tau = nn.Parameter(torch.tensor(check_finite("init_tau", init_tau)))
        self.bias = nn.Parameter(torch.tensor(check_finite("init_bias", init_bias)))
        self.register_load_state_dict_pre_hook(load_reference_keys)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        _check_pair(f_s, f_t, self.s_dim, self.t_dim, (self.embed_s, self.embed_t))
        z_s = _embed(self.embed_s, f_s)
        z_t = _embed(self.embed_t, f_t)
        if z_t.dtype != z_s.dtype:  # e.g. one side computed outside autocast
            z_t = z_t.to(z_s.dtype)
        # float32 whatever the module's dtype (a no-op for fp32 parameters): the op
        # computes in fp32 and rejects narrower scalars.
        return dcd_loss(z_s, z_t, self.tau.float(), self.bias.float(), alpha=self.alpha, max_scale=self.max_scale)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, max_scale={self.max_scale}"
