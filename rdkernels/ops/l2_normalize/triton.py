"""Triton kernels for the row-wise L2 normalisation: one program per row, one
launch forward and one backward.

The torch formulation is four kernels forward (pow, sum, sqrt, div) and about
ten backward; the projections run it twice a step (student and teacher), so in
eager training those ~28 launches cost more host time than the arithmetic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.ops._aot_types import FLOAT_TYPES
from rdkernels.ops._blocks import block_width
from rdkernels.ops._compile_options import COMPILE_OPTIONS
from rdkernels.ops.l2_normalize import MAX_TRITON_DIM


@triton.jit
def l2_normalize_fwd_kernel(x_ptr, y_ptr, norm_ptr, dim, stride_x, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < dim
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(x * x, axis=0))
    # (eps = 0 keeps 0 / 0 = NaN for a zero row, as the reference's division does)
    y = x / tl.maximum(norm, eps)
    tl.store(y_ptr + row * dim + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(norm_ptr + row, norm)


@triton.jit
def l2_normalize_bwd_kernel(g_ptr, x_ptr, norm_ptr, dx_ptr, dim, stride_x, eps, BLOCK_D: tl.constexpr):
    """dx = (g - y <g, y>) / ||x||, or g / eps where the clamp holds the norm at eps.
    y is recomputed from x (an fp32 y would be a second [B, d] buffer to keep)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < dim
    g = tl.load(g_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    norm = tl.load(norm_ptr + row)
    bound = tl.maximum(norm, eps)  # eps where the clamp holds, so g / bound is g / eps there
    y = x / bound
    dx = (g - y * tl.sum(g * y, axis=0)) / norm
    dx = tl.where(norm < eps, g / bound, dx)
    tl.store(dx_ptr + row * dim + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def launch_config(dim: int) -> dict:
    block_d = block_width(dim)
    # (8 warps at 8192 spill 4 bytes on sm_90 with bf16 in, fp32 out)
    return dict(BLOCK_D=block_d, num_warps=4 if block_d <= 2048 else 8 if block_d <= 4096 else 16)


def l2_normalize_fwd_triton(x: torch.Tensor, eps: float, out_dtype: torch.dtype):
    """(y [B, d] in out_dtype, norm [B] fp32, the unclamped row norms)."""
    batch, dim = x.shape
    y = torch.empty(batch, dim, device=x.device, dtype=out_dtype)
    norm = torch.empty(batch, device=x.device, dtype=torch.float32)
    l2_normalize_fwd_kernel[(batch,)](x, y, norm, dim, x.stride(0), float(eps), **launch_config(dim),
                                      **COMPILE_OPTIONS)
    return y, norm


def l2_normalize_bwd_triton(grad: torch.Tensor, x: torch.Tensor, norm: torch.Tensor, eps: float):
    """dx [B, d] in x's dtype; ``grad`` contiguous."""
    batch, dim = x.shape
    dx = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    l2_normalize_bwd_kernel[(batch,)](grad, x, norm, dx, dim, x.stride(0), float(eps), **launch_config(dim),
                                      **COMPILE_OPTIONS)
    return dx


def aot_variants() -> list[dict]:
    """Both kernels at every BLOCK_D up to MAX_TRITON_DIM, for each input dtype and the
    output dtypes the op writes (its input's, or fp32 under autocast)."""
    out = []
    for block_d in [16 << i for i in range(MAX_TRITON_DIM.bit_length() - 4)]:   # 16 .. MAX_TRITON_DIM
        cfg = launch_config(block_d)
        ints = {"dim": "i32", "stride_x": "i32", "eps": "fp32"}
        for x_t in FLOAT_TYPES.values():
            for y_t in sorted({x_t, "fp32"}):
                out.append(dict(
                    name=f"l2_normalize_fwd[D={block_d},x={x_t},y={y_t}]", kernel=l2_normalize_fwd_kernel,
                    signature={"x_ptr": f"*{x_t}", "y_ptr": f"*{y_t}", "norm_ptr": "*fp32", **ints},
                    constexprs={"BLOCK_D": block_d}, num_warps=cfg["num_warps"], num_stages=1))
                out.append(dict(
                    name=f"l2_normalize_bwd[D={block_d},x={x_t},g={y_t}]", kernel=l2_normalize_bwd_kernel,
                    signature={"g_ptr": f"*{y_t}", "x_ptr": f"*{x_t}", "norm_ptr": "*fp32", "dx_ptr": f"*{x_t}",
                               **ints},
                    constexprs={"BLOCK_D": block_d}, num_warps=cfg["num_warps"], num_stages=1))
    return out
