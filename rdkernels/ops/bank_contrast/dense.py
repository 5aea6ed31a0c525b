"""Dense strategy for bank contrast: score the queries against the whole bank.

When B*K is large against N (CIFAR-100: B=64, K=16384, N=50 000, every bank
row sampled ~21 times a step), reading the bank once and scoring every
(query, bank row) pair with a matrix multiply moves ~20x fewer bytes than
gathering the B*(K+1) sampled rows. The sampled columns are then applied as
multiplicities: for query row b,

    softmax:  lse_b = log( exp(s[b, pos_b]) + sum_j neg(b, j) * exp(s[b, j]) )
    nce:      loss_b = pos_term(s[b, pos_b]) + sum_j neg(b, j) * neg_term(s[b, j])
    dq_b      = sum_j coef(b, j) * M[j] / T

where neg(b, j) is how many of idx[b, 1:] equal j. Column 0 (the positive) is
always handled apart, by one gathered row per query, so a positive that also
appears among the negatives is counted exactly as the gather strategy counts
it (once as the positive, once per negative occurrence).

Multiplicities. The fused kernels (Triton and CUDA) read neg(b, j) from a
packed [B, N] count matrix, two 16-bit counts an int32 word
(sample_counts.py): 2 bytes a (query, bank row) pair, 6.4 MB at CIFAR-100,
built by one atomic add per negative. A bank tile's counts are then one load
beside the bank tile, which is what lets the tile loop be software-pipelined.
Counts are exact up to K = 65 535 negatives a row; wider K, and rows wider
than the kernels take, run the torch formulation below.

This module holds the pure-PyTorch dense formulation (the torch backend's
dense strategy and the best pure-PyTorch formulation of the op: a matmul of
the queries with the bank, a gather of scalar scores at idx, a closed-form
epilogue, then dq from the score gradients: scatter-add + a second matmul on
a GPU, a weighted embedding_bag on a CPU) and the split layout shared by the
Triton and CUDA dense kernels (merged by triton_merge.py).
"""
from __future__ import annotations

import torch

from rdkernels.ops._splits import SplitSweep, split_tiles, splits_wanted
from rdkernels.ops.bank_contrast.partials import split_buffers
from rdkernels.ops.bank_contrast.reference import nce_constants
from rdkernels.ops.bank_contrast.sample_counts import MAX_NEGATIVES, TILE_ROWS, count_samples, row_chunks

__all__ = ["bank_contrast_loss_dense_torch", "bank_scores_dense_torch", "bank_scores_backward_dense_torch",
           "fused_dense_takes", "run_fused_dense"]

_CHUNK_ELEMS = 1 << 24  # fp32 elements of one [rows, N] score chunk (64 MB)


def _row_chunks(batch: int, n_bank: int):
    step = max(1, _CHUNK_ELEMS // max(1, n_bank))
    for start in range(0, batch, step):
        yield start, min(batch, start + step)


def _bank_f32(bank: torch.Tensor) -> torch.Tensor:
    # fp32 scores from a bf16 bank: a bf16 GEMM would round the scores to bf16.
    return bank if bank.dtype == torch.float32 else bank.float()


def _epilogue_grad(s: torch.Tensor, epilogue: str, log_z, n_data: int):
    """(row_loss[b], d row_loss / d s[b, k]) from the gathered scalar scores s[b, K+1].

    Few full passes over s (it is B*(K+1) elements): every column is first
    treated as a negative, then column 0 is corrected on a [B] vector.
    """
    s0 = s[:, 0].clone()
    if epilogue == "softmax":
        top = s.amax(dim=1, keepdim=True)
        g = s.sub_(top).exp_()                       # s is a scratch gather: reuse it
        total = g.sum(dim=1)
        loss = top.squeeze(1) + total.log() - s0
        g.div_(total[:, None])
        g[:, 0] -= 1.0
        return loss, g
    log_c, log_mpn_c = nce_constants(s.shape[1] - 1, n_data)
    t = s.sub_(log_z + log_c)                        # log x - log c, every column
    loss = torch.nn.functional.softplus(t).sum(dim=1) - (s.shape[1] - 1) * log_mpn_c
    t0 = t[:, 0].clone()
    g = torch.sigmoid_(t)
    # column 0 is the positive: its term is softplus(-t0), its gradient -sigmoid(-t0)
    loss += torch.nn.functional.softplus(-t0) - torch.nn.functional.softplus(t0)
    g[:, 0] = -torch.sigmoid(-t0)
    return loss, g


def _weighted_rows(g, idx_l, m, scores):
    """sum_k g[b, k] * m[idx[b, k]] for a chunk of rows (repeated ids add up).

    On a GPU: scatter-add g into the [rows, N] buffer ``scores`` (no longer
    needed) and one GEMM with the bank (reads the bank once, tensor cores). On a
    CPU, where a GEMM of [rows, N] x [N, d] costs far more than its bytes,
    ``embedding_bag`` with per-sample weights sums the sampled rows without
    materialising them (B*K*d multiply-adds instead of B*N*d).
    """
    if m.device.type == "cpu":
        return torch.nn.functional.embedding_bag(idx_l, m, per_sample_weights=g, mode="sum")
    return torch.mm(scores.zero_().scatter_add_(1, idx_l, g), m)


def bank_contrast_loss_dense_torch(query, bank, idx, z, temperature, epilogue, n_data):
    """Dense torch formulation of the nce/softmax epilogues: (row_loss[B], dq[B, d]) fp32.

    Per chunk of query rows (at most 16 M scores): S = q M^T / T (one GEMM over
    the whole bank), s = S[idx] (a gather of scalar scores), the epilogue on s
    in closed form, then dq = sum_k (d loss / d s[b, k]) M[idx[b, k]] / T
    (see _weighted_rows). Repeated ids are gathered and summed once per
    occurrence, so duplicates count with multiplicity.
    """
    q = query.float()
    m = _bank_f32(bank)
    idx_l = idx.long()
    inv_t = 1.0 / temperature
    log_z = z.float().reshape(()).log() if epilogue == "nce" else None
    loss = torch.empty(q.shape[0], device=q.device, dtype=torch.float32)
    dq = torch.empty_like(q)
    q_t = q * inv_t          # scale the B x d queries, not the B x N scores
    for b0, b1 in _row_chunks(q.shape[0], m.shape[0]):
        scores = torch.mm(q_t[b0:b1], m.t())
        s = scores.gather(1, idx_l[b0:b1])
        loss[b0:b1], g = _epilogue_grad(s, epilogue, log_z, n_data)
        dq[b0:b1] = _weighted_rows(g, idx_l[b0:b1], m, scores).mul_(inv_t)
    return loss, dq


def bank_scores_dense_torch(query, bank, idx, temperature):
    """s[B, K+1] = (q M^T / T)[idx], per chunk of query rows."""
    q = query.float()
    m = _bank_f32(bank)
    out = torch.empty(idx.shape, device=q.device, dtype=torch.float32)
    idx_l = idx.long()
    for b0, b1 in _row_chunks(q.shape[0], m.shape[0]):
        out[b0:b1] = torch.mm(q[b0:b1], m.t()).gather(1, idx_l[b0:b1])
    return out.mul_(1.0 / temperature)


def bank_scores_backward_dense_torch(grad_scores, bank, idx, temperature):
    """dq = sum_k grad_scores[b, k] M[idx[b, k]] / T, per chunk of query rows."""
    m = _bank_f32(bank)
    g = grad_scores.float()
    idx_l = idx.long()
    batch = idx.shape[0]
    dq = torch.empty(batch, m.shape[1], device=m.device, dtype=torch.float32)
    for b0, b1 in _row_chunks(batch, m.shape[0]):
        buf = None if m.device.type == "cpu" else torch.empty(b1 - b0, m.shape[0], device=m.device)
        dq[b0:b1] = _weighted_rows(g[b0:b1].contiguous(), idx_l[b0:b1], m, buf)
    return dq.mul_(1.0 / temperature)


# ------------------------------------------------ shared by the fused dense kernels

_sweep = SplitSweep()   # dense_split_count's forced count and record


def dense_splits(m_blocks: int, n_tiles: int, device: torch.device) -> tuple[int, int]:
    """(splits, bank tiles per split) of the fused dense kernels (Triton and CUDA):
    about two programs per SM (ops/_splits.py). At CIFAR-100's B = 64 that is 264
    splits for the CUDA kernel (64 query rows a block) and 66 for Triton's (16), and
    the merge reads [B, splits, d] fp32 partials back: on an H100 the merge of one
    program a row took 20 us a call after the CUDA kernel, 7 after Triton's. It now
    runs a program per 32 columns of a row (triton_merge.py; not yet timed), and
    benchmarks/splits.py sweeps the count."""
    splits = split_tiles(n_tiles, _sweep.want(splits_wanted(m_blocks, device, programs_per_sm=2)))
    _sweep.record(splits[0])
    return splits


def dense_split_count(count: int | None = None):
    """Within this ``with`` block the fused dense kernels cut the bank into ``count``
    splits (whole tiles, at most one a tile; None: the heuristic's); it yields the
    list of the counts each launch used. For benchmarks/splits.py, which times several."""
    return _sweep.forcing(count)


def fused_dense_takes(n_cols: int) -> bool:
    """The fused kernels' 16-bit counts hold this K (n_cols = K + 1)."""
    return n_cols - 1 <= MAX_NEGATIVES


def run_fused_dense(launch, query, bank, idx, code: int, block_m: int, block_n: int, build_counts=None):
    """Count the samples (with ``build_counts``, see count_samples) and run a fused
    dense kernel over every chunk of query rows.

    ``launch(rows, counts, parts, grid, n_tiles, tiles_per_split)`` runs the kernel on
    query rows ``rows`` (a slice) with their counts and the same rows of the split
    buffers ``parts`` (loss, dq, max, sum; None where the epilogue writes none).
    Every chunk has the same number of splits, so the buffers are allocated once
    and merged once. Returns the buffers.
    """
    assert TILE_ROWS % block_n == 0, "count rows are padded to TILE_ROWS"
    batch, n_bank, dim = query.shape[0], bank.shape[0], bank.shape[1]
    chunks = row_chunks(batch, n_bank, block_m)
    n_tiles = -(-n_bank // block_n)
    m_blocks = -(-(chunks[0][1] - chunks[0][0]) // block_m)
    n_splits, per = dense_splits(m_blocks, n_tiles, query.device)
    parts = split_buffers(code, batch, n_splits, dim, query.device)
    for b0, b1 in chunks:
        counts = count_samples(idx, n_bank, (b0, b1), build_counts)
        chunk_parts = tuple(None if p is None else p[b0:b1] for p in parts)
        launch(slice(b0, b1), counts, chunk_parts, (-(-(b1 - b0) // block_m), n_splits), n_tiles, per)
    return parts
