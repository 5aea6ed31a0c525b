"""rdkernels._C wrapper for the batched Sinkhorn solver (csrc/sinkhorn.cu)."""
from __future__ import annotations

import os

import torch

from rdkernels.backend import cuda_extension
from rdkernels.ops._cuda_common import dtype_code, stream_of
from rdkernels.ops.sinkhorn._driver import fused_buffers, run_tiled

FUSED_MAX = 256  # n, m <= this: one launch, one CTA per problem, every iteration
REGISTER_MAX = 128  # n, m <= this: the register-resident kernel can run it (see registers_enabled)
REGISTERS_ENV = "RDKERNELS_SINKHORN_REGISTERS"


def registers_enabled() -> bool:
    """Whether n, m <= 128 problems take the register-resident kernel
    (csrc/sinkhorn.cu, 16 warps per problem, two barriers per iteration) rather
    than the shared-memory one (on by default; RDKERNELS_SINKHORN_REGISTERS=0
    turns it off). A column update there is a chain of n / 16 dependent
    log-sum-exp steps per thread and a merge of 16 partials, where the
    shared-memory kernel walks all n rows in one thread per column. It has passed
    the tests on the CPU emulation of the kernels (three thread orders,
    AddressSanitizer), not yet on a GPU, and has not been timed on one."""
    return os.environ.get(REGISTERS_ENV, "1") != "0"


class _CudaTiled:
    """The tiled path's kernels, in the interface _driver.run_tiled expects."""

    def __init__(self, cost, inv_eps):
        self.ext = cuda_extension()
        self.cost, self.code, self.inv_eps = cost, dtype_code(cost), float(inv_eps)
        self.P, self.n, self.m = cost.shape
        self.stream = stream_of(cost)

    def rows(self, lb, G, F, Fn, a, err, done, check):
        self.ext.sinkhorn_rows(self.cost.data_ptr(), self.code, lb.data_ptr(), G.data_ptr(), F.data_ptr(),
                               Fn.data_ptr(), a.data_ptr(), err.data_ptr(), done.data_ptr(), self.P, self.n,
                               self.m, self.inv_eps, bool(check), self.stream)

    def cols(self, la, F, G, done):
        self.ext.sinkhorn_cols(self.cost.data_ptr(), self.code, la.data_ptr(), F.data_ptr(), G.data_ptr(),
                               done.data_ptr(), self.P, self.n, self.m, self.inv_eps, self.stream)

    def plan_cost(self, la, lb, F, G, rowcost, plan):
        self.ext.sinkhorn_plan_cost(self.cost.data_ptr(), self.code, la.data_ptr(), lb.data_ptr(), F.data_ptr(),
                                    G.data_ptr(), rowcost.data_ptr(), 0 if plan is None else plan.data_ptr(),
                                    self.P, self.n, self.m, self.inv_eps, self.stream)


def sinkhorn_cuda(cost, a, b, eps, max_iters, tol=None, check_every=10, return_plan=False):
    """Same contract as sinkhorn_reference; cost contiguous fp32/bf16/fp16 on a CUDA
    device, which the op body (``op_body``) has made current: the extension
    launches on the current device and sizes shared memory for it."""
    a = a.to(torch.float32).contiguous()
    b = b.to(torch.float32).contiguous()
    P, n, m = cost.shape
    if n > FUSED_MAX or m > FUSED_MAX:
        return run_tiled(_CudaTiled(cost, 1.0 / eps), cost, a, b, eps, max_iters, tol, check_every, return_plan)
    la, lb, f, g, total, n_iters, plan = fused_buffers(cost, a, b, return_plan, zero_f=False)  # f: written only
    cuda_extension().sinkhorn(cost.data_ptr(), dtype_code(cost), la.data_ptr(), lb.data_ptr(), a.data_ptr(),
                              f.data_ptr(), g.data_ptr(), total.data_ptr(), 0 if plan is None else plan.data_ptr(),
                              n_iters.data_ptr(), P, n, m, float(eps), float(tol) if tol is not None else 0.0,
                              max_iters, tol is not None, registers_enabled(), stream_of(cost))
    return f, g, total, plan, n_iters
