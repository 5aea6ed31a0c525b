"""Triton kernel of the KD loss: one program per row, the row's loss and its
gradients in one pass over both logit rows.

The torch formulation is about six kernels forward (two softmaxes, the KL
terms, the sum, two scalings) and as many backward; every distillation step
runs it. Here the forward writes each row's loss and, where autograd will ask for them,
d row / d y_s (and d row / d y_t when the teacher learns); the backward scales
them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.ops._aot_types import FLOAT_TYPES
from rdkernels.ops._blocks import block_width
from rdkernels.ops._compile_options import COMPILE_OPTIONS
from rdkernels.ops.kd_loss import MAX_TRITON_CLASSES


@triton.jit
def kd_loss_kernel(ys_ptr, yt_ptr, rows_ptr, gs_ptr, gt_ptr, n_cls, stride_s, stride_t, inv_T, T,
                   NEED_GRAD: tl.constexpr, TEACHER_GRAD: tl.constexpr, BLOCK_C: tl.constexpr):
    """rows[r] = T^2 sum_c (xlogy(p_t, p_t) - p_t log p_s); with NEED_GRAD, gs = d rows / d y_s
    = T (p_s - p_t); with TEACHER_GRAD too, gt = d rows / d y_t = T p_t (a - <p_t, a>) with
    a = log p_t - log p_s."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < n_cls
    xs = tl.load(ys_ptr + row * stride_s + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_T
    xt = tl.load(yt_ptr + row * stride_t + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_T
    max_s, max_t = tl.max(xs, axis=0), tl.max(xt, axis=0)
    es, et = tl.exp(xs - max_s), tl.exp(xt - max_t)
    sum_s, sum_t = tl.sum(es, axis=0), tl.sum(et, axis=0)
    # padding lanes: log-probabilities of 0 beside probabilities of 0, so every term there is 0
    log_ps = tl.where(mask, xs - max_s - tl.log(sum_s), 0.0)
    log_pt = tl.where(mask, xt - max_t - tl.log(sum_t), 0.0)
    pt = et / sum_t
    # kl_div's pointwise term: xlogy keeps a p_t of 0 at 0 (and 0 * -inf = NaN where
    # both sides rule the class out, as there)
    term = tl.where(pt == 0.0, 0.0, pt * log_pt) - pt * log_ps
    tl.store(rows_ptr + row, tl.sum(term, axis=0) * (T * T))
    if NEED_GRAD:
        tl.store(gs_ptr + row * n_cls + cols, (es / sum_s - pt) * T, mask=mask)
    if TEACHER_GRAD:
        a = log_pt - log_ps
        tl.store(gt_ptr + row * n_cls + cols, pt * (a - tl.sum(pt * a, axis=0)) * T, mask=mask)


def launch_config(n_cls: int) -> dict:
    block_c = block_width(n_cls)
    return dict(BLOCK_C=block_c, num_warps=4 if block_c <= 2048 else 8 if block_c <= 4096 else 16)


def kd_loss_triton(y_s: torch.Tensor, y_t: torch.Tensor, T: float, need_grad: bool, teacher_grad: bool):
    """(rows [B], grad_s [B, C] or [0], grad_t [B, C] or [0]) in fp32: each row's loss and
    the gradients asked for (teacher_grad implies need_grad); rows with stride 1 along
    the classes."""
    batch, n_cls = y_s.shape
    rows = torch.empty(batch, device=y_s.device, dtype=torch.float32)
    grad_s = torch.empty((batch, n_cls) if need_grad else (0,), device=y_s.device, dtype=torch.float32)
    grad_t = torch.empty((batch, n_cls) if teacher_grad else (0,), device=y_s.device, dtype=torch.float32)
    # an output the kernel does not write gets a placeholder pointer
    kd_loss_kernel[(batch,)](y_s, y_t, rows, grad_s if need_grad else rows, grad_t if teacher_grad else rows, n_cls,
                             y_s.stride(0), y_t.stride(0), 1.0 / T, float(T), NEED_GRAD=need_grad,
                             TEACHER_GRAD=teacher_grad, **launch_config(n_cls), **COMPILE_OPTIONS)
    return rows, grad_s, grad_t


def aot_variants() -> list[dict]:
    """The kernel at every BLOCK_C up to MAX_TRITON_CLASSES, for each pair of input dtypes,
    with no gradient, the student's, or both."""
    out = []
    for block_c in [16 << i for i in range(MAX_TRITON_CLASSES.bit_length() - 4)]:   # 16 .. MAX_TRITON_CLASSES
        cfg = launch_config(block_c)
        for s_t in FLOAT_TYPES.values():
            for t_t in FLOAT_TYPES.values():
                for need_grad, teacher_grad in ((False, False), (True, False), (True, True)):
                    out.append(dict(
                        name=f"kd_loss[C={block_c},s={s_t},t={t_t},grads={int(need_grad) + int(teacher_grad)}]",
                        kernel=kd_loss_kernel,
                        signature={"ys_ptr": f"*{s_t}", "yt_ptr": f"*{t_t}", "rows_ptr": "*fp32", "gs_ptr": "*fp32",
                                   "gt_ptr": "*fp32", "n_cls": "i32", "stride_s": "i32", "stride_t": "i32",
                                   "inv_T": "fp32", "T": "fp32"},
                        constexprs={"NEED_GRAD": need_grad, "TEACHER_GRAD": teacher_grad, "BLOCK_C": block_c},
                        num_warps=cfg["num_warps"], num_stages=1))
    return out
