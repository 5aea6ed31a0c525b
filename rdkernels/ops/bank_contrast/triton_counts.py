"""Triton kernel that builds the dense strategy's packed sample counts (layout: sample_counts.py).

One program per (query row, BLOCK negatives): each valid negative adds 1 to the
low half of word ``id // 2`` (even id) or 1 << 16 to its high half (odd id).
Relaxed atomics: only the final sums matter, and integer adds give the same
sums in any order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.ops._blocks import cdiv
from rdkernels.ops._compile_options import COMPILE_OPTIONS
from rdkernels.ops.bank_contrast.sample_counts import words_per_row

__all__ = ["count_samples_triton"]

BLOCK = 1024  # negatives per program


@triton.jit
def sample_count_kernel(idx_ptr, counts_ptr, n_neg, n_bank, stride_idx, stride_counts, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = k < n_neg
    ids = tl.load(idx_ptr + row * stride_idx + 1 + k, mask=in_row, other=0)
    valid = in_row & (ids >= 0) & (ids < n_bank)
    one = tl.where((ids % 2) == 1, 1 << 16, 1)
    tl.atomic_add(counts_ptr + row * stride_counts + ids // 2, one, mask=valid, sem="relaxed")


def count_samples_triton(idx: torch.Tensor, n_bank: int) -> torch.Tensor:
    """sample_counts.count_samples of all of idx's rows: zeroed words, one atomic add a negative."""
    batch, n_cols = idx.shape
    counts = torch.zeros(batch, words_per_row(n_bank), device=idx.device, dtype=torch.int32)
    if n_cols > 1 and batch > 0:
        grid = (batch, cdiv(n_cols - 1, BLOCK))
        sample_count_kernel[grid](idx, counts, n_cols - 1, n_bank, idx.stride(0), counts.stride(0), BLOCK=BLOCK,
                                  num_warps=4, **COMPILE_OPTIONS)
    return counts


def aot_variants() -> list[dict]:
    """The kernel for the int32 and int64 idx it takes."""
    return [dict(name=f"sample_count_kernel[idx={idx_t}]", kernel=sample_count_kernel,
                 signature={"idx_ptr": "*" + idx_t, "counts_ptr": "*i32", "n_neg": "i32", "n_bank": "i32",
                            "stride_idx": "i32", "stride_counts": "i32"},
                 constexprs=dict(BLOCK=BLOCK), num_warps=4, num_stages=1)
            for idx_t in ("i32", "i64")]
