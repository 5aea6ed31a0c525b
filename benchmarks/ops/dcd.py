"""dcd_loss: DCD's in-batch B x B contrast + consistency loss.

naive: the reference DCD formula: logits = z_s z_t^T * clamp(exp(tau)) + bias,
cross-entropy, log_softmax/softmax over rows and columns, kl_div, autograd.
Floor: read z_s, z_t, write their gradients; one B x B x d GEMM forward,
three (logits, dz_s, dz_t) forward+backward.
"""
from __future__ import annotations

import torch

from benchmarks import naive
from benchmarks.ops._common import dtype_of, elt, generator, unit_rows
from benchmarks.registry import Case, Floor, Impl, OpBench, backend_impls, module_missing, register

ALPHA = 0.5


@register
class DCD(OpBench):
    name = "dcd"
    description = "DCD: in-batch logits, CE + alpha * KL(column softmax || row softmax)"
    x_param = "B"

    def unavailable(self):
        return module_missing("rdkernels.ops.dcd", "dcd_loss")

    def _rdk(self, backend):
        def prepare(inp):
            from rdkernels.ops.dcd import dcd_loss
            z_s, z_t, tau, bias = inp["z_s"], inp["z_t"], inp["tau"], inp["bias"]
            return lambda: {"loss": dcd_loss(z_s, z_t, tau, bias, alpha=ALPHA, backend=backend)}
        return prepare

    def implementations(self):
        def naive_prepare(inp):
            z_s, z_t, tau, bias = inp["z_s"], inp["z_t"], inp["tau"], inp["bias"]
            return lambda: {"loss": naive.dcd_loss(z_s, z_t, tau, bias, alpha=ALPHA)}
        return [
            Impl("naive", naive_prepare, kind="naive"),
            *backend_impls(self._rdk, "dcd_loss"),
        ]


    def cases(self, size, preset):
        if size == "tiny":
            grid = [dict(B=8, d=32, dtype="float32")]
        elif preset == "cifar":
            grid = [dict(B=64, d=128, dtype=dt) for dt in ("float32", "bfloat16")]
        elif preset == "imagenet":
            grid = [dict(B=256, d=128, dtype=dt) for dt in ("float32", "bfloat16")]
        elif size == "quick":
            grid = [dict(B=b, d=128, dtype="float32") for b in (64, 256)]
        else:
            grid = [dict(B=b, d=128, dtype=dt) for dt in ("float32", "bfloat16")
                    for b in (64, 128, 256, 512, 1024, 2048)]
        return [Case(f"B={g['B']} d={g['d']} {g['dtype']}", g, preset) for g in grid]

    def make_inputs(self, case, device, seed):
        p = case.params
        gen = generator(device, seed)
        dtype = dtype_of(p["dtype"])
        z_s = unit_rows(p["B"], p["d"], dtype, device, gen).requires_grad_(True)
        z_t = unit_rows(p["B"], p["d"], dtype, device, gen).requires_grad_(True)
        tau = torch.full((1,), 1.0, device=device, requires_grad=True)
        bias = torch.zeros(1, device=device, requires_grad=True)
        return {"z_s": z_s, "z_t": z_t, "tau": tau, "bias": bias}

    def grad_inputs(self, inputs, out):
        return [inputs["z_s"], inputs["z_t"], inputs["tau"], inputs["bias"]]

    def floor(self, case, mode):
        p = case.params
        B, d = p["B"], p["d"]
        e = elt(dtype_of(p["dtype"]))
        z = 2 * B * d * e
        if mode == "fwd":
            return Floor(z, 2.0 * B * B * d, dtype_of(p["dtype"]), "z read; logits GEMM")
        if mode == "bwd":
            return Floor(2 * B * d * 4, 2 * B * d, torch.float32, "gradients kept from the forward, scaled")
        return Floor(z + 2 * B * d * 4, 6.0 * B * B * d, dtype_of(p["dtype"]), "z read, dz written; 3 GEMMs")
