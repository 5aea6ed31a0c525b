"""sinkhorn: P batched entropic OT problems, log domain, fixed iteration count.

naive: a PyTorch loop of log-sum-exp updates, differentiated by unrolling the
iterations through autograd (how such loops are used). Its gradient is the
derivative of the unrolled loop, a different quantity from rdkernels' envelope
gradient (d cost / dC = plan), so only its forward is checked.
Peers, where installed: POT (ot.sinkhorn2, log-domain, one problem at a time,
gradient by autodiff through its iterations, so only its forward is checked)
and geomloss (SamplesLoss, tensorized, batched; it takes points, so the cost is
built as |x - y|^2 / 2 = 1 - cos of unit vectors, and it returns the dual value
<a, f> + <b, g>, with its own eps-scaling schedule).
cuda: the CUDA backend as shipped, which runs n, m <= 128 on its register-resident
kernel; cuda-shared: the same problems on its shared-memory kernel
(RDKERNELS_SINKHORN_REGISTERS=0, the default before), for comparison;
benchmarks.targets does not count it.
geomloss-fixed: geomloss at equal iterations. geomloss's own tensorized
log-domain loop (sinkhorn_loop with softmin_tensorized, the loop behind
SamplesLoss(backend="tensorized")) run on the same batched cost C [P, n, m]
with uniform marginals and eps_list = [eps] * iters: no annealing, a single
scale (no jumps, truncation or extrapolation), debias=False. Conventions match
rdkernels' exactly: geomloss's softmin is f_i = -eps log sum_j b_j exp((g_j -
C_ij) / eps) on the matrix as given (the |x - y|^p / p scaling only applies when
geomloss builds C from points), so eps is POT's reg, and its potentials follow
plan = a_i b_j exp((f_i + g_j - C_ij) / eps). The loop differs in its updates:
symmetric (f, g averaged with their Sinkhorn updates, both in parallel), started
from one softmin at eps, ended by one full parallel step; so at equal iterations
it sits at a slightly different point of the convergence (<plan, C> within ~1e-5
relative at 64 x 64, eps 0.05, 100 iterations). Compared with the reference:
"cost" (<plan, C> of geomloss's plan, computed from its potentials as
geomloss.ot does) and "dual" (geomloss's sinkhorn_cost, <a, f> + <b, g>); the
raw potentials carry a different additive constant, so they are not compared.
Backward: geomloss's own autograd on the dual through its last step (the loop
runs without autograd), with the transposed cost detached as SamplesLoss does,
gives d dual / dC = its last plan, the envelope gradient rdkernels computes; it
equals rdkernels' plan only at convergence (~3e-3 relative to the largest entry
at 64 x 64, eps 0.05, 100 iterations), so it is timed but only the forward is
checked.

rdkernels runs with check_inputs=False: its finiteness check costs a host
sync per call, which the naive loop does not make.

Floor: read C once and write f, g (forward); read C and write dC (backward);
the 4 elementwise flops per entry and half-iteration are counted at the
matmul rate, which makes the compute floor loose (exp is slower).
"""
from __future__ import annotations

import contextlib
import importlib
import os

import torch

from benchmarks import naive
from benchmarks.ops._common import dtype_of, elt, generator, unit_rows
from benchmarks.registry import (Case, Floor, Impl, OpBench, backend_impls, cuda_unavailable, module_missing,
                                 peer_missing, register)


@contextlib.contextmanager
def _register_kernel(on: bool | None):
    """The CUDA backend's register-resident kernel (RDKERNELS_SINKHORN_REGISTERS) on or
    off for the calls inside, or (None) as shipped, whatever the environment says;
    read per call by the op."""
    from rdkernels.ops.sinkhorn.cuda import REGISTERS_ENV
    saved = os.environ.get(REGISTERS_ENV)
    if on is None:
        os.environ.pop(REGISTERS_ENV, None)
    else:
        os.environ[REGISTERS_ENV] = "1" if on else "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(REGISTERS_ENV, None)
        else:
            os.environ[REGISTERS_ENV] = saved


def _geomloss_loop():
    """geomloss's tensorized Sinkhorn pieces: (sinkhorn_loop, softmin_tensorized,
    sinkhorn_cost). geomloss >= 0.3 keeps them under _legacy, 0.2 at the top."""
    for pkg in ("geomloss._legacy", "geomloss"):
        try:
            div = importlib.import_module(f"{pkg}.sinkhorn_divergence")
            samples = importlib.import_module(f"{pkg}.sinkhorn_samples")
            return div.sinkhorn_loop, samples.softmin_tensorized, div.sinkhorn_cost
        except (ImportError, AttributeError):
            continue
    raise ImportError("geomloss has no tensorized sinkhorn_loop (sinkhorn_divergence / sinkhorn_samples)")


def _geomloss_loop_missing(device):
    reason = peer_missing("geomloss")(device)
    if reason is None:
        try:
            _geomloss_loop()
        except ImportError as exc:
            reason = str(exc)
    return reason


@register
class Sinkhorn(OpBench):
    name = "sinkhorn"
    description = "batched log-domain Sinkhorn: potentials, <plan, C>, envelope gradient"
    loss_key = "cost"
    x_param = "n"
    plot_ignore = ("m",)

    def unavailable(self):
        return module_missing("rdkernels.ops.sinkhorn", "sinkhorn")

    def _rdk(self, backend, registers=None):
        def prepare(inp):
            from rdkernels.ops.sinkhorn import sinkhorn
            C, eps, iters = inp["C"], inp["eps"], inp["iters"]

            def run():
                with _register_kernel(registers):
                    res = sinkhorn(C, eps=eps, max_iters=iters, backend=backend, check_inputs=False)
                return {"cost": res.cost, "f": res.f, "g": res.g}
            return run
        return prepare

    @staticmethod
    def _naive(inp):
        C, a, b, eps, iters = inp["C"], inp["a"], inp["b"], inp["eps"], inp["iters"]

        def run():
            f, g, _, total = naive.sinkhorn_loop(C, a.to(C.dtype), b.to(C.dtype), eps, iters)
            return {"cost": total, "f": f, "g": g}
        return run

    @staticmethod
    def _reference(inp):
        C, a, b, eps, iters = inp["C"], inp["a"], inp["b"], inp["eps"], inp["iters"]

        def run():
            f, g, total = naive.sinkhorn_reference(C, a.to(C.dtype), b.to(C.dtype), eps, iters)
            return {"cost": total, "f": f, "g": g}
        return run

    @staticmethod
    def _pot(inp):
        import ot
        C, a, b, eps, iters = inp["C"], inp["a"], inp["b"], inp["eps"], inp["iters"]

        def run():
            costs = [ot.sinkhorn2(a[p].to(C.dtype), b[p].to(C.dtype), C[p], eps, method="sinkhorn_log",
                                  numItermax=iters, stopThr=0.0) for p in range(C.shape[0])]
            return {"cost": torch.stack(costs)}
        return run

    @staticmethod
    def _geomloss(inp):
        from geomloss import SamplesLoss
        x, y, eps = inp["x"], inp["y"], inp["eps"]
        xg = x.detach().clone().requires_grad_(True)
        loss = SamplesLoss("sinkhorn", p=2, blur=eps ** 0.5, debias=False, backend="tensorized")
        return lambda: {"dual": loss(xg, y), "grad_targets": [xg]}

    @staticmethod
    def _geomloss_fixed(inp):
        sinkhorn_loop, softmin, sinkhorn_cost = _geomloss_loop()
        C, a, b, eps, iters = inp["C"], inp["a"], inp["b"], inp["eps"], inp["iters"]
        a, b = a.to(C.dtype), b.to(C.dtype)
        eps_list = [eps] * iters

        def run():
            grad_was = torch.is_grad_enabled()   # the loop leaves autograd on
            try:
                # C_yx detached (SamplesLoss detaches the other side too): the gradient
                # to C comes from f's last step only, d <a, f> / dC = plan.
                _, _, g, f = sinkhorn_loop(softmin, a.log(), b.log(), None, None, C,
                                           C.detach().transpose(1, 2).contiguous(), eps_list, None,
                                           debias=False)
            finally:
                torch.set_grad_enabled(grad_was)
            dual = sinkhorn_cost(eps, None, a, b, None, None, g, f, batch=True, debias=False)
            with torch.no_grad():   # geomloss.ot's plan: a_i b_j exp((f_i + g_j - C_ij) / eps)
                plan = a[:, :, None] * b[:, None, :] * torch.exp((f[:, :, None] + g[:, None, :] - C) / eps)
                cost = (plan * C).sum(dim=(1, 2))
            return {"cost": cost, "dual": dual}
        return run

    def implementations(self):
        return [
            # fwd_no_grad: forward-only rows time the loop, not the unrolled graph it
            # would record for a backward (rdkernels records none through its iterations)
            Impl("naive", self._naive, kind="naive", check="forward", fwd_no_grad=True,
                 note="gradient by unrolled autograd: forward checked only"),
            *backend_impls(self._rdk, "sinkhorn"),
            # Not what a user gets: its name has no "cuda:" prefix, so benchmarks.targets
            # does not count it.
            Impl("cuda-shared", self._rdk("cuda", registers=False), unavailable=cuda_unavailable("sinkhorn"),
                 note="CUDA shared-memory kernel at n, m <= 128 (RDKERNELS_SINKHORN_REGISTERS=0), the former default"),
            Impl("pot", self._pot, kind="peer", unavailable=peer_missing("ot"), check="forward", rtol_scale=10,
                 fwd_no_grad=True, note="POT sinkhorn2 (log), a loop over problems; autodiff gradient: forward checked only"),
            Impl("geomloss", self._geomloss, kind="peer", unavailable=peer_missing("geomloss"), check="forward",
                 rtol_scale=10, loss_key="dual",
                 note="geomloss dual value <a,f>+<b,g>, own eps-scaling; gradient to the points"),
            Impl("geomloss-fixed", self._geomloss_fixed, kind="peer", unavailable=_geomloss_loop_missing,
                 check="forward", rtol_scale=10, loss_key="dual",
                 note="geomloss's tensorized loop at fixed eps, same iterations; <plan,C> and dual checked, "
                      "envelope gradient to C timed only"),
        ]

    def reference(self):
        return Impl("reference", self._reference, kind="reference")

    def cases(self, size, preset):
        base = dict(d=32, dtype="float32")
        if size == "tiny":
            grid = [dict(P=2, n=8, m=8, eps=0.1, iters=10)]
        elif size == "quick" or preset is not None:
            # P=1, 64 x 64: WCoRD's local term at batch 64; P=16: a batch of small problems;
            # P=64, 128 x 128: the headline configuration (64 problems, 100 iterations).
            grid = [dict(P=p, n=64, m=64, eps=0.05, iters=100) for p in (1, 16)]
            grid.append(dict(P=64, n=128, m=128, eps=0.05, iters=100))
        else:
            # Capped at 4M cost entries: the naive loop's unrolled graph keeps
            # several [P, n, m] tensors per iteration for its backward.
            grid = [dict(P=p, n=n, m=n, eps=0.05, iters=100) for p in (1, 16, 64) for n in (64, 256, 1024)
                    if p * n * n <= 64 * 256 * 256]
            grid += [dict(P=16, n=256, m=256, eps=e, iters=100) for e in (0.01, 0.1)]
            grid += [dict(P=16, n=256, m=256, eps=0.05, iters=i) for i in (20, 500)]
        grid = [dict(base, **g) for g in grid]
        return [Case(f"P={g['P']} n={g['n']} m={g['m']} eps={g['eps']} it={g['iters']}", g, preset) for g in grid]

    def make_inputs(self, case, device, seed):
        p = case.params
        gen = generator(device, seed)
        x = unit_rows(p["P"] * p["n"], p["d"], torch.float32, device, gen).view(p["P"], p["n"], p["d"])
        y = unit_rows(p["P"] * p["m"], p["d"], torch.float32, device, gen).view(p["P"], p["m"], p["d"])
        C = (1.0 - torch.bmm(x, y.transpose(1, 2))).to(dtype_of(p["dtype"])).requires_grad_(True)
        a = torch.full((p["P"], p["n"]), 1.0 / p["n"], device=device)
        b = torch.full((p["P"], p["m"]), 1.0 / p["m"], device=device)
        return {"C": C, "a": a, "b": b, "x": x, "y": y, "eps": p["eps"], "iters": p["iters"]}

    def grad_inputs(self, inputs, out):
        return out.get("grad_targets") or [inputs["C"]]

    def check_outputs(self, inputs, out):
        view = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        if "f" in out and "g" in out:   # the dual value, to compare with geomloss
            a, b = inputs["a"].to(out["f"].dtype), inputs["b"].to(out["g"].dtype)
            view["dual"] = (a * out["f"]).sum(1) + (b * out["g"]).sum(1)
        return view

    def floor(self, case, mode):
        p = case.params
        P, n, m, it = p["P"], p["n"], p["m"], p["iters"]
        c = P * n * m * elt(dtype_of(p["dtype"]))
        fg = P * (n + m) * 4 + P * 4
        if mode == "fwd":
            return Floor(c + fg, 8.0 * it * P * n * m, torch.float32, "C read once; 8 flops/entry/iteration")
        if mode == "bwd":
            return Floor(2 * c, 4.0 * P * n * m, torch.float32, "C read, dC = plan written")
        return Floor(2 * c + fg, 8.0 * it * P * n * m + 4.0 * P * n * m, torch.float32,
                     "C read once, dC written")
