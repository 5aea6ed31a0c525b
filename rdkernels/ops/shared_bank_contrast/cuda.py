"""rdkernels._C wrapper for the shared-bank contrast: one call launches the
per-split kernel and the kernel that merges the splits into loss and dq_s."""
from __future__ import annotations

from rdkernels.backend import cuda_extension
from rdkernels.ops._cuda_common import dtype_code, stream_of
from rdkernels.ops.shared_bank_contrast.splits import LOG2E, num_splits_cuda, split_buffers

# Must match kSbcRowsPerBlock / kSbcTile / kSbcMaxDim in csrc/shared_bank_contrast.h.
ROWS_PER_BLOCK = 16
TILE = 32
MAX_DIM = 512


def shared_bank_contrast_cuda(q_s, q_t, queue, tau_s: float, tau_t: float, need_grad: bool):
    batch, dim = q_s.shape
    n_rows = queue.shape[0]
    splits, rows_per_split = num_splits_cuda(batch, n_rows, ROWS_PER_BLOCK, TILE, q_s.device)
    scratch, acc_at, loss, dq = split_buffers(batch, dim, splits, need_grad, q_s.device)
    stats = scratch.data_ptr()
    cuda_extension().shared_bank_contrast(
        q_s.data_ptr(), q_t.data_ptr(), dtype_code(q_s), queue.data_ptr(), dtype_code(queue),
        batch, n_rows, dim, splits, rows_per_split, LOG2E / tau_s, LOG2E / tau_t, 1.0 / tau_s,
        stats, stats + 4 * acc_at if need_grad else stats, loss.data_ptr(), dq.data_ptr() if need_grad else 0,
        bool(need_grad), stream_of(q_s),
    )
    return loss, dq
