"""l2_normalize: row-wise L2 normalisation, the last step of every projection head.

    y = x / max(||x||_2, eps)     per row of x [B, d]

The losses' heads (CRD/WCoRD ``Embed``, DCD/RRD ``F.normalize``) run it on the
student and the teacher side every step. As torch ops that is about 14 kernel
launches forward and backward per side; the Triton kernels make it one each
way. The math is fp32 whatever x's dtype. The output has x's dtype, except
under CUDA autocast, where it is fp32 -- what the torch formulation gives there
(CUDA autocast runs ``pow`` and the vector norm in fp32, and the division
promotes; CPU autocast leaves them in the narrow type), so the fused and
reference heads hand the same dtype to the loss.

Backends: ``triton`` (a GPU, or CPU tensors under Triton's interpreter) and
``torch``; there is no CUDA C++ kernel, so the ``cuda`` backend uses Triton's
where it can run and torch otherwise.
"""
from __future__ import annotations

import torch

from rdkernels import backend as _backend
from rdkernels._validation import FLOAT_DTYPES, check_non_negative, check_tensor
from rdkernels.ops._eager import eager_or_compiled, op_body
from rdkernels.ops.l2_normalize.reference import l2_normalize_backward_reference, l2_normalize_reference

__all__ = ["l2_normalize", "l2_normalize_reference"]

MAX_TRITON_DIM = 16384  # one row in registers (triton.py); wider rows take the torch path


def _resolve(x: torch.Tensor, requested: str | None) -> str:
    dim = x.shape[1]
    too_large = f"rows wider than {MAX_TRITON_DIM} (got {dim})" if dim > MAX_TRITON_DIM else None
    return _backend.resolve_triton_only(x.device, "l2_normalize", requested, too_large)


@op_body
def _l2_normalize_impl(x: torch.Tensor, eps: float, fp32_out: bool, backend: str
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, norm): y in x's dtype (fp32 with fp32_out), norm [B] fp32 unclamped."""
    out_dtype = torch.float32 if fp32_out else x.dtype
    if backend == "triton":
        from rdkernels.ops.l2_normalize.triton import l2_normalize_fwd_triton
        return l2_normalize_fwd_triton(x, eps, out_dtype)
    xf = x.float()
    norm = torch.linalg.vector_norm(xf, dim=1)
    return (xf / norm.clamp_min(eps)[:, None]).to(out_dtype), norm


_l2_normalize_op = torch.library.custom_op("rdkernels::l2_normalize", _l2_normalize_impl, mutates_args=())


@_l2_normalize_op.register_fake
def _(x, eps, fp32_out, backend):
    return (x.new_empty(x.shape, dtype=torch.float32 if fp32_out else x.dtype),
            x.new_empty(x.shape[0], dtype=torch.float32))


@op_body
def _l2_normalize_backward_impl(grad_y: torch.Tensor, x: torch.Tensor, norm: torch.Tensor, eps: float,
                                backend: str) -> torch.Tensor:
    """d loss / d x in x's dtype. Its own op: torch.compile traces a backward with fake
    tensors, which a Triton launch cannot take."""
    if backend == "triton":
        from rdkernels.ops.l2_normalize.triton import l2_normalize_bwd_triton
        return l2_normalize_bwd_triton(grad_y.contiguous(), x, norm, eps)
    xf, norm = x.float(), norm[:, None]
    dx = l2_normalize_backward_reference(grad_y.float(), xf / norm.clamp_min(eps), norm, eps)
    return dx.to(x.dtype)


_l2_normalize_backward_op = torch.library.custom_op("rdkernels::l2_normalize_backward",
                                                    _l2_normalize_backward_impl, mutates_args=())


@_l2_normalize_backward_op.register_fake
def _(grad_y, x, norm, eps, backend):
    return torch.empty_like(x)


_l2_normalize_backward = eager_or_compiled(_l2_normalize_backward_op, _l2_normalize_backward_impl)


def _setup_context(ctx, inputs, output):
    x, eps, _, backend = inputs
    ctx.eps, ctx.backend = eps, backend
    ctx.save_for_backward(x, output[1])


def _backward(ctx, grad_y, grad_norm):
    if grad_y is None:
        return None, None, None, None
    x, norm = ctx.saved_tensors
    return _l2_normalize_backward(grad_y, x, norm, ctx.eps, ctx.backend), None, None, None


_l2_normalize_op.register_autograd(_backward, setup_context=_setup_context)
_l2_normalize = eager_or_compiled(_l2_normalize_op, _l2_normalize_impl, _setup_context, _backward)


def l2_normalize(x: torch.Tensor, *, eps: float = 0.0, backend: str | None = None) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` per row, forward and backward in one kernel each.

    Args:
        x: [B, d] float32, bfloat16 or float16, any strides (rows with stride 1
            along dimension 1 are read in place, others copied first).
        eps: lower bound on the norm. 0 (the default) is RepDistiller's
            ``Normalize(2)``, with no bound: a zero row gives NaN, as there;
            1e-12 is ``F.normalize``'s.
        backend: ``"triton" | "torch"`` (``"cuda"``: Triton's kernel on a GPU); default
            per :mod:`rdkernels.backend`.

    Returns:
        [B, d] in x's dtype, or float32 under CUDA autocast (as the torch formulation).
    """
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES, contiguous=False)
    if x.stride(1) != 1:  # the kernel takes any row stride, but reads a row's elements as one vector
        x = x.contiguous()
    eps = check_non_negative("eps", eps)
    # CUDA autocast computes the torch formulation's norm in fp32 (its fp32 op list has pow
    # and norm), CPU autocast does not: the output dtype follows
    fp32_out = x.dtype != torch.float32 and x.device.type == "cuda" and torch.is_autocast_enabled("cuda")
    return _l2_normalize(x, float(eps), bool(fp32_out), _resolve(x, backend))[0]
