"""shared_bank_contrast: queries against every row of a shared queue (RRD, MoCo-style).

    loss[b] = -sum_k softmax(q_t[b] Q^T / tau_t)_k * log_softmax(q_s[b] Q^T / tau_s)_k

Fused GEMM + two online softmaxes + their cross-entropy, flash-style: no [B, N]
matrix in memory. The gradient flows to ``q_s`` only: the teacher query and the
queue are constants (RRD detaches both). dq_s is computed in the forward and
only scaled in backward, so the queue may be overwritten between forward and
backward (RRD's enqueue-after-scoring) without corrupting the gradient.
"""
from __future__ import annotations

import torch

from rdkernels import backend as _backend
from rdkernels._validation import FLOAT_DTYPES, check_dim, check_positive, check_tensor
from rdkernels.ops._eager import eager_or_compiled, op_body
from rdkernels.ops._graph_replay import capturing
from rdkernels.ops.shared_bank_contrast.reference import (shared_bank_contrast_fwd_reference,
                                                          shared_bank_contrast_reference)

__all__ = ["run_shared_bank_contrast", "shared_bank_contrast", "shared_bank_contrast_reference",
           "validate_shared_bank_contrast"]

_REDUCTIONS = ("mean", "sum", "none")


def validate_shared_bank_contrast(q_s, q_t, queue, tau_s, tau_t, reduction="none") -> None:
    """All checks of :func:`shared_bank_contrast`; raise before anything runs."""
    check_tensor("q_s", q_s, ndim=2, dtypes=FLOAT_DTYPES, contiguous=False)
    check_tensor("q_t", q_t, ndim=2, dtypes=FLOAT_DTYPES, device=q_s.device, contiguous=False)
    check_tensor("queue", queue, ndim=2, dtypes=FLOAT_DTYPES, device=q_s.device)
    check_dim("q_t", q_t, 0, q_s.shape[0], "q_s's batch size")
    check_dim("q_s", q_s, 1, queue.shape[1], "the queue's row width")   # the queue is the state: name the query
    check_dim("q_t", q_t, 1, q_s.shape[1], "q_s's embedding width")
    if q_t.dtype != q_s.dtype:
        raise TypeError(f"q_t must have the same dtype as q_s ({q_s.dtype}), got {q_t.dtype}")
    check_positive("tau_s", tau_s)
    check_positive("tau_t", tau_t)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


MAX_TRITON_DIM = 128  # [16, d] fp32 tiles in registers (d = 256 spills on sm_90)
MAX_CUDA_DIM = 512    # [4 rows x 2 x d / 32] accumulators per lane


def _shortfall(name: str, q_s: torch.Tensor) -> str | None:
    """Why backend ``name`` cannot take this width, or None."""
    dim = q_s.shape[1]
    limit = {"cuda": MAX_CUDA_DIM, "triton": MAX_TRITON_DIM}.get(name)
    if limit is not None and dim > limit:
        return f"embedding width {dim} > {limit}"
    if name == "cuda":  # d = 512 needs 128 KB: more than a 99 KB GPU (RTX 4090, L40S) has
        from rdkernels.ops._cuda_common import kernel_shortfall
        return kernel_shortfall(q_s.device, "shared_bank_contrast", dim)
    return None


def _resolve(q_s: torch.Tensor, requested: str | None) -> str:
    """The backend that runs this call; under ``auto`` widths a fused kernel cannot
    take move to the next backend, an explicit request raises instead.

    ``auto`` on a GPU takes the CUDA kernel eagerly (one launch, where Triton's are a
    split kernel and a merge: the call is host-bound at RRD's sizes) and Triton's
    while a CUDA graph records the call or inside ``assume_graph_replay()``, where
    only device time counts: Triton's tile loop runs its 3xTF32 products on tensor
    cores, the CUDA kernel's fp32 FMAs do not (device time per fwd+bwd on an H100,
    B = 64, N = 16384: Triton 0.044 ms, CUDA 0.099 ms, 2026-11-24)."""
    name = _backend.resolve(q_s.device, "shared_bank_contrast", requested)
    auto = _backend.requested_backend(requested) == "auto"
    if name == "cuda" and auto and capturing(q_s) and _shortfall("triton", q_s) is None \
            and _backend.triton_unavailable_reason(q_s.device) is None:
        return "triton"
    reason = _shortfall(name, q_s)
    if reason is not None:
        if not auto:
            raise _backend.BackendUnavailable(f"backend {name!r} cannot run shared_bank_contrast: {reason}")
        name = "torch"
    return name


@op_body
def _shared_bank_contrast_impl(q_s: torch.Tensor, q_t: torch.Tensor, queue: torch.Tensor, tau_s: float,
                             tau_t: float, need_grad: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "cuda":
        from rdkernels.ops.shared_bank_contrast.cuda import shared_bank_contrast_cuda
        return shared_bank_contrast_cuda(q_s, q_t, queue, tau_s, tau_t, need_grad)
    if backend == "triton":
        from rdkernels.ops.shared_bank_contrast.triton import shared_bank_contrast_triton
        return shared_bank_contrast_triton(q_s, q_t, queue, tau_s, tau_t, need_grad)
    loss, dq = shared_bank_contrast_fwd_reference(q_s, q_t, queue, tau_s, tau_t, need_grad)
    return loss.float(), dq.float()


_shared_bank_contrast_op = torch.library.custom_op("rdkernels::shared_bank_contrast", _shared_bank_contrast_impl,
                                                   mutates_args=())


@_shared_bank_contrast_op.register_fake
def _(q_s, q_t, queue, tau_s, tau_t, need_grad, backend):
    loss = q_s.new_empty(q_s.shape[0], dtype=torch.float32)
    dq = q_s.new_empty(q_s.shape if need_grad else (0,), dtype=torch.float32)
    return loss, dq


def _setup_context(ctx, inputs, output):
    q_s = inputs[0]
    ctx.q_dtype = q_s.dtype
    ctx.need_grad = inputs[5]
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, grad_dq):
    (dq,) = ctx.saved_tensors
    if not ctx.need_grad:
        raise RuntimeError("shared_bank_contrast was called with need_grad=False; no gradient was computed")
    grad_q_s = (grad_loss.unsqueeze(1) * dq).to(ctx.q_dtype)
    return grad_q_s, None, None, None, None, None, None


_shared_bank_contrast_op.register_autograd(_backward, setup_context=_setup_context)
_shared_bank_contrast = eager_or_compiled(_shared_bank_contrast_op, _shared_bank_contrast_impl, _setup_context,
                                          _backward)


def shared_bank_contrast(q_s: torch.Tensor, q_t: torch.Tensor, queue: torch.Tensor, *, tau_s: float,
                         tau_t: float, reduction: str = "none", backend: str | None = None) -> torch.Tensor:
    """Cross-entropy between the teacher's and the student's softmax over a shared queue.

    Args:
        q_s: [B, d] student queries (float32, bfloat16 or float16); receives the gradient.
        q_t: [B, d] teacher queries, same dtype as ``q_s``; treated as a constant.
            Strided queries are copied first.
        queue: [N, d] shared bank (float32, bfloat16 or float16, contiguous); a constant.
        tau_s, tau_t: student and teacher temperatures.
        reduction: ``"none"`` (per-row loss [B], the default), ``"mean"`` or ``"sum"``.
        backend: force ``"cuda" | "triton" | "torch"``; default per :mod:`rdkernels.backend`.

    Returns:
        float32 loss, [B] or 0-dim. Any N works (no N % B constraint); nothing of
        size [B, N] is materialised by the fused backends.
    """
    validate_shared_bank_contrast(q_s, q_t, queue, tau_s, tau_t, reduction)
    return run_shared_bank_contrast(q_s, q_t, queue, tau_s, tau_t, reduction, _resolve(q_s, backend))


def run_shared_bank_contrast(q_s, q_t, queue, tau_s, tau_t, reduction: str, backend: str) -> torch.Tensor:
    """:func:`shared_bank_contrast` after its checks, on a resolved ``backend``: for a
    caller that made both (RRDLoss, before it enqueues), so a step makes them once."""
    need_grad = bool(q_s.requires_grad and torch.is_grad_enabled())
    loss, _ = _shared_bank_contrast(q_s.contiguous(), q_t.detach().contiguous(), queue.detach(), float(tau_s),
                                    float(tau_t), need_grad, backend)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
