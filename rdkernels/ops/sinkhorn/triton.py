"""Triton kernels for the batched log-domain Sinkhorn solver.

Three execution paths, all following reference.py's iteration and stopping rule:

* resident (padded n*m <= 4096, e.g. 64x64): one program per problem holds the whole cost tile,
  pre-scaled by 1/eps, in registers and runs every iteration, the on-device
  convergence test and the final <plan, C> in a single launch.
* streamed (n, m <= 256, tile too large for registers): one program per
  problem, still one launch, but the cost is re-read each half-iteration in
  [BR, BM] row blocks (it stays in L1/L2: one problem is <= 256 KiB). g and
  the column accumulators live in registers; f round-trips through a global
  scratch row, ordered by CTA barriers.
* tiled (n or m > 256): two launches per iteration, a row kernel over
  (problem, row block) and a column kernel over (problem, column block), each
  with an online log-sum-exp over the other dimension. Per-problem "done" flags
  live on the device; the host reads them once every ``check_every``
  iterations (see _driver.py).

Costs are loaded in their storage type (fp32/bf16/fp16) and converted to fp32
before any arithmetic; potentials are kept divided by eps inside the kernels.
A masked-out row or column uses -1e30, a finite "minus infinity", so that
max-subtraction never computes (-inf) - (-inf).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.ops._aot_types import FLOAT_TYPES
from rdkernels.ops._autotune import TunedKernel
from rdkernels.ops._blocks import block_width, cdiv
from rdkernels.ops._compile_options import COMPILE_OPTIONS
from rdkernels.ops.sinkhorn._driver import fused_buffers, run_tiled

# ptxas (sm_90): about 8 fp32 tile elements per thread keep the resident kernel
# near 100 registers without spills; 64x64 at 16 warps is the largest such tile.
RESIDENT_TILE = 4096   # padded n*m <= this: the tile lives in registers
FUSED_MAX = 256        # n, m <= this: one launch for all iterations
STREAM_TILE = 2048     # elements per row block in the streamed kernel (8 warps, no spills on sm_80)
TILED_BR, TILED_BC, TILED_WARPS = 32, 128, 8


# Sizes, flags and the iteration cap are runtime values (do_not_specialize): an
# argument equal to 1 would otherwise compile a separate specialisation.
@triton.jit(do_not_specialize=["n", "m", "max_iters", "check", "write_plan"])
def _sinkhorn_resident_kernel(C_ptr, la_ptr, lb_ptr, a_ptr, f_ptr, g_ptr, cost_ptr, plan_ptr, iters_ptr,
                              n, m, eps, tol, max_iters, check, write_plan,
                              BN: tl.constexpr, BM: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BN)
    cols = tl.arange(0, BM)
    rmask = rows < n
    cmask = cols < m
    mask = rmask[:, None] & cmask[None, :]
    offs = rows[:, None] * m + cols[None, :]
    C = tl.load(C_ptr + p * n * m + offs, mask=mask, other=0.0).to(tl.float32)
    inv_eps = 1.0 / eps
    Cs = C * inv_eps
    la = tl.load(la_ptr + p * n + rows, mask=rmask, other=-1.0e30)
    lb = tl.load(lb_ptr + p * m + cols, mask=cmask, other=-1.0e30)
    a = tl.load(a_ptr + p * n + rows, mask=rmask, other=0.0)
    F = tl.zeros([BN], dtype=tl.float32)  # f / eps
    G = tl.zeros([BM], dtype=tl.float32)  # g / eps
    it = 0
    active = 1
    while (it < max_iters) & (active != 0):
        X = (lb + G)[None, :] - Cs
        mx = tl.maximum(tl.max(X, axis=1), -1.0e30)
        F_new = -(mx + tl.log(tl.sum(tl.exp(X - mx[:, None]), axis=1)))
        F_new = tl.where(rmask, F_new, 0.0)
        if (check != 0) & (it > 0):
            # Row-marginal L1 error of the current plan, free from the row update.
            err = tl.sum(a * tl.abs(tl.exp(F - F_new) - 1.0), axis=0)
            if err <= tol:
                active = 0
        if active != 0:
            F = F_new
            Y = (la + F)[:, None] - Cs
            my = tl.maximum(tl.max(Y, axis=0), -1.0e30)
            G = -(my + tl.log(tl.sum(tl.exp(Y - my[None, :]), axis=0)))
            G = tl.where(cmask, G, 0.0)
            it += 1
    plan = tl.exp((la + F)[:, None] + (lb + G)[None, :] - Cs)
    plan = tl.where(mask, plan, 0.0)
    tl.store(cost_ptr + p, tl.sum(tl.sum(plan * C, axis=1), axis=0))
    if write_plan != 0:
        tl.store(plan_ptr + p * n * m + offs, plan, mask=mask)
    tl.store(f_ptr + p * n + rows, F * eps, mask=rmask)
    tl.store(g_ptr + p * m + cols, G * eps, mask=cmask)
    tl.store(iters_ptr + p, it)


@triton.jit(do_not_specialize=["n", "m", "max_iters", "check", "write_plan"])
def _sinkhorn_streamed_kernel(C_ptr, la_ptr, lb_ptr, a_ptr, f_ptr, g_ptr, fn_ptr, cost_ptr, plan_ptr, iters_ptr,
                              n, m, eps, tol, max_iters, check, write_plan,
                              BR: tl.constexpr, BM: tl.constexpr):
    # f_ptr must hold zeros on entry (f = 0); it holds f / eps until the epilogue.
    p = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BM)
    cmask = cols < m
    lb = tl.load(lb_ptr + p * m + cols, mask=cmask, other=-1.0e30)
    inv_eps = 1.0 / eps
    C_p = C_ptr + p * n * m
    G = tl.zeros([BM], dtype=tl.float32)
    it = 0
    active = 1
    while (it < max_iters) & (active != 0):
        # Row pass: F_new -> scratch, and the row-marginal error of (F, G).
        err = 0.0
        for r0 in range(0, n, BR):
            rows = r0 + tl.arange(0, BR)
            rmask = rows < n
            Cs = tl.load(C_p + rows[:, None] * m + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                         other=0.0).to(tl.float32) * inv_eps
            X = (lb + G)[None, :] - Cs
            mx = tl.maximum(tl.max(X, axis=1), -1.0e30)
            F_new = -(mx + tl.log(tl.sum(tl.exp(X - mx[:, None]), axis=1)))
            F_new = tl.where(rmask, F_new, 0.0)
            tl.store(fn_ptr + p * n + rows, F_new, mask=rmask)
            if check != 0:
                F = tl.load(f_ptr + p * n + rows, mask=rmask, other=0.0)
                a = tl.load(a_ptr + p * n + rows, mask=rmask, other=0.0)
                err += tl.sum(a * tl.abs(tl.exp(F - F_new) - 1.0), axis=0)
        tl.debug_barrier()  # scratch rows written by every thread before they are read
        if (check != 0) & (it > 0):
            if err <= tol:
                active = 0
        if active != 0:
            # Column pass: online LSE over row blocks; commits F_new to f_ptr.
            my = tl.full([BM], -1.0e30, dtype=tl.float32)
            s = tl.zeros([BM], dtype=tl.float32)
            for r0 in range(0, n, BR):
                rows = r0 + tl.arange(0, BR)
                rmask = rows < n
                Cs = tl.load(C_p + rows[:, None] * m + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                             other=0.0).to(tl.float32) * inv_eps
                F = tl.load(fn_ptr + p * n + rows, mask=rmask, other=0.0)
                la = tl.load(la_ptr + p * n + rows, mask=rmask, other=-1.0e30)
                Y = (la + F)[:, None] - Cs
                new_my = tl.maximum(my, tl.max(Y, axis=0))
                s = s * tl.exp(my - new_my) + tl.sum(tl.exp(Y - new_my[None, :]), axis=0)
                my = new_my
                tl.store(f_ptr + p * n + rows, F, mask=rmask)
            G = -(my + tl.log(s))
            G = tl.where(cmask, G, 0.0)
            it += 1
        tl.debug_barrier()  # committed f visible to the next row pass
    total = 0.0
    for r0 in range(0, n, BR):
        rows = r0 + tl.arange(0, BR)
        rmask = rows < n
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None] * m + cols[None, :]
        C = tl.load(C_p + offs, mask=mask, other=0.0).to(tl.float32)
        F = tl.load(f_ptr + p * n + rows, mask=rmask, other=0.0)
        la = tl.load(la_ptr + p * n + rows, mask=rmask, other=-1.0e30)
        plan = tl.exp((la + F)[:, None] + (lb + G)[None, :] - C * inv_eps)
        plan = tl.where(mask, plan, 0.0)
        total += tl.sum(tl.sum(plan * C, axis=1), axis=0)
        if write_plan != 0:
            tl.store(plan_ptr + p * n * m + offs, plan, mask=mask)
        tl.store(f_ptr + p * n + rows, F * eps, mask=rmask)
    tl.store(cost_ptr + p, total)
    tl.store(g_ptr + p * m + cols, G * eps, mask=cmask)
    tl.store(iters_ptr + p, it)


@triton.jit
def _problem_and_block(size, BLOCK: tl.constexpr):
    """(problem, block of BLOCK rows or columns) of this program. The tiled grid is
    one axis of P * cdiv(size, BLOCK) programs: a second axis is capped at 65535
    blocks by CUDA, which a tall or wide problem (n > 2 097 120 rows) exceeds."""
    blocks = tl.cdiv(size, BLOCK)
    pid = tl.program_id(0).to(tl.int64)
    return pid // blocks, (pid % blocks).to(tl.int32)


@triton.jit(do_not_specialize=["n", "m", "check"])
def _row_kernel(C_ptr, lb_ptr, g_ptr, f_ptr, fn_ptr, a_ptr, err_ptr, done_ptr, n, m, inv_eps, check,
                BR: tl.constexpr, BC: tl.constexpr):
    """fn = -LSE_j(lb_j + G_j - C_ij/eps) for BR rows; err_i = a_i |exp(F_i - fn_i) - 1| when check."""
    p, block = _problem_and_block(n, BR)
    rows = block * BR + tl.arange(0, BR)
    rmask = rows < n
    if tl.load(done_ptr + p) == 0:
        mx = tl.full([BR], -1.0e30, dtype=tl.float32)
        s = tl.zeros([BR], dtype=tl.float32)
        for c0 in range(0, m, BC):
            cols = c0 + tl.arange(0, BC)
            cmask = cols < m
            Cs = tl.load(C_ptr + p * n * m + rows[:, None] * m + cols[None, :],
                         mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32) * inv_eps
            w = tl.load(lb_ptr + p * m + cols, mask=cmask, other=-1.0e30) + \
                tl.load(g_ptr + p * m + cols, mask=cmask, other=0.0)
            X = w[None, :] - Cs
            new_mx = tl.maximum(mx, tl.max(X, axis=1))
            s = s * tl.exp(mx - new_mx) + tl.sum(tl.exp(X - new_mx[:, None]), axis=1)
            mx = new_mx
        F_new = tl.where(rmask, -(mx + tl.log(s)), 0.0)
        tl.store(fn_ptr + p * n + rows, F_new, mask=rmask)
        if check != 0:
            F = tl.load(f_ptr + p * n + rows, mask=rmask, other=0.0)
            a = tl.load(a_ptr + p * n + rows, mask=rmask, other=0.0)
            tl.store(err_ptr + p * n + rows, a * tl.abs(tl.exp(F - F_new) - 1.0), mask=rmask)


@triton.jit(do_not_specialize=["n", "m"])
def _col_kernel(C_ptr, la_ptr, f_ptr, g_ptr, done_ptr, n, m, inv_eps, BR: tl.constexpr, BC: tl.constexpr):
    """G_j = -LSE_i(la_i + F_i - C_ij/eps) for BC columns, skipped for finished problems."""
    p, block = _problem_and_block(m, BC)
    cols = block * BC + tl.arange(0, BC)
    cmask = cols < m
    if tl.load(done_ptr + p) == 0:
        my = tl.full([BC], -1.0e30, dtype=tl.float32)
        s = tl.zeros([BC], dtype=tl.float32)
        for r0 in range(0, n, BR):
            rows = r0 + tl.arange(0, BR)
            rmask = rows < n
            Cs = tl.load(C_ptr + p * n * m + rows[:, None] * m + cols[None, :],
                         mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32) * inv_eps
            w = tl.load(la_ptr + p * n + rows, mask=rmask, other=-1.0e30) + \
                tl.load(f_ptr + p * n + rows, mask=rmask, other=0.0)
            Y = w[:, None] - Cs
            new_my = tl.maximum(my, tl.max(Y, axis=0))
            s = s * tl.exp(my - new_my) + tl.sum(tl.exp(Y - new_my[None, :]), axis=0)
            my = new_my
        tl.store(g_ptr + p * m + cols, tl.where(cmask, -(my + tl.log(s)), 0.0), mask=cmask)


@triton.jit
def _cost_tile(C_ptr, p, n, m, rows, rmask, c0, BC: tl.constexpr):
    """Columns c0 .. c0 + BC of problem p's rows ``rows``: (cols, cmask, mask, offsets,
    the cost tile in fp32), as the plan kernels below walk a row block."""
    cols = c0 + tl.arange(0, BC)
    cmask = cols < m
    mask = rmask[:, None] & cmask[None, :]
    offs = p * n * m + rows[:, None] * m + cols[None, :]
    return cols, cmask, mask, offs, tl.load(C_ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit(do_not_specialize=["n", "m", "write_plan"])
def _plan_cost_kernel(C_ptr, la_ptr, lb_ptr, f_ptr, g_ptr, rowcost_ptr, plan_ptr, n, m, inv_eps, write_plan,
                      BR: tl.constexpr, BC: tl.constexpr):
    """rowcost_i = sum_j plan_ij C_ij (and the plan itself when write_plan)."""
    p, block = _problem_and_block(n, BR)
    rows = block * BR + tl.arange(0, BR)
    rmask = rows < n
    u = tl.load(la_ptr + p * n + rows, mask=rmask, other=-1.0e30) + \
        tl.load(f_ptr + p * n + rows, mask=rmask, other=0.0)
    acc = tl.zeros([BR], dtype=tl.float32)
    for c0 in range(0, m, BC):
        cols, cmask, mask, offs, C = _cost_tile(C_ptr, p, n, m, rows, rmask, c0, BC)
        v = tl.load(lb_ptr + p * m + cols, mask=cmask, other=-1.0e30) + \
            tl.load(g_ptr + p * m + cols, mask=cmask, other=0.0)
        plan = tl.where(mask, tl.exp(u[:, None] + v[None, :] - C * inv_eps), 0.0)
        acc += tl.sum(plan * C, axis=1)
        if write_plan != 0:
            tl.store(plan_ptr + offs, plan, mask=mask)
    tl.store(rowcost_ptr + p * n + rows, acc, mask=rmask)


def fused_config(n: int, m: int) -> dict:
    """Which one-launch kernel runs an (n, m) problem, with its launch parameters."""
    bn, bm = block_width(n), block_width(m)
    if bn * bm <= RESIDENT_TILE:
        return dict(kernel="resident", BN=bn, BM=bm, num_warps=min(16, max(4, bn * bm // 256)))
    return dict(kernel="streamed", BR=max(16, min(bn, STREAM_TILE // bm)), BM=bm, num_warps=8)


# The streamed kernel is bound by latency, not bandwidth: one program per problem
# walks 2 * ceil(n / BR) dependent row-block steps per iteration (each a
# max/sum reduction across the program), so taller blocks over more warps cut
# the sequential steps -- until registers run out. The GPU times these
# candidates per (n, m); the shipped configuration (fused_config) runs where
# nothing is timed. ptxas (sm_80/sm_90) keeps a block of up to 8192 elements
# in registers at 8 warps (32 per thread, ~250 registers) and at 16 warps (16
# per thread, 128 registers, the cap at that warp count); beyond that, or at 32
# warps (64 registers per thread), it spills hundreds of bytes.
STREAM_CANDIDATES = [triton.Config(dict(BR=br), num_warps=w, num_stages=1)
                     for br, w in ((16, 8), (32, 8), (64, 8), (128, 8), (64, 16), (128, 16), (256, 16))]
STREAM_MAX_BLOCK = 8192


def _fits(br: int, n: int, bm: int) -> bool:
    return br <= block_width(n) and br * bm <= STREAM_MAX_BLOCK


def _prune_streamed(configs: list, args: dict) -> list:
    return [c for c in configs if _fits(c.kwargs["BR"], args["n"], args["BM"])]


streamed_kernel = TunedKernel(_sinkhorn_streamed_kernel, STREAM_CANDIDATES, key=["n", "m"], prune=_prune_streamed,
                              reset_to_zero=["f_ptr"])


def _launch_fused(cost, a, b, eps, max_iters, tol, return_plan, config: triton.Config | None = None):
    """``config`` forces a streamed-kernel candidate (tests)."""
    P, n, m = cost.shape
    cfg = fused_config(n, m)
    la, lb, f, g, total, n_iters, plan = fused_buffers(cost, a, b, return_plan, zero_f=cfg["kernel"] == "streamed")
    plan_arg = total if plan is None else plan  # a placeholder the kernel does not write
    check = int(tol is not None)
    tol_ = float(tol) if tol is not None else 0.0
    if cfg["kernel"] == "resident":
        _sinkhorn_resident_kernel[(P,)](cost, la, lb, a, f, g, total, plan_arg, n_iters, n, m, float(eps), tol_,
                                        max_iters, check, int(return_plan), BN=cfg["BN"], BM=cfg["BM"],
                                        num_warps=cfg["num_warps"], **COMPILE_OPTIONS)
    else:
        fn = torch.empty_like(f)
        streamed_kernel.launch(lambda meta: (P,), cost, la, lb, a, f, g, fn, total, plan_arg, n_iters, n, m,
                               float(eps), tol_, max_iters, check, int(return_plan), BM=cfg["BM"], config=config,
                               fallback=dict(BR=cfg["BR"], num_warps=cfg["num_warps"], num_stages=1))
    return f, g, total, plan, n_iters


class _TritonTiled:
    """The three kernels of the tiled path, in the interface _driver.run_tiled expects."""

    def __init__(self, cost, inv_eps):
        self.cost, self.inv_eps = cost, inv_eps
        self.P, self.n, self.m = cost.shape

    def rows(self, lb, G, F, Fn, a, err, done, check):
        grid = (self.P * cdiv(self.n, TILED_BR),)
        _row_kernel[grid](self.cost, lb, G, F, Fn, a, err, done, self.n, self.m, self.inv_eps, int(check),
                          BR=TILED_BR, BC=TILED_BC, num_warps=TILED_WARPS, **COMPILE_OPTIONS)

    def cols(self, la, F, G, done):
        grid = (self.P * cdiv(self.m, TILED_BC),)
        _col_kernel[grid](self.cost, la, F, G, done, self.n, self.m, self.inv_eps, BR=TILED_BR, BC=TILED_BC,
                          num_warps=TILED_WARPS, **COMPILE_OPTIONS)

    def plan_cost(self, la, lb, F, G, rowcost, plan):
        grid = (self.P * cdiv(self.n, TILED_BR),)
        _plan_cost_kernel[grid](self.cost, la, lb, F, G, rowcost, rowcost if plan is None else plan, self.n,
                                self.m, self.inv_eps, int(plan is not None), BR=TILED_BR, BC=TILED_BC,
                                num_warps=TILED_WARPS, **COMPILE_OPTIONS)


@triton.jit(do_not_specialize=["n", "m"])
def _cost_grad_kernel(C_ptr, a_ptr, b_ptr, f_ptr, g_ptr, grad_ptr, out_ptr, n, m, inv_eps,
                      BR: tl.constexpr, BC: tl.constexpr):
    """out = grad_p * plan, plan_ij = exp((f_i + g_j - C_ij) / eps + log a_i + log b_j):
    backward's d cost / d C in one launch (the torch formulation is ~10). A zero
    marginal entry gives log 0 = -inf and a zero plan row, as in reference.py."""
    p, block = _problem_and_block(n, BR)
    rows = block * BR + tl.arange(0, BR)
    rmask = rows < n
    u = tl.load(f_ptr + p * n + rows, mask=rmask, other=0.0) * inv_eps + \
        tl.log(tl.load(a_ptr + p * n + rows, mask=rmask, other=1.0))
    scale = tl.load(grad_ptr + p).to(tl.float32)
    for c0 in range(0, m, BC):
        cols, cmask, mask, offs, C = _cost_tile(C_ptr, p, n, m, rows, rmask, c0, BC)
        v = tl.load(g_ptr + p * m + cols, mask=cmask, other=0.0) * inv_eps + \
            tl.log(tl.load(b_ptr + p * m + cols, mask=cmask, other=1.0))
        plan = tl.exp(u[:, None] + v[None, :] - C * inv_eps)
        tl.store(out_ptr + offs, (scale * plan).to(out_ptr.dtype.element_ty), mask=mask)


def cost_grad_triton(cost, a, b, f, g, eps, grad_cost):
    """grad_cost[p] * plan[p] in cost's dtype; a, b, f, g, grad_cost float32."""
    P, n, m = cost.shape
    out = torch.empty_like(cost)
    _cost_grad_kernel[(P * cdiv(n, TILED_BR),)](
        cost, a.to(torch.float32).contiguous(), b.to(torch.float32).contiguous(), f, g, grad_cost.contiguous(), out,
        n, m, 1.0 / eps, BR=TILED_BR, BC=TILED_BC, num_warps=TILED_WARPS, **COMPILE_OPTIONS)
    return out


def sinkhorn_triton(cost, a, b, eps, max_iters, tol=None, check_every=10, return_plan=False):
    """Same contract as sinkhorn_reference; a, b float32 [P,n]/[P,m], cost contiguous."""
    a = a.to(torch.float32).contiguous()
    b = b.to(torch.float32).contiguous()
    P, n, m = cost.shape
    if n <= FUSED_MAX and m <= FUSED_MAX:
        return _launch_fused(cost, a, b, eps, max_iters, tol, return_plan)
    return run_tiled(_TritonTiled(cost, 1.0 / eps), cost, a, b, eps, max_iters, tol, check_every, return_plan)


def aot_variants() -> list[dict]:
    """Every kernel configuration the dispatcher can launch, for the AOT compile check."""
    out = []
    fused_common = {"la_ptr": "*fp32", "lb_ptr": "*fp32", "a_ptr": "*fp32", "f_ptr": "*fp32", "g_ptr": "*fp32"}
    tail = {"cost_ptr": "*fp32", "plan_ptr": "*fp32", "iters_ptr": "*i32", "n": "i32", "m": "i32",
            "eps": "fp32", "tol": "fp32", "max_iters": "i32", "check": "i32", "write_plan": "i32"}
    sizes = [16, 32, 64, 128, 256]
    for dt, triton_type in FLOAT_TYPES.items():
        ptr = "*" + triton_type
        name = str(dt).replace("torch.", "")
        seen = set()
        for n in sizes:
            for m in sizes:
                cfg = fused_config(n, m)
                if cfg["kernel"] == "resident":
                    key = ("resident", cfg["BN"], cfg["BM"], cfg["num_warps"])
                    if key not in seen:
                        seen.add(key)
                        out.append(dict(name=f"sinkhorn_resident_{name}_{cfg['BN']}x{cfg['BM']}",
                                        kernel=_sinkhorn_resident_kernel, signature={"C_ptr": ptr, **fused_common, **tail},
                                        constexprs={"BN": cfg["BN"], "BM": cfg["BM"]}, num_warps=cfg["num_warps"],
                                        num_stages=1))
                    continue
                # the shipped configuration and every launch candidate the timing may pick
                launches = [(cfg["BR"], cfg["num_warps"])] + [
                    (c.kwargs["BR"], c.num_warps) for c in streamed_kernel.candidates(n=n, BM=cfg["BM"])]
                for br, warps in launches:
                    key = ("streamed", br, cfg["BM"], warps)
                    if key in seen:
                        continue
                    seen.add(key)
                    out.append(dict(name=f"sinkhorn_streamed_{name}_{br}x{cfg['BM']}_w{warps}",
                                    kernel=_sinkhorn_streamed_kernel,
                                    signature={"C_ptr": ptr, **fused_common, "fn_ptr": "*fp32", **tail},
                                    constexprs={"BR": br, "BM": cfg["BM"]}, num_warps=warps, num_stages=1))
        tiled = {"BR": TILED_BR, "BC": TILED_BC}
        out.append(dict(name=f"sinkhorn_rows_{name}", kernel=_row_kernel, constexprs=tiled, num_warps=TILED_WARPS,
                        num_stages=1, signature={"C_ptr": ptr, "lb_ptr": "*fp32", "g_ptr": "*fp32", "f_ptr": "*fp32",
                                                 "fn_ptr": "*fp32", "a_ptr": "*fp32", "err_ptr": "*fp32",
                                                 "done_ptr": "*i32", "n": "i32", "m": "i32", "inv_eps": "fp32",
                                                 "check": "i32"}))
        out.append(dict(name=f"sinkhorn_cols_{name}", kernel=_col_kernel, constexprs=tiled, num_warps=TILED_WARPS,
                        num_stages=1, signature={"C_ptr": ptr, "la_ptr": "*fp32", "f_ptr": "*fp32", "g_ptr": "*fp32",
                                                 "done_ptr": "*i32", "n": "i32", "m": "i32", "inv_eps": "fp32"}))
        out.append(dict(name=f"sinkhorn_cost_grad_{name}", kernel=_cost_grad_kernel, constexprs=tiled,
                        num_warps=TILED_WARPS, num_stages=1,
                        signature={"C_ptr": ptr, "a_ptr": "*fp32", "b_ptr": "*fp32", "f_ptr": "*fp32",
                                   "g_ptr": "*fp32", "grad_ptr": "*fp32", "out_ptr": ptr, "n": "i32", "m": "i32",
                                   "inv_eps": "fp32"}))
        out.append(dict(name=f"sinkhorn_plan_cost_{name}", kernel=_plan_cost_kernel, constexprs=tiled, num_warps=TILED_WARPS,
                        num_stages=1, signature={"C_ptr": ptr, "la_ptr": "*fp32", "lb_ptr": "*fp32", "f_ptr": "*fp32",
                                                 "g_ptr": "*fp32", "rowcost_ptr": "*fp32", "plan_ptr": "*fp32",
                                                 "n": "i32", "m": "i32", "inv_eps": "fp32", "write_plan": "i32"}))
    return out
