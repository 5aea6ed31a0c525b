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

Floor: read C once and write f, g (forward); read C and write dC (backward);
the 4 elementwise flops per entry and half-iteration are counted at the
matmul rate, which makes the compute floor loose (exp is slower).
"""
from __future__ import annotations

import torch

from benchmarks import naive
from benchmarks.ops._common import dtype_of, elt, generator, unit_rows
from benchmarks.registry import (Case, Floor, Impl, OpBench, cuda_unavailable, module_missing, peer_missing,
                                 register, triton_unavailable)


@register
class Sinkhorn(OpBench):
    name = "sinkhorn"
    description = "batched log-domain Sinkhorn: potentials, <plan, C>, envelope gradient"
    loss_key = "cost"
    x_param = "n"
    plot_ignore = ("m",)

    def unavailable(self):
        return module_missing("rdkernels.ops.sinkhorn", "sinkhorn")

    def _rdk(self, backend):
        def prepare(inp):
            from rdkernels.ops.sinkhorn import sinkhorn
            C, eps, iters = inp["C"], inp["eps"], inp["iters"]

            def run():
                res = sinkhorn(C, eps=eps, max_iters=iters, backend=backend)
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

    def implementations(self):
        return [
            Impl("naive", self._naive, kind="naive", check="forward",
                 note="gradient by unrolled autograd: forward checked only"),
            Impl("torch", self._rdk("torch")),
            Impl("triton", self._rdk("triton"), unavailable=triton_unavailable),
            Impl("cuda", self._rdk("cuda"), unavailable=cuda_unavailable("sinkhorn")),
            Impl("pot", self._pot, kind="peer", unavailable=peer_missing("ot"), check="forward", rtol_scale=10,
                 note="POT sinkhorn2 (log), a loop over problems; autodiff gradient: forward checked only"),
            Impl("geomloss", self._geomloss, kind="peer", unavailable=peer_missing("geomloss"), check="forward",
                 rtol_scale=10, loss_key="dual",
                 note="geomloss dual value <a,f>+<b,g>, own eps-scaling; gradient to the points"),
        ]

    def reference(self):
        return Impl("reference", self._reference, kind="reference")

    def cases(self, size, preset):
        base = dict(d=32, dtype="float32")
        if size == "tiny":
            grid = [dict(P=2, n=8, m=8, eps=0.1, iters=10)]
        elif size == "quick" or preset is not None:
            # P=1, 64 x 64: WCoRD's local term at batch 64; P=16: a batch of small problems.
            grid = [dict(P=p, n=64, m=64, eps=0.05, iters=100) for p in (1, 16)]
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
