"""rdkernels._C wrapper for the fused DCD loss."""
from __future__ import annotations

import torch

from rdkernels.backend import cuda_extension
from rdkernels.ops._cuda_common import dtype_code, stream_of
from rdkernels.ops.dcd.merge import finish

# Must match kDcdRows / kDcdMaxBatch / kDcdMaxDim in csrc/dcd.h.
ROWS = 16
MAX_BATCH = 1024
MAX_DIM = 256


def dcd_cuda(z_s, z_t, params, alpha: float, need_grad: bool):
    batch, dim = z_s.shape
    blocks = -(-batch // ROWS)
    dev = z_s.device
    stats = torch.empty(blocks, 4, device=dev, dtype=torch.float32)
    if need_grad:
        local = torch.empty(2, batch, dim, device=dev, dtype=torch.float32)
        part = torch.empty(2, blocks, batch, dim, device=dev, dtype=torch.float32)
    else:
        local = part = stats
    cuda_extension().dcd_loss(
        z_s.data_ptr(), z_t.data_ptr(), dtype_code(z_s), batch, dim, params.data_ptr(), float(alpha),
        stats.data_ptr(), local.data_ptr(), part.data_ptr(), bool(need_grad), stream_of(z_s),
    )
    return finish(stats, local if need_grad else None, part if need_grad else None, params, alpha, batch)
