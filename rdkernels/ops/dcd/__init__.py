"""dcd_loss: DCD's in-batch contrast + consistency loss, fused.

    scale = clamp(exp(tau), 0, max_scale);  L = scale * z_s z_t^T + bias  (B x B)
    loss  = CE(L, arange(B)) + alpha * KL(colsoftmax(L)^T || rowsoftmax(L)), batchmean

The fused backends compute the loss and the gradients to z_s, z_t, tau and bias
in the forward, computing the logits once, and backward only scales them.
Both walk tiles of the logits with 2 B^2 floats of scratch (S and S^T) and take
any batch size: Triton's three launches (3xTF32 dots, triton.py) d <= 256, the
CUDA kernels' five (fp32 FMA tiles, csrc/dcd.cu) any width. ``auto`` takes the
CUDA kernels for eager calls and Triton's where a CUDA graph replay is priced
(``_resolve``); a width Triton cannot take goes to the CUDA kernels or torch.
"""
from __future__ import annotations

import torch

from rdkernels import backend as _backend
from rdkernels._validation import FLOAT_DTYPES, as_real, check_dim, check_non_negative, check_tensor
from rdkernels.ops._eager import eager_or_compiled, op_body
from rdkernels.ops._graph_replay import capturing
from rdkernels.ops.dcd.buffers import split_grads
from rdkernels.ops.dcd.reference import dcd_fwd_reference, dcd_reference

__all__ = ["dcd_loss", "dcd_reference", "validate_dcd", "check_dcd_scalars"]

MAX_FUSED_DIM = 256  # Triton: [BLOCK_M, d] accumulators in registers (any batch size)


def _resolve(z_s: torch.Tensor, requested: str | None) -> str:
    """The backend that runs this call; under ``auto`` shapes a fused kernel cannot
    take move down to the next backend, an explicit request raises instead.

    ``auto`` on a GPU takes the CUDA kernels eagerly, where a call is host-bound and
    theirs costs less host time (0.25-0.65 ms a fwd+bwd against Triton's 0.45-0.87 on
    an H100), and Triton's while a CUDA graph records the call or inside
    ``assume_graph_replay()``, where only device time counts: Triton's 3xTF32 tiles
    take 0.014 ms at B = 64, 0.086 ms at B = 1024 and 0.234 at 2048, the CUDA
    kernels' fp32 FMA tiles 0.023, 0.095 and 0.286 ms
    (benchmarks/results/nvidia-h100-80gb-hbm3/overhead-dcd.json)."""
    name = _backend.resolve(z_s.device, "dcd_loss", requested)
    dim = z_s.shape[1]
    explicit = _backend.requested_backend(requested) != "auto"
    if name == "cuda" and not explicit and capturing(z_s) and dim <= MAX_FUSED_DIM \
            and _backend.triton_unavailable_reason(z_s.device) is None:
        return "triton"
    if name == "triton" and dim > MAX_FUSED_DIM:
        if explicit:
            raise _backend.BackendUnavailable(
                f"backend 'triton' cannot run dcd_loss: embedding width {dim} > {MAX_FUSED_DIM}")
        name = "torch"
    return name


def validate_dcd(z_s, z_t, tau, bias, alpha=0.5, max_scale=10.0) -> None:
    check_tensor("z_s", z_s, ndim=2, dtypes=FLOAT_DTYPES, contiguous=False)
    check_tensor("z_t", z_t, ndim=2, dtypes=FLOAT_DTYPES, device=z_s.device, contiguous=False)
    check_dim("z_t", z_t, 0, z_s.shape[0], "z_s's batch size")
    check_dim("z_t", z_t, 1, z_s.shape[1], "z_s's embedding width")
    if z_t.dtype != z_s.dtype:
        raise TypeError(f"z_t must have the same dtype as z_s ({z_s.dtype}), got {z_t.dtype}")
    for name, t in (("tau", tau), ("bias", bias)):
        check_tensor(name, t, dtypes=(torch.float32, torch.float64), device=z_s.device, contiguous=False)
        if t.numel() != 1:
            raise ValueError(f"{name} must hold one element, got shape {tuple(t.shape)}")
    check_dcd_scalars(alpha, max_scale)


def check_dcd_scalars(alpha, max_scale) -> None:
    """The loss weight and the scale clamp (DCDLoss checks them once, at construction)."""
    check_non_negative("alpha", alpha)
    if not as_real("max_scale", max_scale) > 0:  # inf: no clamp; NaN fails
        raise ValueError(f"max_scale must be a positive number, got {max_scale!r}")


@op_body
def _dcd_impl(z_s: torch.Tensor, z_t: torch.Tensor, tau: torch.Tensor, bias: torch.Tensor, alpha: float,
              max_scale: float, need_grad: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, grads): grads flat fp32 [dz_s | dz_t | d tau | d bias] (buffers.py), empty
    without need_grad, so that backward scales all four with one multiply."""
    if backend == "torch":
        loss, *grads = dcd_fwd_reference(z_s, z_t, tau, bias, alpha, max_scale, need_grad)
        flat = torch.cat([g.reshape(-1) for g in grads]) if need_grad else grads[0]
        return loss.float(), flat.float()
    # the kernels read tau and bias as fp32 scalars (scale = min(exp(tau), max_scale)) and
    # apply the chain rule through the clamp themselves: no torch op around the launches
    tau, bias = (t if t.dtype == torch.float32 else t.float() for t in (tau, bias))
    if backend == "cuda":
        from rdkernels.ops.dcd.cuda import dcd_cuda as run
    else:
        from rdkernels.ops.dcd.triton import dcd_triton as run
    return run(z_s, z_t, tau, bias, max_scale, alpha, need_grad)


_dcd_op = torch.library.custom_op("rdkernels::dcd_loss", _dcd_impl, mutates_args=())


@_dcd_op.register_fake
def _(z_s, z_t, tau, bias, alpha, max_scale, need_grad, backend):
    loss = z_s.new_empty((), dtype=torch.float32)
    return loss, z_s.new_empty(2 * z_s.numel() + 2 if need_grad else 0, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    ctx.meta = [(t.dtype, t.shape) for t in inputs[:4]]
    ctx.need_grad = inputs[6]
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, unused):
    if not ctx.need_grad:
        raise RuntimeError("dcd_loss was called with need_grad=False; no gradient was computed")
    (grads,) = ctx.saved_tensors
    return (*split_grads(grads * grad_loss, ctx.meta), None, None, None, None)


_dcd_op.register_autograd(_backward, setup_context=_setup_context)
_dcd = eager_or_compiled(_dcd_op, _dcd_impl, _setup_context, _backward)


def dcd_loss(z_s: torch.Tensor, z_t: torch.Tensor, tau: torch.Tensor, bias: torch.Tensor, *,
             alpha: float = 0.5, max_scale: float = 10.0, backend: str | None = None) -> torch.Tensor:
    """DCD loss of in-batch logits ``clamp(exp(tau), 0, max_scale) * z_s z_t^T + bias``.

    Args:
        z_s, z_t: [B, d] embeddings (float32, bfloat16 or float16, same dtype, any
            strides); the row index is the positive pair.
        tau, bias: one-element float32 tensors (learnable); ``scale = exp(tau)``.
        alpha: weight of the consistency KL (0.5 in DCD).
        max_scale: the clamp on exp(tau) (10: effective temperature >= 0.1).
        backend: force ``"cuda" | "triton" | "torch"``; default per :mod:`rdkernels.backend`.

    Returns:
        0-dim float32 loss; gradients flow to all four tensors.
    """
    validate_dcd(z_s, z_t, tau, bias, alpha, max_scale)
    z_s, z_t = z_s.contiguous(), z_t.contiguous()  # strided embeddings: a copy (the kernels read rows)
    name = _resolve(z_s, backend)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (z_s, z_t, tau, bias))
    out = _dcd(z_s, z_t, tau, bias, float(alpha), float(max_scale), bool(need_grad), name)
    return out[0]
