"""sinkhorn: the reference against an independent float64 solver and the LP optimum,
every fast path against the float64 reference, the envelope gradient, bad inputs."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from conftest import DEVICE, backends
from helpers import assert_close
from rdkernels.backend import BackendUnavailable, use_backend
from rdkernels.ops import SinkhornResult, sinkhorn
from rdkernels.ops.sinkhorn import sinkhorn_reference

try:
    from scipy.optimize import linprog
except ImportError:  # pragma: no cover - scipy is optional
    linprog = None


def _marginal(P, n, uniform, dtype=torch.float32):
    if uniform:
        return torch.full((P, n), 1.0 / n, dtype=dtype, device=DEVICE)
    x = torch.rand(P, n, dtype=torch.float64, device=DEVICE) + 0.2
    return (x / x.sum(dim=1, keepdim=True)).to(dtype)


def _scaling_solver(C, a, b, eps, iters=2000, tol=1e-12):
    """Plain Sinkhorn-Knopp on the Gibbs kernel in numpy float64 (no log domain)."""
    K = np.exp(-C / eps)
    u, v = np.ones_like(a), np.ones_like(b)
    for _ in range(iters):
        u = a / (K @ v)
        v = b / (K.T @ u)
        plan = u[:, None] * K * v[None, :]
        if np.abs(plan.sum(1) - a).sum() < tol:
            break
    return plan


def _lp_optimum(C, a, b):
    n, m = C.shape
    if linprog is not None:
        A = np.zeros((n + m, n * m))
        for i in range(n):
            A[i, i * m:(i + 1) * m] = 1
        for j in range(m):
            A[n + j, j::m] = 1
        res = linprog(C.ravel(), A_eq=A, b_eq=np.concatenate([a, b]), bounds=(0, None), method="highs")
        assert res.success
        return res.fun
    # Square, uniform marginals: the optimum is a permutation (Birkhoff).
    assert n == m and np.allclose(a, 1 / n) and np.allclose(b, 1 / n)
    return min(C[range(n), perm].sum() / n for perm in itertools.permutations(range(n)))


# ---- the reference against independent solvers ---------------------------------

@pytest.mark.parametrize("eps", [1.0, 0.1])
@pytest.mark.parametrize("uniform", [True, False])
def test_reference_matches_scaling_solver(eps, uniform):
    P, n, m = 3, 6, 9
    C = torch.rand(P, n, m, dtype=torch.float64, device=DEVICE) * 4
    a, b = _marginal(P, n, uniform, torch.float64), _marginal(P, m, uniform, torch.float64)
    res = sinkhorn(C, a, b, eps=eps, max_iters=20000, tol=1e-12, return_plan=True, backend="torch")
    assert isinstance(res, SinkhornResult)
    for p in range(P):
        expected = _scaling_solver(C[p].cpu().numpy(), a[p].cpu().numpy(), b[p].cpu().numpy(), eps)
        assert_close("plan", res.plan[p], torch.from_numpy(expected), atol=1e-9, rtol=1e-6)
        assert_close("cost", res.cost[p], torch.tensor((expected * C[p].cpu().numpy()).sum()), atol=1e-9, rtol=1e-7)
    # marginals at convergence, and the geomloss form of the plan
    assert (res.plan.sum(2) - a).abs().max() < 1e-6
    assert (res.plan.sum(1) - b).abs().max() < 1e-10
    rebuilt = a[:, :, None] * b[:, None, :] * torch.exp((res.f[:, :, None] + res.g[:, None, :] - C) / eps)
    assert_close("plan from f, g", rebuilt, res.plan, atol=1e-12, rtol=1e-9)


def test_cost_approaches_lp_optimum():
    """<plan, C> -> the LP optimum as eps shrinks (gap <= eps * log(n m))."""
    if linprog is None:
        pytest.skip("needs scipy's linprog for a non-square, non-uniform LP optimum")
    n, m = 5, 4
    C = torch.rand(2, n, m, dtype=torch.float64, device=DEVICE) * 4
    a, b = _marginal(2, n, False, torch.float64), _marginal(2, m, False, torch.float64)
    for p in range(2):
        lp = _lp_optimum(C[p].cpu().numpy(), a[p].cpu().numpy(), b[p].cpu().numpy())
        gaps = []
        for eps in (0.1, 0.01, 0.002):
            res = sinkhorn(C[p:p + 1], a[p:p + 1], b[p:p + 1], eps=eps, max_iters=50000, tol=1e-8, backend="torch")
            gap = float(res.cost[0]) - lp
            # feasible, so it cannot beat the LP optimum (up to linprog's own tolerance)
            assert gap > -1e-7, "the entropic plan is feasible, so its cost cannot beat the LP optimum"
            assert gap <= eps * math.log(n * m) + 1e-8
            gaps.append(gap)
        assert gaps[-1] < 5e-3 and gaps[-1] <= gaps[0]


def test_lp_optimum_permutation_square_uniform():
    """Tiny square problems with uniform marginals: the limit is the best assignment."""
    n, eps = 4, 1e-2
    C = torch.rand(1, n, n, dtype=torch.float64, device=DEVICE) * 4
    best = min(C[0, range(n), list(perm)].sum().item() / n for perm in itertools.permutations(range(n)))
    # Degenerate (vertex) optima converge slowly at small eps: allow the marginal slack in the bound.
    res = sinkhorn(C, eps=eps, max_iters=5000, tol=1e-6, backend="torch")
    assert abs(float(res.cost[0]) - best) < eps * math.log(n * n) + 1e-4


# ---- fast paths against the float64 reference ------------------------------------

# (P, n, m, eps, cost dtype, iterations): every listed P, n, m, eps and dtype at least
# once, large P only with small problems (the interpreter runs programs one by one).
# Paths: n, m <= 64-ish tiles -> resident kernel, up to 256 -> streamed, above -> tiled.
SWEEP = [
    (1, 1, 3, 1.0, torch.float32, 20),
    (7, 3, 64, 0.1, torch.bfloat16, 15),
    (64, 3, 1, 0.01, torch.float32, 4),
    (64, 3, 3, 0.1, torch.bfloat16, 3),
    (7, 64, 64, 0.1, torch.float32, 10),
    (1, 64, 100, 0.01, torch.float32, 15),
    (7, 100, 64, 1.0, torch.bfloat16, 4),
    (1, 256, 3, 0.1, torch.float32, 10),
    (1, 3, 256, 0.01, torch.bfloat16, 10),
    (1, 256, 100, 0.1, torch.float32, 4),
    (1, 300, 64, 0.1, torch.float32, 4),
    (7, 3, 300, 0.01, torch.bfloat16, 4),
    (1, 300, 256, 1.0, torch.float32, 2),
]


def _f64_reference(C, a, b, eps, iters, tol=None):
    return sinkhorn_reference(C.to(torch.float64), a.double(), b.double(), eps, iters, tol, 10, True)


def _assert_matches_f64(res, ref, eps):
    """fp32 arithmetic against float64 on the same (possibly bf16-rounded) costs;
    f, g are compared through f/eps, the quantity the iterations work with."""
    f, g, total, plan, n_iters = ref
    assert_close("f/eps", res.f / eps, f / eps, atol=2e-3, rtol=2e-5)
    assert_close("g/eps", res.g / eps, g / eps, atol=2e-3, rtol=2e-5)
    assert_close("cost", res.cost, total, atol=1e-5, rtol=2e-4)
    assert_close("plan", res.plan, plan, atol=1e-7, rtol=2e-3)
    assert torch.equal(res.n_iters.cpu(), n_iters.cpu())


@pytest.mark.parametrize("backend", backends("sinkhorn"))
@pytest.mark.parametrize("P,n,m,eps,dtype,iters", SWEEP,
                         ids=[f"P{c[0]}-{c[1]}x{c[2]}-eps{c[3]}-{str(c[4])[6:]}" for c in SWEEP])
def test_matches_reference(backend, P, n, m, eps, dtype, iters):
    C = (torch.rand(P, n, m, device=DEVICE) * 4).to(dtype)
    a, b = _marginal(P, n, False), _marginal(P, m, False)
    res = sinkhorn(C, a, b, eps=eps, max_iters=iters, return_plan=True, backend=backend)
    _assert_matches_f64(res, _f64_reference(C, a, b, eps, iters), eps)
    assert res.f.dtype == res.g.dtype == res.cost.dtype == torch.float32


# The CUDA one-launch kernels at n, m <= 128: the register-resident one (the default)
# in every (rows per warp, columns per lane) instantiation, and the shared-memory one
# (RDKERNELS_SINKHORN_REGISTERS=0) on the same problems; ragged edges, all dtypes.
REGISTER_SWEEP = [
    (3, 1, 1, 1.0, torch.float32, 20),
    (7, 32, 32, 0.1, torch.float32, 15),
    (5, 17, 50, 0.01, torch.bfloat16, 10),
    (4, 33, 64, 0.1, torch.float16, 10),
    (64, 64, 100, 0.05, torch.float32, 30),
    (9, 100, 31, 0.1, torch.float32, 10),
    (64, 128, 128, 0.05, torch.float32, 100),
    (2, 128, 65, 0.01, torch.bfloat16, 25),
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernels need a GPU")
@pytest.mark.parametrize("registers", ["1", "0"], ids=["registers", "shared"])
@pytest.mark.parametrize("P,n,m,eps,dtype,iters", REGISTER_SWEEP,
                         ids=[f"P{c[0]}-{c[1]}x{c[2]}-eps{c[3]}-{str(c[4])[6:]}" for c in REGISTER_SWEEP])
def test_cuda_small_problem_kernels_match_reference(monkeypatch, P, n, m, eps, dtype, iters, registers):
    from rdkernels.backend import available_backends
    if "cuda" not in available_backends(DEVICE, "sinkhorn"):
        pytest.skip("the CUDA extension is not built")
    monkeypatch.setenv("RDKERNELS_SINKHORN_REGISTERS", registers)
    C = (torch.rand(P, n, m, device=DEVICE) * 4).to(dtype)
    a, b = _marginal(P, n, False), _marginal(P, m, False)
    res = sinkhorn(C, a, b, eps=eps, max_iters=iters, return_plan=True, backend="cuda")
    _assert_matches_f64(res, _f64_reference(C, a, b, eps, iters), eps)
    # the on-device early stop, per problem
    tol = 1e-4
    ref = _f64_reference(C, a, b, eps, iters, tol)
    res = sinkhorn(C, a, b, eps=eps, max_iters=iters, tol=tol, backend="cuda")
    assert (res.n_iters.cpu() - ref[4].cpu()).abs().max() <= 1


def _streamed_candidates():
    from rdkernels.ops.sinkhorn.triton import STREAM_CANDIDATES
    return [pytest.param(c, id=f"BR{c.kwargs['BR']}-w{c.num_warps}") for c in STREAM_CANDIDATES]


@pytest.mark.parametrize("config", _streamed_candidates())
@pytest.mark.parametrize("P,n,m,eps,dtype", [(3, 100, 60, 0.1, torch.float32), (2, 130, 40, 0.05, torch.bfloat16)])
def test_triton_streamed_every_launch_candidate(config, P, n, m, eps, dtype):
    """Each row-block height and warp count the GPU may pick by timing solves the
    same problem, ragged edges and the on-device early stop included."""
    from types import SimpleNamespace

    from rdkernels.backend import triton_unavailable_reason
    from rdkernels.ops.sinkhorn.triton import _fits, _launch_fused, fused_config
    if triton_unavailable_reason(DEVICE):
        pytest.skip(triton_unavailable_reason(DEVICE))
    assert fused_config(n, m)["kernel"] == "streamed"
    if not _fits(config.kwargs["BR"], n, fused_config(n, m)["BM"]):
        pytest.skip("pruned for this size: never timed or launched")
    C = (torch.rand(P, n, m, device=DEVICE) * 4).to(dtype)
    a, b = _marginal(P, n, False), _marginal(P, m, False)
    for tol in (None, 1e-4):
        f, g, total, plan, n_iters = _launch_fused(C, a.float(), b.float(), eps, 40, tol, True, config=config)
        res = SimpleNamespace(f=f, g=g, cost=total, plan=plan, n_iters=n_iters)
        _assert_matches_f64(res, _f64_reference(C, a, b, eps, 40, tol), eps)


@pytest.mark.parametrize("backend", backends("sinkhorn"))
@pytest.mark.parametrize("n,m,eps_list,iters", [(6, 9, (1.0, 0.5, 0.3, 0.2, 0.1), 60), (300, 3, (2.0, 0.7), 25)],
                         ids=["fused", "tiled"])
def test_early_stop_on_device(backend, n, m, eps_list, iters):
    """Each problem stops on its own at the first iteration with row error <= tol."""
    P, tol = len(eps_list), 1e-4
    C = torch.rand(P, n, m, device=DEVICE) * 4
    a, b = _marginal(P, n, False), _marginal(P, m, False)
    ref_iters = []
    for p, eps in enumerate(eps_list):
        ref = _f64_reference(C[p:p + 1], a[p:p + 1], b[p:p + 1], eps, iters, tol)
        res = sinkhorn(C[p:p + 1], a[p:p + 1], b[p:p + 1], eps=eps, max_iters=iters, tol=tol,
                       return_plan=True, backend=backend, check_every=3)
        # the stopping test compares fp32 against float64 errors: a borderline case may differ by one
        assert abs(int(res.n_iters[0]) - int(ref[4][0])) <= 1
        if int(res.n_iters[0]) < iters:
            err = (res.plan.sum(2) - a[p:p + 1]).abs().sum()
            assert err <= tol * 1.01
        assert_close("cost", res.cost, ref[2], atol=5e-4, rtol=1e-3)
        ref_iters.append(int(ref[4][0]))
    assert min(ref_iters) < iters and len(set(ref_iters)) > 1
    # batched, one eps: problems stop at different iterations, the same as the reference's
    res = sinkhorn(C, a, b, eps=eps_list[1], max_iters=iters, tol=tol, backend=backend)
    ref = _f64_reference(C, a, b, eps_list[1], iters, tol)
    assert (res.n_iters.cpu() - ref[4].cpu()).abs().max() <= 1


@pytest.mark.parametrize("backend", backends("sinkhorn"))
@pytest.mark.parametrize("P,n,m,iters", [(2, 5, 7, 30), (1, 100, 40, 8), (1, 3, 300, 6)],
                         ids=["resident", "streamed", "tiled"])
def test_small_eps_stable_fp32(backend, P, n, m, iters):
    """eps = 1e-3 with costs in [0, 4] (C / eps up to 4000): the log-domain updates stay
    finite in fp32 on every execution path and track the float64 iterates to fp32
    precision (a scaling-domain kernel would underflow exp(-C / eps) to 0 here)."""
    C = torch.rand(P, n, m, device=DEVICE) * 4
    a, b = _marginal(P, n, False), _marginal(P, m, False)
    res = sinkhorn(C, a, b, eps=1e-3, max_iters=iters, return_plan=True, backend=backend)
    assert torch.isfinite(res.f).all() and torch.isfinite(res.g).all() and torch.isfinite(res.plan).all()
    _assert_matches_f64(res, _f64_reference(C, a, b, 1e-3, iters), 1e-3)
    assert_close("plan col sums", res.plan.sum(1), b, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("backend", backends("sinkhorn"))
def test_zero_mass_rows(backend):
    C = torch.rand(2, 4, 5, device=DEVICE)
    a = torch.tensor([[0.5, 0.0, 0.25, 0.25], [0.0, 0.0, 0.0, 1.0]], device=DEVICE)
    b = _marginal(2, 5, False)
    res = sinkhorn(C, a, b, eps=0.1, max_iters=50, return_plan=True, backend=backend)
    ref = _f64_reference(C, a, b, 0.1, 50)
    assert torch.equal(res.plan[a == 0], torch.zeros_like(res.plan[a == 0]))
    assert_close("cost", res.cost, ref[2], atol=1e-5, rtol=1e-4)
    assert_close("plan", res.plan, ref[3], atol=1e-6, rtol=1e-3)


def _sparse_marginal(P, n):
    """Non-uniform, about a third of the entries exactly 0 (never all of them)."""
    x = torch.rand(P, n, dtype=torch.float64, device=DEVICE) + 0.2
    x[torch.rand(P, n, device=DEVICE) < 0.3] = 0
    x[:, 0] += 0.1
    return (x / x.sum(dim=1, keepdim=True)).float()


@pytest.mark.parametrize("backend", backends("sinkhorn"))
@pytest.mark.parametrize("P,n,m,iters", [(2, 5, 7, 10), (1, 100, 40, 5), (1, 3, 300, 4)],
                         ids=["resident", "streamed", "tiled"])
def test_zero_mass_rows_and_columns_every_path(backend, P, n, m, iters):
    """Zeros in a and in b (log 0 = -inf inside the kernels) on each execution path,
    with and without the early stop: the same iterates as float64, zero plan rows/columns."""
    C = torch.rand(P, n, m, device=DEVICE) * 4
    a, b = _sparse_marginal(P, n), _sparse_marginal(P, m)
    for tol in (None, 1e-3):
        res = sinkhorn(C, a, b, eps=0.1, max_iters=iters, tol=tol, return_plan=True, backend=backend)
        _assert_matches_f64(res, _f64_reference(C, a, b, 0.1, iters, tol), 0.1)
        assert (res.plan.permute(0, 2, 1)[b == 0] == 0).all() and (res.plan[a == 0] == 0).all()


@pytest.mark.parametrize("backend", backends("sinkhorn"))
@pytest.mark.parametrize("P,n,m,iters", [(3, 6, 9, 12), (2, 120, 50, 5), (1, 257, 3, 4)],
                         ids=["resident", "streamed", "tiled"])
def test_default_uniform_marginals_every_path(backend, P, n, m, iters):
    """a = b = None takes the cached uniform marginals (and their cached logs) into
    the kernels: the same result as the float64 reference with explicit 1/n, 1/m."""
    C = torch.rand(P, n, m, device=DEVICE) * 4
    a, b = _marginal(P, n, True), _marginal(P, m, True)
    for tol in (None, 1e-3):
        res = sinkhorn(C, eps=0.1, max_iters=iters, tol=tol, return_plan=True, backend=backend)
        _assert_matches_f64(res, _f64_reference(C, a, b, 0.1, iters, tol), 0.1)


def test_shared_marginals_and_defaults():
    C = torch.rand(3, 4, 6, device=DEVICE)
    res = sinkhorn(C, torch.full((4,), 0.25, device=DEVICE), None, max_iters=7, backend="torch")
    ref = sinkhorn_reference(C, torch.full((3, 4), 0.25, device=DEVICE), torch.full((3, 6), 1 / 6, device=DEVICE),
                             0.05, 7)
    assert_close("cost", res.cost, ref[2], atol=1e-7, rtol=1e-6)
    assert res.plan is None and res.n_iters.tolist() == [7, 7, 7]


# ---- gradient ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", backends("sinkhorn"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_is_the_plan(backend, dtype):
    C = (torch.rand(3, 5, 300 if backend == "torch" else 7, device=DEVICE) * 4).to(dtype).requires_grad_()
    a, b = _marginal(3, C.shape[1], False), _marginal(3, C.shape[2], False)
    res = sinkhorn(C, a, b, eps=0.1, max_iters=20, return_plan=True, backend=backend)
    w = torch.rand(3, device=DEVICE)
    (res.cost * w).sum().backward()
    assert C.grad.dtype == dtype
    tol = (2e-2, 1e-2) if dtype == torch.bfloat16 else (1e-7, 1e-5)
    assert_close("dC", C.grad, w[:, None, None] * res.plan, atol=tol[0] * 1e-3, rtol=tol[1])
    assert not res.f.requires_grad and not res.plan.requires_grad


def test_gradient_matches_finite_differences_of_entropic_value():
    """d/dC of the entropic OT value <a, f> + <b, g> equals the plan (envelope theorem)."""
    P, n, m, eps = 2, 4, 5, 0.2
    C = torch.rand(P, n, m, dtype=torch.float64, device=DEVICE) * 2
    a, b = _marginal(P, n, False, torch.float64), _marginal(P, m, False, torch.float64)

    def value(Cx):
        r = sinkhorn(Cx, a, b, eps=eps, max_iters=20000, tol=1e-14, backend="torch")
        return (a * r.f).sum(1) + (b * r.g).sum(1)

    Cg = C.clone().requires_grad_()
    res = sinkhorn(Cg, a, b, eps=eps, max_iters=20000, tol=1e-14, return_plan=True, backend="torch")
    res.cost.sum().backward()
    assert_close("grad = plan", Cg.grad, res.plan, atol=1e-14, rtol=1e-12)
    E = torch.randn_like(C)
    h = 1e-5
    fd = (value(C + h * E) - value(C - h * E)) / (2 * h)
    assert_close("finite differences", fd, (res.plan * E).sum((1, 2)), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend", backends("sinkhorn"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_gradient_matches_float64_envelope(backend, dtype):
    """Each backend's d cost / d C against the float64 reference's converged plan on the
    same (rounded) cost, and its directional derivative against central finite
    differences of the float64 entropic value <a, f> + <b, g>: neither side shares
    the fast path's iterations."""
    P, n, m, eps = 2, 5, 7, 0.25
    C = (torch.rand(P, n, m, device=DEVICE) * 2).to(dtype)
    a, b = _marginal(P, n, False), _marginal(P, m, False)
    leaf = C.clone().requires_grad_()
    res = sinkhorn(leaf, a, b, eps=eps, max_iters=300, tol=1e-6, backend=backend)
    w = torch.rand(P, device=DEVICE) + 0.5
    (res.cost * w).sum().backward()
    assert leaf.grad.dtype == dtype and int(res.n_iters.max()) < 300
    C64, a64, b64 = C.double(), a.double(), b.double()
    ref = sinkhorn(C64, a64, b64, eps=eps, max_iters=20000, tol=1e-13, return_plan=True, backend="torch")
    # fp32 potentials at tol 1e-6; bf16: the gradient is returned in the cost's dtype
    atol, rtol = (1e-6, 1e-4) if dtype == torch.float32 else (1e-4, 8e-3)
    assert_close("dC vs float64 plan", leaf.grad, w[:, None, None] * ref.plan, atol=atol, rtol=rtol)

    def value(Cx):
        r = sinkhorn(Cx, a64, b64, eps=eps, max_iters=20000, tol=1e-13, backend="torch")
        return (a64 * r.f).sum(1) + (b64 * r.g).sum(1)

    E = torch.randn_like(C64)
    h = 1e-5
    fd = (value(C64 + h * E) - value(C64 - h * E)) / (2 * h)
    assert_close("dC . E vs finite differences", ((leaf.grad.double() / w[:, None, None]) * E).sum((1, 2)), fd,
                 atol=10 * atol, rtol=rtol)


class _HostReads:
    """Counts host reads of tensor values (bool(t), t.item(), float(t), int(t), t.tolist())."""
    NAMES = ("__bool__", "item", "__float__", "__int__", "__index__", "tolist")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, original):
        def read(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)
        return read


@pytest.mark.parametrize("backend", backends("sinkhorn"))
@pytest.mark.parametrize("P,n,m", [(2, 6, 9), (1, 3, 257)], ids=["fused", "tiled"])
def test_early_stop_reads_the_host_once_per_check_every(backend, P, n, m, monkeypatch):
    """The convergence test runs on the device: with tol and the value checks off, a
    call reads tensor values on the host at most once every check_every iterations
    (the one-launch kernels never), not once per iteration."""
    C = torch.rand(P, n, m, device=DEVICE) * 4
    a, b = _marginal(P, n, False), _marginal(P, m, False)
    fused = backend != "torch" and max(n, m) <= 256
    iters = 12
    for check_every in (1, 5):
        reads = _HostReads(monkeypatch)
        res = sinkhorn(C, a, b, eps=1e-3, max_iters=iters, tol=1e-12, check_every=check_every, backend=backend,
                       check_inputs=False)
        n_reads = reads.count
        monkeypatch.undo()
        assert res.n_iters.tolist() == [iters] * P  # tol 1e-12 is never met: every poll said "not done"
        assert n_reads == (0 if fused else (iters - 1) // check_every), (check_every, n_reads)


def test_opcheck():
    from rdkernels.ops.sinkhorn import _sinkhorn_op
    C = torch.rand(2, 3, 4, device=DEVICE, requires_grad=True)
    a, b = _marginal(2, 3, True), _marginal(2, 4, True)
    torch.library.opcheck(_sinkhorn_op, (C, a, b, 0.1, 5, -1.0, 10, False, "torch"))


# ---- bad inputs --------------------------------------------------------------------

def _args(**kw):
    args = dict(cost=torch.rand(2, 3, 4), a=None, b=None, eps=0.1)
    args.update(kw)
    return args


@pytest.mark.parametrize("bad,match", [
    (dict(cost=torch.rand(3, 4)), "cost must have 3 dimensions"),
    (dict(cost=torch.randint(0, 3, (2, 3, 4))), "cost must have dtype"),
    (dict(cost=torch.tensor([[[0.0, float("nan")]]])), "cost holds NaN or inf"),
    (dict(cost=torch.tensor([[[0.0, float("inf")]]])), "cost holds NaN or inf"),
    (dict(a=torch.tensor([0.5, 0.6, -0.1])), "a holds negative"),
    (dict(b=torch.tensor([[0.5, 0.5, 0.5, -0.5]] * 2)), "b holds negative"),
    (dict(a=torch.tensor([0.5, 0.3, 0.3])), "equal total mass"),
    (dict(a=torch.zeros(3), b=torch.zeros(4)), "zero total mass"),
    (dict(a=torch.full((4,), 0.25)), "a has 4 entries"),
    (dict(b=torch.full((3, 4), 0.25)), r"b must have shape \(2, 4\)"),
    (dict(a=torch.full((3,), 1 / 3, dtype=torch.float16)), "a must have dtype"),
    (dict(a=torch.tensor([float("nan"), 0.5, 0.5])), "a holds NaN"),
    (dict(eps=0.0), "eps must be a positive"),
    (dict(eps=-1.0), "eps must be a positive"),
    (dict(eps=float("nan")), "eps must be a positive"),
    (dict(max_iters=0), "max_iters must be a positive int"),
    (dict(tol=-1.0), "tol must be None or a finite number"),
    (dict(eps=True), "eps must be a real number, got bool"),
    (dict(max_iters=True), "max_iters must be an integer, got bool"),
    (dict(max_iters=5.0), "max_iters must be an integer, got float"),
    (dict(check_every=True), "check_every must be an integer, got bool"),
    (dict(tol=True), "tol must be a real number, got bool"),
    (dict(cost=torch.rand(0, 3, 4)), "cost is empty"),
    (dict(cost=torch.rand(2, 0, 4)), "cost is empty"),
    (dict(cost=torch.rand(2, 3, 0)), "cost is empty"),
    (dict(cost=torch.tensor([[[0.0, -float("inf")]]])), "cost holds NaN or inf"),
    (dict(cost=torch.tensor([[[0.0, float("nan")]]], dtype=torch.bfloat16)), "cost holds NaN or inf"),
    (dict(cost=torch.tensor([[[0.0, float("inf")]]], dtype=torch.float16)), "cost holds NaN or inf"),
    (dict(cost=[[[0.0, 1.0]]]), "cost must be a torch.Tensor"),
    (dict(a=torch.full((2, 3, 1), 1 / 3)), "a must have 1 or 2 dimensions"),
    (dict(a=torch.full((3, 3), 1 / 3)), r"a must have shape \(2, 3\)"),
    (dict(b=torch.full((5,), 0.2)), "b has 5 entries"),
    (dict(a=torch.tensor([float("inf"), 0.5, 0.5])), "a holds NaN or inf"),
    (dict(b=torch.tensor([0.25, 0.25, 0.25, float("nan")])), "b holds NaN or inf"),
    (dict(a=torch.tensor([1 / 3, 1 / 3, 1 / 3 + 1e-4])), "equal total mass"),
    (dict(a=torch.zeros(3)), "a has a problem with zero total mass"),
    (dict(eps=float("inf")), "eps must be a positive"),
    (dict(tol=float("nan")), "tol must be None or a finite number"),
    (dict(tol=float("inf")), "tol must be None or a finite number"),
    (dict(max_iters=-3), "max_iters must be a positive int"),
    (dict(max_iters=2**31), "max_iters must be at most"),  # the kernels count in int32
    (dict(check_every=0), "check_every must be a positive int"),
])
def test_bad_input_raises(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sinkhorn(**_args(**bad))


@pytest.mark.parametrize("backend", [p for p in backends("sinkhorn") if p.id != "torch"])
@pytest.mark.parametrize("bad,match", [
    (dict(cost=torch.tensor([[[0.0, float("nan")], [1.0, 2.0]]])), "cost holds NaN or inf"),
    (dict(a=torch.tensor([0.5, 0.6, -0.1])), "a holds negative"),
    (dict(a=torch.tensor([0.5, 0.3, 0.3])), "equal total mass"),
    (dict(eps=0.0), "eps must be a positive"),
])
def test_bad_input_raises_on_kernel_backends(backend, bad, match):
    """The value checks run before dispatch: a kernel backend refuses the same inputs."""
    args = _args(**bad)
    args["cost"] = args["cost"].to(DEVICE)
    args.update({k: v.to(DEVICE) for k, v in args.items() if k in ("a", "b") and v is not None})
    with pytest.raises(ValueError, match=match):
        sinkhorn(**args, backend=backend)


def test_numpy_scalars():
    C = torch.rand(2, 3, 4, device=DEVICE)
    expected = sinkhorn(C, eps=float(np.float32(0.1)), max_iters=5, tol=1e-3, check_every=2, backend="torch")
    got = sinkhorn(C, eps=np.float32(0.1), max_iters=np.int64(5), tol=np.float64(1e-3), check_every=np.int32(2),
                   backend="torch")
    assert torch.equal(got.cost, expected.cost) and torch.equal(got.n_iters, expected.n_iters)


def test_marginals_that_require_grad_do_not_warn():
    """The value checks read the marginals on the host; a marginal that requires
    grad must not trigger torch's 'Converting a tensor with requires_grad=True
    to a scalar' warning (a and b get no gradient anyway)."""
    C = torch.rand(2, 3, 4, device=DEVICE)
    a = torch.full((3,), 1 / 3, device=DEVICE, requires_grad=True)
    b = torch.full((2, 4), 1 / 4, device=DEVICE, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn(C, a, b, eps=0.1, max_iters=3, backend="torch")


def test_check_inputs_false_skips_the_value_checks():
    """The value checks (one host sync) can be skipped; the shape checks cannot."""
    C = torch.tensor([[[0.0, float("nan")]]])
    with pytest.raises(ValueError, match="cost holds NaN"):
        sinkhorn(C, eps=0.1, backend="torch")
    res = sinkhorn(C, eps=0.1, max_iters=3, backend="torch", check_inputs=False)
    assert torch.isnan(res.cost).all()
    with pytest.raises(ValueError, match="cost must have 3 dimensions"):
        sinkhorn(torch.rand(3, 4), eps=0.1, check_inputs=False)


def test_float64_on_kernel_backend_raises():
    cost = torch.rand(1, 2, 2, dtype=torch.float64)
    for name in ("triton", "CUDA"):   # backend names are case-insensitive, as everywhere
        with pytest.raises(BackendUnavailable, match="float64"):
            sinkhorn(cost, backend=name)
    with pytest.raises(ValueError, match="backend must be one of"):   # misspelt: refused, not run on torch
        sinkhorn(cost, backend="gpu")
    assert sinkhorn(cost, backend="Torch").cost.dtype == torch.float64
    # a backend set globally is asked for just as much as one passed per call
    for name in ("triton", "cuda"):
        with use_backend(name), pytest.raises(BackendUnavailable, match=f"backend '{name}' cannot run sinkhorn "
                                                                        "on float64 costs"):
            sinkhorn(cost)
    with use_backend("auto"):
        assert sinkhorn(cost).cost.dtype == torch.float64


def test_default_marginals_are_made_once_and_shared_read_only():
    """Uniform marginals come from a small cache, so a default call builds none."""
    from rdkernels.ops.sinkhorn._driver import _UniformMarginals

    cache = _UniformMarginals(max_entries=2)
    a = cache.get(3, 5, torch.float32, DEVICE)
    assert cache.get(3, 5, torch.float32, DEVICE) is a
    assert torch.equal(a, torch.full((3, 5), 0.2, device=DEVICE))
    assert torch.equal(cache.log_of(a), a.log())
    other = torch.full((3, 5), 0.2, device=DEVICE)
    assert torch.equal(cache.log_of(other), other.log())  # not cached: computed
    cache.get(3, 5, torch.float64, DEVICE)
    cache.get(4, 5, torch.float32, DEVICE)  # a third entry evicts the oldest
    assert cache.get(3, 5, torch.float32, DEVICE) is not a


def test_default_marginals_made_under_inference_mode_still_train():
    cost = torch.rand(2, 6, 7, device=DEVICE)
    with torch.inference_mode():
        sinkhorn(cost, eps=0.1, max_iters=5, backend="torch")
    leaf = cost.clone().requires_grad_(True)
    res = sinkhorn(leaf, eps=0.1, max_iters=5, backend="torch")
    res.cost.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [p for p in backends("sinkhorn") if p.id != "torch"])
def test_one_64x64_problem_is_one_kernel_launch(backend):
    from torch.profiler import ProfilerActivity, profile

    cost = torch.rand(1, 64, 64, device=DEVICE)
    sinkhorn(cost, backend=backend, check_inputs=False)  # compile, and make the default marginals
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        sinkhorn(cost, backend=backend, check_inputs=False)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1, kernels


FULL_SIZES = (1, 3, 64, 100, 256, 300)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [p for p in backends("sinkhorn") if p.id != "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("eps", [1.0, 0.1, 0.01])
# a test per P, so that workers share the grid (one worker once ran all of it last, for minutes)
@pytest.mark.parametrize("P", [1, 7, 64])
def test_full_sweep_matches_reference_gpu(backend, dtype, eps, P):
    """The issue's whole grid on a GPU (the interpreter runs SWEEP's subset): every
    P in {1, 7, 64} x n != m in FULL_SIZES, non-uniform marginals, fixed iterations
    and the early stop."""
    for n, m in itertools.permutations(FULL_SIZES, 2):
        C = (torch.rand(P, n, m, device=DEVICE) * 4).to(dtype)
        a, b = _marginal(P, n, False), _marginal(P, m, False)
        case = f"P={P} n={n} m={m}"
        res = sinkhorn(C, a, b, eps=eps, max_iters=20, return_plan=True, backend=backend)
        try:
            _assert_matches_f64(res, _f64_reference(C, a, b, eps, 20), eps)
        except AssertionError as e:
            raise AssertionError(f"{case}: {e}") from None
        ref = _f64_reference(C, a, b, eps, 60, 1e-4)
        res = sinkhorn(C, a, b, eps=eps, max_iters=60, tol=1e-4, backend=backend)
        assert (res.n_iters.cpu() - ref[4].cpu()).abs().max() <= 1, case


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [p for p in backends("sinkhorn") if p.id != "torch"])
@pytest.mark.parametrize("n,m", [(257, 2), (2, 3)], ids=["tiled", "fused"])
def test_more_problems_than_a_grid_dimension_holds(backend, n, m):
    """P > 65535: the CUDA tiled kernels put problems on grid y (at most 65535
    blocks) and launch once per chunk of problems; the problems past the first
    chunk must be solved too, each as the float64 reference solves it alone."""
    P = 65535 + 7
    C = torch.rand(P, n, m, device=DEVICE) * 4
    a, b = _marginal(P, n, False), _marginal(P, m, False)
    res = sinkhorn(C, a, b, eps=0.5, max_iters=5, tol=1e-3, check_every=2, return_plan=True, backend=backend)
    for sl in (slice(0, 3), slice(65533, 65538), slice(P - 3, P)):  # both sides of the chunk boundary
        ref = _f64_reference(C[sl], a[sl], b[sl], 0.5, 5, 1e-3)
        _assert_matches_f64(SinkhornResult(*(t[sl] for t in res)), ref, 0.5)


@pytest.mark.parametrize("n,m", [(2_200_000, 300), (3, 10_000_000)], ids=["tall", "wide"])
def test_the_triton_tiled_grid_fits_the_gpu_for_tall_and_wide_problems(monkeypatch, n, m):
    """CUDA caps a grid's second axis at 65535 blocks; a problem with more row or
    column blocks than that (allowed: n * m < 2**31) must still launch. The grids are
    recorded on meta tensors, so no kernel runs: the launch is what is checked."""
    tiled = pytest.importorskip("rdkernels.ops.sinkhorn.triton")
    grids = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: grids.append(grid)

    for name in ("_row_kernel", "_col_kernel", "_plan_cost_kernel"):
        monkeypatch.setattr(tiled, name, Recorder())
    P = 3
    cost = torch.empty(P, n, m, device="meta")
    tiled.sinkhorn_triton(cost, torch.empty(P, n, device="meta"), torch.empty(P, m, device="meta"), 0.1, 1)
    assert len(grids) == 3
    limits = (2**31 - 1, 65535, 65535)
    assert all(size <= limit for grid in grids for size, limit in zip(grid, limits)), grids
    blocks = {"rows": -(-n // tiled.TILED_BR), "cols": -(-m // tiled.TILED_BC)}
    assert sorted(g[0] for g in grids) == sorted(P * blocks[k] for k in ("rows", "cols", "rows"))


@pytest.mark.parametrize("backend", backends("sinkhorn"))
def test_shifting_the_returned_potentials_in_place_leaves_the_gradient_alone(backend):
    """f and g are returned detached and are defined up to a constant: shifting them in
    place must not trip autograd's version check on the saved copies."""
    C = (torch.rand(2, 5, 7, device=DEVICE) * 4).requires_grad_(True)
    res = sinkhorn(C, eps=0.5, max_iters=20, backend=backend)
    expected = sinkhorn(C.detach(), eps=0.5, max_iters=20, backend=backend, return_plan=True).plan
    res.f.sub_(1.0)
    res.g.add_(1.0)
    res.cost.sum().backward()
    assert_close("d cost / d C", C.grad, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")  # the interpreter's log(0)
@pytest.mark.parametrize("backend", backends("sinkhorn"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cost_gradient_is_grad_times_plan(backend, dtype):
    """Backward's one-launch d cost / d C against the torch formulation, on shapes that
    cross its row (32) and column (128) blocks, with zero marginal entries (zero rows
    and columns of the plan) and a different upstream gradient per problem."""
    from rdkernels.ops.sinkhorn import _cost_grad_impl
    from rdkernels.ops.sinkhorn.reference import plan_from_potentials
    P, n, m, eps = 3, 70, 300, 0.1
    cost = (torch.rand(P, n, m, device=DEVICE) * 2).to(dtype)
    a, b = _marginal(P, n, False), _marginal(P, m, False)
    a[0, 5] = 0.0
    b[2, 200] = 0.0
    f, g = torch.randn(P, n, device=DEVICE) * 0.1, torch.randn(P, m, device=DEVICE) * 0.1
    grad = torch.rand(P, device=DEVICE) + 0.5
    out = _cost_grad_impl(cost, a, b, f, g, eps, grad, backend)
    expected = grad[:, None, None].double() * plan_from_potentials(cost.double(), a.double(), b.double(), f.double(),
                                                                   g.double(), eps)
    assert out.dtype == dtype and out.shape == cost.shape
    assert (out[0, 5] == 0).all() and (out[2, :, 200] == 0).all()
    tol = (1e-3, 8e-3) if dtype == torch.bfloat16 else (1e-7, 1e-5)
    assert_close("grad * plan", out, expected, atol=tol[0] * expected.abs().max().item(), rtol=tol[1])
