"""sinkhorn: batched log-domain entropic optimal transport.

    res = sinkhorn(cost[P,n,m], a=None, b=None, eps=0.05, max_iters=100, tol=None)
    res.f[P,n], res.g[P,m]      dual potentials, plan_ij = a_i b_j exp((f_i + g_j - C_ij)/eps)
    res.cost[P]                 <plan, C> (the entropy term excluded)
    res.plan[P,n,m]             only with return_plan=True
    res.n_iters[P]              (f, g) updates each problem ran

``eps`` is POT's ``reg``. Iteration, stopping rule and potentials are defined in
``reference.py``; every backend follows the same rule (fp32 rounding can move a
borderline early stop by one iteration).

Gradient: only ``res.cost`` is differentiable, and only with respect to
``cost``. The converged plan is treated as a constant, d res.cost / d C = plan
(by the envelope theorem this is the exact gradient of the entropic OT value
<a, f> + <b, g>); the iterations are never unrolled through autograd. ``a``
and ``b`` get no gradient; f, g and the plan are returned detached.

Backends: the torch reference; Triton and CUDA kernels that run every
iteration of a problem in one launch (one program / CTA per problem) when
n, m <= 256, and a tiled path (two launches per iteration) for larger
problems. float64 costs always run the reference (the kernels compute in fp32).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from rdkernels import backend as _backend
from rdkernels._validation import as_real, check_positive, check_positive_int, check_tensor, host_reads_allowed
from rdkernels.ops._eager import eager_or_compiled, op_body
from rdkernels.ops.sinkhorn._driver import uniform_marginals
from rdkernels.ops.sinkhorn.reference import plan_from_potentials, sinkhorn_reference

__all__ = ["SinkhornResult", "sinkhorn", "sinkhorn_reference", "plan_from_potentials"]

COST_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
MARGINAL_DTYPES = (torch.float32, torch.float64)
# Relative tolerance on sum(a) == sum(b).
MASS_RTOL = 1e-5
_MAX_ITERS = 2**31 - 1  # the CUDA kernels count iterations in int32


class SinkhornResult(NamedTuple):
    f: torch.Tensor
    g: torch.Tensor
    cost: torch.Tensor
    plan: Optional[torch.Tensor]
    n_iters: torch.Tensor


def _marginal(name: str, x, P: int, size: int, ref: torch.Tensor) -> torch.Tensor:
    dt = torch.float64 if ref.dtype == torch.float64 else torch.float32
    if x is None:
        return uniform_marginals.get(P, size, dt, ref.device)
    check_tensor(name, x, dtypes=MARGINAL_DTYPES, device=ref.device, contiguous=False)
    if x.dim() == 1:
        if x.shape[0] != size:
            raise ValueError(f"{name} has {x.shape[0]} entries but the cost has {size} in that dimension")
        x = x.expand(P, size)
    elif x.dim() == 2:
        if tuple(x.shape) != (P, size):
            raise ValueError(f"{name} must have shape ({P}, {size}) (or ({size},)), got {tuple(x.shape)}")
    else:
        raise ValueError(f"{name} must have 1 or 2 dimensions, got shape {tuple(x.shape)}")
    return x.to(dt).contiguous()


def check_tol(tol) -> None:
    """The early-stop tolerance: None (run max_iters) or a finite number >= 0."""
    if tol is not None and not 0 <= as_real("tol", tol) < math.inf:
        raise ValueError(f"tol must be None or a finite number >= 0, got {tol!r}")


def _validate(cost, a, b, eps, max_iters, tol, check_every, check_inputs=True):
    check_tensor("cost", cost, ndim=3, dtypes=COST_DTYPES, contiguous=False)
    P, n, m = cost.shape
    if n * m >= 2**31:
        raise ValueError(f"cost has {n} x {m} entries per problem; at most 2**31 - 1 are supported")
    check_positive("eps", eps)
    if check_positive_int("max_iters", max_iters) > _MAX_ITERS:
        raise ValueError(f"max_iters must be at most {_MAX_ITERS}, got {max_iters!r}")
    check_positive_int("check_every", check_every)
    check_tol(tol)
    given = [name for name, x in (("a", a), ("b", b)) if x is not None]
    a = _marginal("a", a, P, n, cost)
    b = _marginal("b", b, P, m, cost)
    # Value checks cost one host sync (all of them); they guard against silent NaNs. Under
    # torch.compile they cannot run here (a host read breaks the graph), so the op
    # makes them inside its opaque body instead.
    if check_inputs and not torch.compiler.is_compiling():
        _check_values(cost, a, b, bool(given))
    return a, b


@torch.no_grad()  # reads values only; a marginal that requires grad must not warn about float(tensor)
def _check_values(cost, a, b, marginals: bool) -> None:
    """Finite costs; with ``marginals``, finite nonnegative a, b of equal positive mass.
    Uniform marginals (a, b = None) are valid by construction and skip theirs.
    Every check is computed on the device and read back in one host sync."""
    if not host_reads_allowed(cost):  # capturing a CUDA graph: see host_reads_allowed
        return
    checks = {"cost holds NaN or inf entries; every cost must be finite": torch.isfinite(cost).all()}
    if marginals:
        for name, x in (("a", a), ("b", b)):
            checks[f"{name} holds NaN or inf entries"] = torch.isfinite(x).all()
            checks[f"{name} holds negative entries; marginals must be nonnegative"] = (x >= 0).all()
        mass_a, mass_b = a.sum(dim=1), b.sum(dim=1)
        for name, mass in (("a", mass_a), ("b", mass_b)):
            checks[f"{name} has a problem with zero total mass; every marginal needs positive mass"] = (mass > 0).all()
        rel = ((mass_a - mass_b).abs() / torch.maximum(mass_a, mass_b)).max()
    values = torch.stack([ok.to(torch.float64) for ok in checks.values()]
                         + ([rel.to(torch.float64)] if marginals else [])).tolist()
    for message, ok in zip(checks, values):   # in order: the first failed check is the one reported
        if not ok:
            raise ValueError(message)
    if marginals and values[-1] > MASS_RTOL:
        raise ValueError(f"a and b must have equal total mass per problem (relative difference {values[-1]:.3g} "
                         f"exceeds {MASS_RTOL:g}); normalise them")


@op_body
def _sinkhorn_impl(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, max_iters: int, tol: float,
                 check_every: int, return_plan: bool, backend: str, check_values: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if check_values:  # 1: the cost, 2: the cost and given marginals (see sinkhorn())
        _check_values(cost, a, b, check_values > 1)
    tol_ = None if tol < 0 else tol
    if backend == "cuda":
        from rdkernels.ops.sinkhorn.cuda import sinkhorn_cuda as run
    elif backend == "triton":
        from rdkernels.ops.sinkhorn.triton import sinkhorn_triton as run
    else:
        run = sinkhorn_reference
    f, g, total, plan, n_iters = run(cost, a, b, eps, max_iters, tol_, check_every, return_plan)
    if plan is None:
        plan = f.new_empty(0)
    return f, g, total, plan, n_iters


_sinkhorn_op = torch.library.custom_op("rdkernels::sinkhorn", _sinkhorn_impl, mutates_args=())


@_sinkhorn_op.register_fake
def _(cost, a, b, eps, max_iters, tol, check_every, return_plan, backend, check_values=0):
    P, n, m = cost.shape
    dt = torch.float64 if cost.dtype == torch.float64 else torch.float32
    f = cost.new_empty((P, n), dtype=dt)
    plan = cost.new_empty((P, n, m) if return_plan else (0,), dtype=dt)
    return (f, cost.new_empty((P, m), dtype=dt), cost.new_empty((P,), dtype=dt), plan,
            cost.new_empty((P,), dtype=torch.int32))


@op_body
def _cost_grad_impl(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
                    eps: float, grad_cost: torch.Tensor, backend: str) -> torch.Tensor:
    """d loss / d C = grad_cost[p] * plan[p], the plan recomputed from the potentials (a
    constant: the envelope gradient), in cost's dtype. The fast backends' float32
    potentials take one Triton launch; its own op, so torch.compile traces backward."""
    fused = backend == "triton" or (backend == "cuda" and _backend.triton_unavailable_reason(cost.device) is None)
    if fused and f.dtype == torch.float32:
        from rdkernels.ops.sinkhorn.triton import cost_grad_triton
        return cost_grad_triton(cost, a, b, f, g, eps, grad_cost.float())
    plan = plan_from_potentials(cost, a, b, f, g, eps)
    return (grad_cost.to(plan.dtype)[:, None, None] * plan).to(cost.dtype)


_cost_grad_op = torch.library.custom_op("rdkernels::sinkhorn_cost_grad", _cost_grad_impl, mutates_args=())


@_cost_grad_op.register_fake
def _(cost, a, b, f, g, eps, grad_cost, backend):
    return torch.empty_like(cost)


_cost_grad = eager_or_compiled(_cost_grad_op, _cost_grad_impl)


def _setup_context(ctx, inputs, output):
    cost, a, b, eps = inputs[:4]
    ctx.backend = inputs[8]
    # Copies: the caller gets f and g detached, and may shift the potentials in place
    # (they are defined up to a constant); that must not trip autograd's version check.
    f, g = output[0].clone(), output[1].clone()
    ctx.save_for_backward(cost, a, b, f, g)
    ctx.eps = eps


def _backward(ctx, grad_f, grad_g, grad_cost, grad_plan, grad_iters):
    cost, a, b, f, g = ctx.saved_tensors
    grad_C = None
    if ctx.needs_input_grad[0] and grad_cost is not None:
        grad_C = _cost_grad(cost, a, b, f, g, ctx.eps, grad_cost, ctx.backend)
    return grad_C, None, None, None, None, None, None, None, None, None


_sinkhorn_op.register_autograd(_backward, setup_context=_setup_context)
_sinkhorn = eager_or_compiled(_sinkhorn_op, _sinkhorn_impl, _setup_context, _backward)


def sinkhorn(cost: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None, *,
             eps: float = 0.05, max_iters: int = 100, tol: float | None = None, return_plan: bool = False,
             check_every: int = 10, backend: str | None = None, check_inputs: bool = True) -> SinkhornResult:
    """Batched log-domain Sinkhorn for P entropic OT problems.

    Args:
        cost: [P, n, m] float32, bfloat16, float16 or float64 costs (finite).
        a, b: marginals [P, n] / [P, m] (or [n] / [m], shared by every problem),
            nonnegative, with equal total mass per problem. ``None`` = uniform 1/n, 1/m.
        eps: entropic regularisation (POT's ``reg``), > 0. In fp32 the log-domain
            updates stay stable down to eps = 1e-3 for costs in [0, 4]; small eps
            needs many more iterations.
        max_iters: iteration cap (one iteration = an f and a g update).
        tol: stop a problem once its row-marginal L1 error is <= tol (the columns are
            exact after each g update). ``None``: run max_iters iterations.
        return_plan: also return the [P, n, m] plan.
        check_every: with tol, the host reads the per-problem "done" flags once every
            this many iterations (the fused kernels need no host reads at all).
        backend: "auto" | "cuda" | "triton" | "torch" (default: the global choice).
        check_inputs: check that the cost is finite and the given marginals are
            valid (one host sync, which stalls a training step's pipeline); pass
            False in a hot loop whose inputs are finite by construction.

    Returns:
        SinkhornResult(f, g, cost, plan, n_iters). Only ``cost`` carries a gradient,
        to the cost matrix: d cost / d C = plan.
    """
    given = (a is not None) or (b is not None)
    a, b = _validate(cost, a, b, eps, max_iters, tol, check_every, check_inputs)
    cost = cost.contiguous()  # a strided cost (a transposed batch, an expand): a copy, differentiable
    if cost.dtype == torch.float64:
        name = "torch"
        # asked for per call or set globally (set_backend, RDKERNELS_BACKEND): either raises
        asked = _backend.requested_backend(backend)
        if asked in ("cuda", "triton"):
            raise _backend.BackendUnavailable(
                f"backend {asked!r} cannot run sinkhorn on float64 costs (its kernels compute in float32); "
                "use float32/bfloat16/float16 costs or backend 'torch' or 'auto'")
    else:
        name = _backend.resolve(cost.device, "sinkhorn", backend)
    f, g, total, plan, n_iters = _sinkhorn(cost, a, b, float(eps), int(max_iters),
                                              -1.0 if tol is None else float(tol), int(check_every),
                                              bool(return_plan), name,
                                              (2 if given else 1) if check_inputs and torch.compiler.is_compiling()
                                              else 0)
    return SinkhornResult(f.detach(), g.detach(), total, plan.detach() if return_plan else None, n_iters)
