"""3xTF32 products for the Triton kernels, split as CUTLASS's fast fp32 GEMMs split.

An fp32 operand x is carried as two TF32 values, x = hi + lo (to 2^-21 of x), and
a product as three tensor-core dots, a_lo b_hi + a_hi b_lo + a_hi b_hi (the
small terms first, so they are not lost against the big one). The dropped
a_lo b_lo is at most 2^-22 of a_i b_i. That is fp32 accuracy at tensor-core
speed, as ``input_precision="tf32x3"`` gives, with a cheaper split:

* Triton's "tf32x3" rounds both parts with ``cvt.rna.tf32.f32``, which has no
  native instruction on sm_80 or sm_90: ptxas expands it into a NaN/inf test, an
  add, a select and an AND (about ten instructions a value for the pair);
* here ``hi`` is x rounded half an ulp up to TF32 (an integer add and an AND on
  its bits) and ``lo`` the exact remainder x - hi with its low 13 bits cleared
  (an add, an AND): four instructions a value, as CUTLASS's FastF32 splits
  (big part round-half-ulp, small part toward zero), and as the CUDA kernels
  here do (csrc/bank_contrast_dense.cu, ``split_tf32``). Rounding ``hi`` to nearest
  gives ``lo`` either sign, so neither the dropped term nor ``lo``'s truncation
  leans one way across a dot's terms (a truncated ``hi`` would leave every ``lo``
  with x's sign, and a dropped a_lo b_lo of up to 2^-20 with the product's).
  |x| within 2^-12 of the float32 maximum rounds ``hi`` to infinity.

Both parts are exact TF32 values, so a "tf32" dot (which reads the top 19 bits of
each operand) multiplies them exactly, and so does Triton's interpreter, which
ignores the precision and multiplies in fp32: the CPU tests run this very split.
A loop-invariant operand (a query block) is split once, before its loop. Over
the three kernels that use it (bank contrast's dense strategy, the shared-bank
contrast, DCD) their main loops issue 17-38% fewer instructions than with
"tf32x3" (tools/aot_check.py --sass, sm_80 and sm_90, Triton 3.9).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def split_tf32(x, EXACT: tl.constexpr = False):
    """(hi, lo): fp32 ``x`` as two exact TF32 values, hi the nearest to x, with
    hi + lo = x to 2^-21 of x.
    EXACT: ``x`` is a TF32 value already (see tf32_exact); (x, x), the second unused."""
    hi = x
    lo = x
    if not EXACT:
        hi = ((x.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
        lo = ((x - hi).to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return hi, lo


@triton.jit
def dot_split(a_hi, a_lo, b_hi, b_lo, acc, A_EXACT: tl.constexpr = False, B_EXACT: tl.constexpr = False):
    """acc + a @ b from operands already split (split_tf32), in three tensor-core dots.
    An operand flagged exact is its own TF32 value (it was loaded from bf16 or fp16,
    whose mantissas fit in TF32's): its ``lo`` is zero and is neither read nor
    multiplied, which saves a dot."""
    if not B_EXACT:
        acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
    if not A_EXACT:
        acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
    return tl.dot(a_hi, b_hi, acc, input_precision="tf32")


@triton.jit
def dot_3xtf32(a, b, acc, A_EXACT: tl.constexpr = False, B_EXACT: tl.constexpr = False):
    """acc + a @ b for fp32 ``a`` and ``b``, to fp32 accuracy (flags as dot_split's)."""
    a_hi, a_lo = split_tf32(a, A_EXACT)
    b_hi, b_lo = split_tf32(b, B_EXACT)
    return dot_split(a_hi, a_lo, b_hi, b_lo, acc, A_EXACT, B_EXACT)


def tf32_exact(dtype) -> bool:
    """Whether every value of a torch dtype is a TF32 value (bf16, fp16: their
    mantissas have at most TF32's 10 bits, their exponents fit its 8)."""
    return dtype in (torch.bfloat16, torch.float16)
