"""rdkernels._C wrapper for the fused DCD loss: one call launches the five kernels of
csrc/dcd.cu (S and S^T, the log-sum-exps, the columns' statistics, with the gradient
dz_s and dz_t, and the sums)."""
from __future__ import annotations

import torch

from rdkernels.backend import cuda_extension
from rdkernels.ops._cuda_common import dtype_code, stream_of
from rdkernels.ops.dcd.buffers import dcd_outputs


def dcd_cuda(z_s, z_t, tau, bias, max_scale: float, alpha: float, need_grad: bool):
    """tau, bias: one-element fp32 tensors on the device. Returns (loss, grads): grads
    flat [dz_s | dz_t | d tau | d bias] (buffers.py), empty without need_grad."""
    batch, dim = z_s.shape
    ext = cuda_extension()
    # the extension lays out its scratch (S, S^T, a few floats a row) and says its size
    scratch = torch.empty(ext.dcd_scratch_bytes(batch) // 4, device=z_s.device, dtype=torch.float32)
    loss, grads = dcd_outputs(z_s, need_grad)
    # raw pointers into the flat gradient buffer (4 bytes a float): no view tensors to build
    # (0: the gradient's pointers, which a call without it neither has nor touches)
    g, bd = (grads.data_ptr() if need_grad else 0), batch * dim
    ext.dcd_loss(
        z_s.data_ptr(), z_t.data_ptr(), dtype_code(z_s), batch, dim, tau.data_ptr(), bias.data_ptr(),
        float(max_scale), float(alpha), scratch.data_ptr(),
        loss.data_ptr(), g, g and g + 4 * bd, g and g + 8 * bd, g and g + 8 * bd + 4, bool(need_grad),
        stream_of(z_s),
    )
    return loss, grads
