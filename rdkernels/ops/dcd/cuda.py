"""rdkernels._C wrapper for the fused DCD loss: one call launches the kernel and
the kernel that sums its per-block partials into the outputs."""
from __future__ import annotations

from rdkernels.backend import cuda_extension
from rdkernels.ops._cuda_common import dtype_code, stream_of
from rdkernels.ops.dcd.buffers import dcd_buffers

# Must match kDcdRows / kDcdMaxBatch / kDcdMaxDim in csrc/dcd.h.
ROWS = 16
MAX_BATCH = 1024
MAX_DIM = 256


def dcd_cuda(z_s, z_t, params, max_scale: float, alpha: float, need_grad: bool):
    """params: fp32 [2] = (tau, bias) on the device. Returns (loss, dz_s, dz_t,
    d tau, d bias); the last four empty without need_grad."""
    batch, dim = z_s.shape
    scratch, out = dcd_buffers(z_s, -(-batch // ROWS), need_grad)
    ptr = lambda t: t.data_ptr() if need_grad else 0  # noqa: E731
    cuda_extension().dcd_loss(
        z_s.data_ptr(), z_t.data_ptr(), dtype_code(z_s), batch, dim, params.data_ptr(), float(max_scale),
        float(alpha), scratch["stats"].data_ptr(), scratch["local"].data_ptr(), scratch["part"].data_ptr(),
        out[0].data_ptr(), ptr(out[1]), ptr(out[2]), ptr(out[3]), ptr(out[4]), bool(need_grad), stream_of(z_s),
    )
    return out
