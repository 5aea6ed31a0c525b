"""PyTorch reference of the batched log-domain Sinkhorn solver (also the torch backend).

For P problems with cost C[P,n,m] and marginals a[P,n], b[P,m] (equal mass), it
solves entropic OT with POT's ``reg = eps``. Potentials follow geomloss:

    plan_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)

One iteration is the pair of log-domain updates

    f_i = -eps * LSE_j(log b_j + (g_j - C_ij) / eps)      (rows of the plan sum to a)
    g_j = -eps * LSE_i(log a_i + (f_i - C_ij) / eps)      (columns sum to b)

starting from f = g = 0. Stopping (shared by every backend, so all of them stop
at the same iteration): at the start of iteration k >= 1 the row update is
computed; it also gives the row-marginal L1 error of the current plan for free,

    err = sum_i |rowsum_i - a_i| = sum_i a_i |exp((f_i - f_new_i) / eps) - 1|,

and a problem whose err <= tol keeps its current (f, g) and stops; ``n_iters``
counts the completed (f, g) updates. The returned plan therefore has exact
column sums b and row sums within tol of a. With ``tol=None`` every problem
runs exactly ``max_iters`` iterations.

Arithmetic is float64 for a float64 cost, else float32 (bf16/fp16 costs are
converted first). The convergence test runs on the device every iteration; the
host looks at the per-problem "done" flags once every ``check_every``
iterations, so there is one host sync per ``check_every`` iterations.
"""
from __future__ import annotations

import torch

from rdkernels._validation import host_reads_allowed


def compute_dtype(cost: torch.Tensor) -> torch.dtype:
    return torch.float64 if cost.dtype == torch.float64 else torch.float32


def plan_from_potentials(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
                         eps: float) -> torch.Tensor:
    """plan = a_i b_j exp((f_i + g_j - C_ij) / eps), in f's dtype."""
    dt = f.dtype
    log_a = a.to(dt).log()
    log_b = b.to(dt).log()
    z = (f[:, :, None] + g[:, None, :] - cost.to(dt)) / eps
    return torch.exp(z + log_a[:, :, None] + log_b[:, None, :])


def sinkhorn_reference(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, max_iters: int,
                       tol: float | None = None, check_every: int = 10, return_plan: bool = False):
    """Returns (f[P,n], g[P,m], cost[P], plan[P,n,m] or None, n_iters[P] int32)."""
    dt = compute_dtype(cost)
    C = cost.to(dt)
    P, n, m = C.shape
    a = a.to(dt)
    b = b.to(dt)
    log_a = a.log()[:, :, None]  # -inf where a_i = 0: that row carries no mass
    log_b = b.log()[:, None, :]
    inv_eps = 1.0 / eps
    Cs = C * inv_eps
    F = torch.zeros(P, n, dtype=dt, device=C.device)  # f / eps
    G = torch.zeros(P, m, dtype=dt, device=C.device)  # g / eps
    done = torch.zeros(P, dtype=torch.bool, device=C.device)
    n_iters = torch.zeros(P, dtype=torch.int32, device=C.device)
    # no early exit while a CUDA graph is captured: finished problems are masked instead
    poll = host_reads_allowed(C)
    for it in range(max_iters):
        F_new = -torch.logsumexp(log_b + G[:, None, :] - Cs, dim=2)
        if tol is not None and it > 0:
            err = (a * torch.expm1(F - F_new).abs()).sum(dim=1)
            done = done | (err <= tol)
            if it % check_every == 0 and poll and bool(done.all()):
                break
            F = torch.where(done[:, None], F, F_new)
        else:
            F = F_new
        G_new = -torch.logsumexp(log_a + F[:, :, None] - Cs, dim=1)
        G = torch.where(done[:, None], G, G_new)
        n_iters += (~done).to(torch.int32)
    plan = torch.exp(log_a + log_b + F[:, :, None] + G[:, None, :] - Cs)
    total = (plan * C).sum(dim=(1, 2))
    return F * eps, G * eps, total, (plan if return_plan else None), n_iters
