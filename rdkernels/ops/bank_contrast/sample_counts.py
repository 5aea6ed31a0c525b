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

Built by one atomic add per negative (1 << 16 for an odd row: the high half):
on the Triton backend into a zeroed buffer in global memory (triton_counts.py),
on the CUDA backend into a shared-memory histogram per (query row, chunk of the
row's words) that is then written out whole (csrc/sample_counts.cu: no memset,
no global atomics). Ids outside ``[0, n_bank)``, possible only with index checks
off, are dropped, never written out of bounds.

CRD scores one idx against two banks of one size (student and teacher
directions): inside :func:`shared_sample_counts` the second call reuses the
first's counts (same idx object, unmodified, same rows and bank size).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

import torch

__all__ = ["CHUNK_BYTES", "MAX_NEGATIVES", "TILE_ROWS", "count_samples", "row_chunks", "shared_sample_counts",
           "unpack_counts", "words_per_row"]

TILE_ROWS = 64                 # bank rows a count row is padded to (the widest dense kernel tile)
MAX_NEGATIVES = (1 << 16) - 1  # counts are 16-bit
CHUNK_BYTES = 1 << 25          # counts of one chunk of query rows: at most 32 MB

_SHARED = contextvars.ContextVar("rdkernels_shared_sample_counts", default=None)


@contextlib.contextmanager
def shared_sample_counts():
    """Within this block, counts of the same ``idx`` are built once. The memo keys on
    the tensor object (held, so its id stays unique), its version counter (an
    in-place write recounts), the rows and the bank size, and ends with the block."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def words_per_row(n_bank: int) -> int:
    """int32 words of one query row's counts: N rounded up to whole tiles, two rows a word."""
    return -(-n_bank // TILE_ROWS) * TILE_ROWS // 2


def row_chunks(batch: int, n_bank: int, block_m: int) -> list[tuple[int, int]]:
    """Query-row ranges whose counts fit CHUNK_BYTES (whole kernel row blocks where
    one block fits): one range, all of B, at CIFAR-100."""
    per_row = 4 * words_per_row(n_bank)
    rows = max(1, CHUNK_BYTES // per_row)
    if rows >= block_m:
        rows -= rows % block_m
    return [(b0, min(batch, b0 + rows)) for b0 in range(0, batch, rows)]


def count_samples(idx: torch.Tensor, n_bank: int, rows: tuple[int, int] | None = None,
                  build: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
    """counts[rows, words_per_row(n_bank)] int32, two 16-bit counts a word (see above),
    of the negatives ``idx[b0:b1, 1:]`` (all rows by default). Needs K <= MAX_NEGATIVES.
    ``build(idx_rows, n_bank)`` makes them: the Triton kernel by default (on a GPU, or
    on CPU tensors under Triton's interpreter), the CUDA backend passes its own."""
    if idx.shape[1] - 1 > MAX_NEGATIVES:
        raise ValueError(f"idx has {idx.shape[1] - 1} negatives a row; 16-bit counts hold at most {MAX_NEGATIVES}")
    if build is None:
        from rdkernels.ops.bank_contrast.triton_counts import count_samples_triton as build
    b0, b1 = rows if rows is not None else (0, idx.shape[0])
    memo = _SHARED.get()
    if memo is None:
        return build(idx[b0:b1], n_bank)
    key = (id(idx), idx._version, b0, b1, n_bank)
    if key not in memo:
        memo[key] = (idx, build(idx[b0:b1], n_bank))
    return memo[key][1]


def unpack_counts(counts: torch.Tensor, n_bank: int) -> torch.Tensor:
    """counts[B, N] int32 from the packed words (tests and debugging)."""
    low, high = counts & 0xFFFF, (counts >> 16) & 0xFFFF
    return torch.stack([low, high], dim=2).reshape(counts.shape[0], -1)[:, :n_bank]
