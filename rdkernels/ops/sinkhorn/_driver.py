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


class _UniformMarginals:
    """Default (uniform) marginals and their logs, made once per (P, size, dtype,
    device) and never written, so that a call with default marginals launches
    no kernel to build them: a 64 x 64 problem is then one kernel launch.

    Nothing is cached while torch.compile traces or a CUDA graph is captured: a
    capture records the fill without running it, so the cached tensor would
    hold garbage for every later eager call.
    """

    def __init__(self, max_entries: int = 16):
        self.max_entries = max_entries
        self._entries: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, P: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return torch.full((P, size), 1.0 / size, dtype=dtype, device=device)
        key = (P, size, dtype, device)
        hit = self._entries.get(key)
        if hit is not None:
            return hit[0]
        with torch.inference_mode(False):  # a normal tensor even if first made under inference_mode
            a = torch.full((P, size), 1.0 / size, dtype=dtype, device=device)
        if not host_reads_allowed(a):
            return a
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))  # the oldest entry
        with torch.inference_mode(False):
            self._entries[key] = (a, a.log())
        return a

    def log_of(self, a: torch.Tensor) -> torch.Tensor:
        """log(a), from the cache when ``a`` is one of its marginals."""
        for u, log_u in self._entries.values():
            if u is a:
                return log_u
        return a.log()


uniform_marginals = _UniformMarginals()


def fused_buffers(cost, a, b, return_plan, zero_f=True):
    """What a one-launch kernel (Triton or CUDA) reads and writes: (log a, log b,
    f, g, cost, n_iters, plan or None). ``zero_f``: f starts at zero (the
    streamed Triton kernel reads it as the first iterate; the others only
    write it, and skip the fill)."""
    P, n, m = cost.shape
    f32 = dict(dtype=torch.float32, device=cost.device)
    plan = torch.empty(P, n, m, **f32) if return_plan else None
    f = torch.zeros(P, n, **f32) if zero_f else torch.empty(P, n, **f32)
    return (uniform_marginals.log_of(a), uniform_marginals.log_of(b), f, torch.empty(P, m, **f32),
            torch.empty(P, **f32), torch.empty(P, dtype=torch.int32, device=cost.device), plan)


def run_tiled(kernels, cost, a, b, eps, max_iters, tol, check_every, return_plan):
    """``kernels`` has rows(lb, G, F, Fn, a, err, done, check), cols(la, F, G, done) and
    plan_cost(la, lb, F, G, rowcost, plan); potentials are passed divided by eps."""
    P, n, m = cost.shape
    dev = cost.device
    la, lb = uniform_marginals.log_of(a), uniform_marginals.log_of(b)
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
