"""How often each bank row is sampled as a negative of each query: the fused dense kernels' input.

For ``idx[B, K+1]`` (column 0 the positive), ``counts[b, j]`` is the number of
``k >= 1`` with ``idx[b, k] == j``. The dense kernels (Triton and CUDA) read
the counts of a (row block, bank tile) as one tile, beside the bank tile they
score, so a tile's multiplicities cost one independent load. (The per-row
CSR they walked before put a dependent chain of loads, a segment search and a
counting loop on every tile, and the counting loop, nested in the tile loop,
kept Triton from software-pipelining the bank loads.)

Layout: two 16-bit counts in each int32 word, bank row j in bits
``16 * (j % 2)`` of word ``j // 2``, each row of ``WORD_COLS`` words
padded to whole 64-row bank tiles (the CUDA kernel's tile; the Triton kernel's
32-row tiles divide it), so no tile load needs a column mask. A count is at
most K, so 16 bits are exact for K <= MAX_NEGATIVES; wider K runs the torch
dense formulation (see the callers).

Size: 2 bytes per (query, bank row), 6.4 MB at CIFAR-100 (B = 64, N = 50 000),
0.6% of the 1.1 GB the reference formulation gathers for a CRD step. It grows
with N where the CSR grew with K, so a call whose counts would pass
``CHUNK_BYTES`` runs in chunks of query rows (ImageNet's N = 1.28 M at B = 256,
where the cost model picks gather anyway).

Built by one atomic add per negative into a zeroed buffer (1 << 16 for an odd
row: the high half). Ids outside ``[0, n_bank)``, possible only with index
checks off, are dropped, never written out of bounds.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["CHUNK_BYTES", "MAX_NEGATIVES", "TILE_ROWS", "count_samples", "row_chunks", "unpack_counts",
           "words_per_row"]

TILE_ROWS = 64                 # bank rows a count row is padded to (the widest dense kernel tile)
MAX_NEGATIVES = (1 << 16) - 1  # counts are 16-bit
CHUNK_BYTES = 1 << 25          # counts of one chunk of query rows: at most 32 MB
BLOCK = 1024                   # negatives per program


def words_per_row(n_bank: int) -> int:
    """int32 words of one query row's counts: N rounded up to whole tiles, two rows a word."""
    return triton.cdiv(n_bank, TILE_ROWS) * TILE_ROWS // 2


def row_chunks(batch: int, n_bank: int, block_m: int) -> list[tuple[int, int]]:
    """Query-row ranges whose counts fit CHUNK_BYTES (whole kernel row blocks where
    one block fits): one range, all of B, at CIFAR-100."""
    per_row = 4 * words_per_row(n_bank)
    rows = max(1, CHUNK_BYTES // per_row)
    if rows >= block_m:
        rows -= rows % block_m
    return [(b0, min(batch, b0 + rows)) for b0 in range(0, batch, rows)]


@triton.jit
def sample_count_kernel(idx_ptr, counts_ptr, n_neg, n_bank, stride_idx, stride_counts, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = k < n_neg
    ids = tl.load(idx_ptr + row * stride_idx + 1 + k, mask=in_row, other=0)
    valid = in_row & (ids >= 0) & (ids < n_bank)
    one = tl.where((ids % 2) == 1, 1 << 16, 1)
    tl.atomic_add(counts_ptr + row * stride_counts + ids // 2, one, mask=valid, sem="relaxed")


def count_samples(idx: torch.Tensor, n_bank: int) -> torch.Tensor:
    """counts[B, words_per_row(n_bank)] int32, two 16-bit counts a word (see above), of
    the negatives ``idx[:, 1:]``. Needs K <= MAX_NEGATIVES. Runs on a GPU, or on
    CPU tensors under Triton's interpreter."""
    batch, n_cols = idx.shape
    if n_cols - 1 > MAX_NEGATIVES:
        raise ValueError(f"idx has {n_cols - 1} negatives a row; 16-bit counts hold at most {MAX_NEGATIVES}")
    counts = torch.zeros(batch, words_per_row(n_bank), device=idx.device, dtype=torch.int32)
    if n_cols > 1 and batch > 0:
        grid = (batch, triton.cdiv(n_cols - 1, BLOCK))
        sample_count_kernel[grid](idx, counts, n_cols - 1, n_bank, idx.stride(0), counts.stride(0), BLOCK=BLOCK,
                                  num_warps=4)
    return counts


def unpack_counts(counts: torch.Tensor, n_bank: int) -> torch.Tensor:
    """counts[B, N] int32 from the packed words (tests and debugging)."""
    low, high = counts & 0xFFFF, (counts >> 16) & 0xFFFF
    return torch.stack([low, high], dim=2).reshape(counts.shape[0], -1)[:, :n_bank]


def aot_variants() -> list[dict]:
    """The kernel for the int32 and int64 idx it takes."""
    return [dict(name=f"sample_count_kernel[idx={idx_t}]", kernel=sample_count_kernel,
                 signature={"idx_ptr": "*" + idx_t, "counts_ptr": "*i32", "n_neg": "i32", "n_bank": "i32",
                            "stride_idx": "i32", "stride_counts": "i32"},
                 constexprs=dict(BLOCK=BLOCK), num_warps=4, num_stages=1)
            for idx_t in ("i32", "i64")]
