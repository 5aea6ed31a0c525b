"""rdkernels._C wrappers for bank contrast (gather and dense strategies).

The kernels take a float32 query (converting B*d elements here costs nothing
next to the bank traffic) and write per-(row, split) partials in the Triton
kernels' layout, merged as the Triton backend merges them, by one launch of
the Triton merge kernel (triton_merge.py), a linear pass over [B, K] or
[B, splits, d] that the two backends share, so this backend needs Triton as
well (rdkernels.backend checks). The dense kernel's sample counts are this
backend's own (csrc/sample_counts.cu: a shared-memory histogram per query row
and chunk, no zeroed buffer).
The dense kernel covers d <= 128 (its dq accumulator lives in registers) on
GPUs that give a block its shared memory; wider rows, and other GPUs, run the
pure-PyTorch dense formulation instead (cuBLAS GEMMs + gathered scalar
scores, dense.py): a documented composition with the same math.
"""
from __future__ import annotations

import torch

from rdkernels.backend import cuda_extension
from rdkernels.ops._cuda_common import dtype_code, kernel_shortfall, stream_of
from rdkernels.ops._splits import split_tiles, splits_wanted
from rdkernels.ops.bank_contrast.dense import bank_contrast_loss_dense_torch, fused_dense_takes, run_fused_dense
from rdkernels.ops.bank_contrast.partials import EPILOGUE_CODES as _EPILOGUES
from rdkernels.ops.bank_contrast.partials import NCE, SCORES, SCORES_BWD, gather_buffers
from rdkernels.ops.bank_contrast.reference import nce_constants
from rdkernels.ops.bank_contrast.sample_counts import words_per_row
from rdkernels.ops.bank_contrast.triton_merge import merge_gather_partials, merge_partials_triton

_GATHER_THREADS = 128


def _gather_splits(batch: int, n_cols: int, device: torch.device) -> tuple[int, int]:
    """(splits, columns per split): about four blocks per SM (ops/_splits.py), >= 64
    columns each."""
    return split_tiles(n_cols, min(-(-n_cols // 64), splits_wanted(batch, device, programs_per_sm=4)))


def _gather(code, query, bank, idx, *, temperature, z=None, grad=None, n_data=1):
    batch, n_cols = idx.shape
    dim = query.shape[1]
    q = query.float().contiguous()
    n_splits, cols = _gather_splits(batch, n_cols, query.device)
    out, dq, run_max, run_sum = gather_buffers(code, batch, n_cols, n_splits, dim, query.device)
    log_c, log_mpn_c = nce_constants(n_cols - 1, n_data) if code == NCE else (0.0, 0.0)
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    cuda_extension().bank_contrast(
        q.data_ptr(), bank.data_ptr(), dtype_code(bank), idx.data_ptr(), dtype_code(idx), ptr(z), ptr(grad),
        ptr(out), ptr(dq), ptr(run_max), ptr(run_sum), batch, n_cols, dim, cols, n_splits,
        bank.stride(0), idx.stride(0), 1.0 / temperature, log_c, log_mpn_c, code, stream_of(query))
    return out, dq, run_max, run_sum


def bank_contrast_loss_cuda(query, bank, idx, z, temperature, epilogue, n_data):
    """(row_loss[B], dq[B, d]) fp32, gather strategy."""
    parts = _gather(_EPILOGUES[epilogue], query, bank, idx, temperature=temperature, z=z, n_data=n_data)
    return merge_gather_partials(epilogue, query, bank, idx, z, temperature, n_data, *parts)


def bank_scores_cuda(query, bank, idx, temperature):
    return _gather(SCORES, query, bank, idx, temperature=temperature)[0]


def bank_scores_backward_cuda(grad_scores, query, bank, idx, temperature):
    grad = grad_scores.float().contiguous()
    return _gather(SCORES_BWD, query, bank, idx, temperature=temperature, grad=grad)[1].sum(dim=1)


def _count_chunk_words(batch: int, words: int, device: torch.device, most: int) -> int:
    """Words of a row one block of the count kernel histograms: about two blocks an SM
    over the batch's rows (each block reads its row's negatives whole), at least 256
    words a block, at most ``most`` (the kernel's 48 KB of shared memory)."""
    chunks = min(splits_wanted(batch, device, programs_per_sm=2), -(-words // 256))
    chunks = max(chunks, -(-words // most), 1)
    return -(-words // chunks)


# Each block of the count kernel reads its row's negatives whole, so a row cut into c
# chunks is read c times (from L2 after the first). Past this many chunks of the
# kernel's largest (banks over 98 304 rows) the Triton kernel's one global atomic a
# negative reads them once and costs less.
MAX_COUNT_CHUNKS = 4


def count_samples_cuda(idx: torch.Tensor, n_bank: int) -> torch.Tensor:
    """sample_counts.count_samples of all of idx's rows, on the CUDA backend: every word
    written by the kernel, so the buffer is not zeroed first (Triton's kernel for
    banks too large for a few histograms a row, see MAX_COUNT_CHUNKS)."""
    batch, n_cols = idx.shape
    words = words_per_row(n_bank)
    most = cuda_extension().sample_count_max_chunk_words()
    if words > MAX_COUNT_CHUNKS * most:
        from rdkernels.ops.bank_contrast.triton_counts import count_samples_triton
        return count_samples_triton(idx, n_bank)
    counts = torch.empty(batch, words, device=idx.device, dtype=torch.int32)
    if batch == 0:
        return counts
    if idx.stride(1) != 1:
        idx = idx.contiguous()
    chunk_words = _count_chunk_words(batch, words, idx.device, most)
    cuda_extension().sample_counts(idx.data_ptr(), dtype_code(idx), counts.data_ptr(), batch, n_cols - 1, n_bank,
                                   idx.stride(0), counts.stride(0), words, chunk_words, stream_of(idx))
    return counts


def dense_kernel_shortfall(device: torch.device, dim: int) -> str | None:
    """Why the dense CUDA kernel cannot take width ``dim`` on ``device``, or None. At
    d <= 128 it needs 84 992 B of shared memory per block (an sm_86/89/120 block may
    have 101 376 B), so a GPU that gives less goes to the torch path, not a failed launch."""
    ext = cuda_extension()
    if dim > ext.dense_max_dim():
        return f"embedding width {dim} > {ext.dense_max_dim()}"
    return kernel_shortfall(device, "dense", dim)


def bank_contrast_loss_dense_cuda(query, bank, idx, z, temperature, epilogue, n_data):
    """(row_loss[B], dq[B, d]) fp32, dense strategy (tensor cores, 3xTF32)."""
    ext = cuda_extension()
    n_cols = idx.shape[1]
    n_bank, dim = bank.shape
    if dense_kernel_shortfall(query.device, dim) is not None or not fused_dense_takes(n_cols):
        return bank_contrast_loss_dense_torch(query, bank, idx, z, temperature, epilogue, n_data)
    code = _EPILOGUES[epilogue]
    log_c, log_mpn_c = nce_constants(n_cols - 1, n_data) if code == NCE else (0.0, 0.0)
    q = query.float().contiguous()
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731

    def launch(rows, counts, parts, grid, n_tiles, per):
        loss_parts, dq_parts, max_parts, sum_parts = parts
        ext.bank_contrast_dense(
            q[rows].data_ptr(), bank.data_ptr(), dtype_code(bank), counts.data_ptr(), ptr(z), ptr(loss_parts),
            dq_parts.data_ptr(), ptr(max_parts), ptr(sum_parts), counts.shape[0], n_bank, dim, n_tiles, per, grid[1],
            bank.stride(0), counts.stride(0), 1.0 / temperature, log_c, log_mpn_c, code, stream_of(query))

    parts = run_fused_dense(launch, query, bank, idx, code, ext.dense_block_m(), ext.dense_block_n(),
                            build_counts=count_samples_cuda)
    return merge_partials_triton(epilogue, query, bank, idx, z, temperature, n_data, *parts, positive_in_parts=False)
