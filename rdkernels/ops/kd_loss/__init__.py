"""kd_loss: Hinton's knowledge-distillation loss, the term every distillation step adds.

    loss = KL(softmax(y_t / T) || softmax(y_s / T)) * T^2 / B      (RepDistiller's DistillKL)

As torch ops that is about six kernels each way; the Triton kernel computes
each row's loss and gradients in one pass over the two logit rows, and the
backward only scales them. The gradient reaches the teacher's logits too when
they require it (DistillKL does not detach them). Arithmetic in fp32 whatever
the logits' dtype; float64 logits take the torch formulation, in float64
(an explicit ``triton`` refuses them, as it does any input its kernel cannot take).
Both backends compute each row's value and gradients from log-probabilities
(reference.py), so a teacher probability that underflows gives a finite
teacher gradient on both, where autograd through the reference is NaN there.

Backends: ``triton`` (a GPU, or CPU tensors under Triton's interpreter) and
``torch``; the ``cuda`` backend runs Triton's kernel on a GPU (the extension
has none). Rows of more than MAX_TRITON_CLASSES classes take torch under auto.
"""
from __future__ import annotations

import torch

from rdkernels import backend as _backend
from rdkernels._validation import FLOAT_DTYPES, check_dim, check_positive, check_tensor
from rdkernels.ops._eager import eager_or_compiled, op_body
from rdkernels.ops.kd_loss.reference import kd_loss_reference, kd_loss_rows_torch

__all__ = ["kd_loss", "kd_loss_reference"]

MAX_TRITON_CLASSES = 8192  # one row of each side in registers (triton.py)


def _validate(y_s: torch.Tensor, y_t: torch.Tensor, T: float) -> float:
    logits = FLOAT_DTYPES + (torch.float64,)
    check_tensor("y_s", y_s, ndim=2, dtypes=logits, contiguous=False)
    check_tensor("y_t", y_t, ndim=2, dtypes=logits, device=y_s.device, contiguous=False)
    check_dim("y_t", y_t, 0, y_s.shape[0], "y_s's batch size")
    check_dim("y_t", y_t, 1, y_s.shape[1], "y_s's number of classes")
    return check_positive("T", T)


def _resolve(y_s: torch.Tensor, y_t: torch.Tensor, requested: str | None) -> str:
    n_cls = y_s.shape[1]
    # why the kernel cannot take this call: auto takes the torch formulation, an explicit
    # triton raises (as sinkhorn's does on float64 costs; README: Backends)
    unfit = f"rows of more than {MAX_TRITON_CLASSES} classes (got {n_cls})" if n_cls > MAX_TRITON_CLASSES else None
    if torch.float64 in (y_s.dtype, y_t.dtype):
        unfit = "float64 logits (its kernel computes in float32; backend 'torch' or 'auto' runs them, in float64)"
    return _backend.resolve_triton_only(y_s.device, "kd_loss", requested, too_large=unfit)


@op_body
def _kd_loss_impl(y_s: torch.Tensor, y_t: torch.Tensor, T: float, need_grad: bool, teacher_grad: bool,
                  backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows [B], d rows / d y_s [B, C] or [0], d rows / d y_t [B, C] or [0]) in fp32
    (float64 for float64 logits, on torch); teacher_grad implies need_grad."""
    if backend == "triton":
        from rdkernels.ops.kd_loss.triton import kd_loss_triton
        return kd_loss_triton(y_s, y_t, T, need_grad, teacher_grad)
    return kd_loss_rows_torch(y_s, y_t, T, need_grad, teacher_grad)


_kd_loss_op = torch.library.custom_op("rdkernels::kd_loss", _kd_loss_impl, mutates_args=())


@_kd_loss_op.register_fake
def _(y_s, y_t, T, need_grad, teacher_grad, backend):
    batch, n_cls = y_s.shape
    dt = torch.float64 if torch.float64 in (y_s.dtype, y_t.dtype) else torch.float32
    return (y_s.new_empty(batch, dtype=dt), y_s.new_empty((batch, n_cls) if need_grad else (0,), dtype=dt),
            y_s.new_empty((batch, n_cls) if teacher_grad else (0,), dtype=dt))


def _setup_context(ctx, inputs, output):
    y_s, y_t = inputs[:2]
    ctx.dtypes = y_s.dtype, y_t.dtype
    ctx.save_for_backward(output[1], output[2])


def _backward(ctx, grad_rows, grad_gs, grad_gt):
    grad_s, grad_t = ctx.saved_tensors
    if grad_rows is None:
        return None, None, None, None, None, None
    scale = grad_rows[:, None]
    dy_s = (scale * grad_s).to(ctx.dtypes[0]) if grad_s.numel() else None
    dy_t = (scale * grad_t).to(ctx.dtypes[1]) if grad_t.numel() else None
    return dy_s, dy_t, None, None, None, None


_kd_loss_op.register_autograd(_backward, setup_context=_setup_context)
_kd_loss = eager_or_compiled(_kd_loss_op, _kd_loss_impl, _setup_context, _backward)


def kd_loss(y_s: torch.Tensor, y_t: torch.Tensor, *, T: float = 4.0, backend: str | None = None) -> torch.Tensor:
    """``KL(softmax(y_t / T) || softmax(y_s / T)) * T^2``, summed over classes and averaged
    over the batch: RepDistiller's DistillKL, forward and gradients in one kernel.

    Args:
        y_s: student logits [B, C], float32/bfloat16/float16 (float64: the torch
            formulation, under any backend but ``triton``, which refuses them), any
            strides (rows are read in place where the classes have stride 1, copied
            otherwise).
        y_t: teacher logits, same shape, device. Not detached, as in the reference:
            pass them detached (or from a frozen teacher) unless the teacher learns.
        T: the temperature, > 0.
        backend: ``"triton" | "torch"`` (``"cuda"``: Triton's kernel on a GPU); default
            per :mod:`rdkernels.backend`.

    Returns:
        The 0-dim loss, float32 (float64 for float64 logits).

    The value is the reference's (``kd_loss_reference``, DistillKL) to float
    rounding, and so is the student's gradient; the teacher's too, except
    where a teacher probability underflows to 0: there the reference's
    autograd gives NaN (0 * log 0), this op the limit.
    """
    T = _validate(y_s, y_t, T)
    name = _resolve(y_s, y_t, backend)
    y_s = y_s if y_s.stride(1) == 1 else y_s.contiguous()   # the kernel reads a row as one vector
    y_t = y_t if y_t.stride(1) == 1 else y_t.contiguous()
    # the kernel writes only the gradients autograd will ask for (none under no_grad)
    teacher_grad = y_t.requires_grad and torch.is_grad_enabled()
    need_grad = teacher_grad or (y_s.requires_grad and torch.is_grad_enabled())
    return _kd_loss(y_s, y_t, T, need_grad, teacher_grad, name)[0].mean()
