"""rdkernels._C wrapper for the fused DCD loss: one call launches the statistics
kernel, the gradient kernel (with the gradient) and the kernel that sums the
blocks' statistics (csrc/dcd.cu)."""
from __future__ import annotations

from rdkernels.backend import cuda_extension
from rdkernels.ops._cuda_common import dtype_code, stream_of
from rdkernels.ops.dcd.buffers import dcd_buffers

# Must match kDcdRows / kDcdMaxBatch / kDcdMaxDim in csrc/dcd.h.
ROWS = 16
MAX_BATCH = 1024
MAX_DIM = 256


def dcd_cuda(z_s, z_t, tau, bias, max_scale: float, alpha: float, need_grad: bool):
    """tau, bias: one-element fp32 tensors on the device. Returns (loss, grads): grads
    flat [dz_s | dz_t | d tau | d bias] (buffers.py), empty without need_grad."""
    batch, dim = z_s.shape
    buf = dcd_buffers(z_s, -(-batch // ROWS), need_grad)
    # raw pointers into the two flat buffers (4 bytes a float): no view tensors to build
    # (0: the gradient's buffers, which a call without it neither has nor touches)
    scratch, bd = buf.scratch.data_ptr(), batch * dim
    rck = scratch + 4 * buf.rck_at if need_grad else 0
    g = buf.grads.data_ptr() if need_grad else 0
    cuda_extension().dcd_loss(
        z_s.data_ptr(), z_t.data_ptr(), dtype_code(z_s), batch, dim, tau.data_ptr(), bias.data_ptr(),
        float(max_scale), float(alpha), scratch, rck,
        buf.loss.data_ptr(), g, g and g + 4 * bd, g and g + 8 * bd, g and g + 8 * bd + 4, bool(need_grad),
        stream_of(z_s),
    )
    return buf.loss, buf.grads
