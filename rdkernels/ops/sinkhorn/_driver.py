"""Host loop of the tiled Sinkhorn path (problems with n or m > 256), shared by
the Triton and CUDA backends.

Each iteration is two launches: a row kernel (f update, and the per-row
marginal error when a tolerance is set) and a column kernel (g update). Which
problems have converged is tracked on the device in ``done`` (int32 [P]):
kernels skip finished problems, and the host reads the flags only once every
``check_every`` iterations to stop launching, so there is one host sync per
``check_every`` iterations rather than one per iteration. The stopping rule is
reference.py's, so every backend stops each problem at the same iteration.
"""
from __future__ import annotations

import torch

from rdkernels._validation import host_reads_allowed


def fused_buffers(cost, a, b, return_plan):
    """What a one-launch kernel (Triton or CUDA) reads and writes: (log a, log b,
    f, g, cost, n_iters, plan or None). f starts at zero (the streamed Triton
    kernel reads it as the first iterate)."""
    P, n, m = cost.shape
    f32 = dict(dtype=torch.float32, device=cost.device)
    plan = torch.empty(P, n, m, **f32) if return_plan else None
    return (a.log(), b.log(), torch.zeros(P, n, **f32), torch.empty(P, m, **f32), torch.empty(P, **f32),
            torch.empty(P, dtype=torch.int32, device=cost.device), plan)


def run_tiled(kernels, cost, a, b, eps, max_iters, tol, check_every, return_plan):
    """``kernels`` has rows(lb, G, F, Fn, a, err, done, check), cols(la, F, G, done) and
    plan_cost(la, lb, F, G, rowcost, plan); potentials are passed divided by eps."""
    P, n, m = cost.shape
    dev = cost.device
    la, lb = a.log(), b.log()
    F = torch.zeros(P, n, dtype=torch.float32, device=dev)
    Fn = torch.empty_like(F)
    G = torch.zeros(P, m, dtype=torch.float32, device=dev)
    err = torch.zeros(P, n, dtype=torch.float32, device=dev) if tol is not None else F
    done = torch.zeros(P, dtype=torch.int32, device=dev)
    n_iters = torch.zeros(P, dtype=torch.int32, device=dev)
    # no early exit while a CUDA graph is captured: finished problems are masked instead
    poll = host_reads_allowed(cost)
    for it in range(max_iters):
        check = tol is not None and it > 0
        kernels.rows(lb, G, F, Fn, a, err, done, check)
        if check:
            torch.logical_or(done.bool(), err.sum(dim=1) <= tol, out=done)  # no host sync
            if it % check_every == 0 and poll and bool(done.all()):
                break
            F = torch.where(done.bool()[:, None], F, Fn)
        else:
            F, Fn = Fn, F
        kernels.cols(la, F, G, done)
        n_iters += 1 - done
    rowcost = torch.empty(P, n, dtype=torch.float32, device=dev)
    plan = torch.empty(P, n, m, dtype=torch.float32, device=dev) if return_plan else None
    kernels.plan_cost(la, lb, F, G, rowcost, plan)
    return F * eps, G * eps, rowcost.sum(dim=1), plan, n_iters
