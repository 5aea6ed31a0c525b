"""shared_bank_contrast: student and teacher queries against a whole shared
queue (RRD): -sum_k softmax(q_t Q^T / tau_t) log_softmax(q_s Q^T / tau_s).

naive: the reference RRD formula: two [B, N] matmuls, softmax, log_softmax,
product, sum, mean, with autograd.
Floor: read the queue once and both query blocks, write dq_s; 2 GEMMs of
2*B*N*d flops forward, a third for dq_s.
"""
from __future__ import annotations

import torch

from benchmarks import naive
from benchmarks.ops._common import PRESETS, dtype_of, elt, generator, unit_rows
from benchmarks.registry import Case, Floor, Impl, OpBench, backend_impls, module_missing, register

TAU_S, TAU_T = 0.02, 0.1   # RRD's documented pair (student sharper)


@register
class SharedBankContrast(OpBench):
    name = "shared_bank_contrast"
    description = "RRD: queries against every queue row, two softmaxes, cross-entropy, no [B, N] matrix"
    x_param = "N"

    def unavailable(self):
        return module_missing("rdkernels.ops.shared_bank_contrast", "shared_bank_contrast")

    def _rdk(self, backend):
        def prepare(inp):
            from rdkernels.ops.shared_bank_contrast import shared_bank_contrast
            q_s, q_t, queue = inp["q_s"], inp["q_t"], inp["queue"]
            return lambda: {"loss": shared_bank_contrast(q_s, q_t, queue, tau_s=TAU_S, tau_t=TAU_T,
                                                         reduction="mean", backend=backend)}
        return prepare

    def implementations(self):
        def naive_prepare(inp):
            q_s, q_t, queue = inp["q_s"], inp["q_t"], inp["queue"]
            return lambda: {"loss": naive.rrd_loss(q_s, q_t, queue, TAU_S, TAU_T)}
        return [
            Impl("naive", naive_prepare, kind="naive"),
            *backend_impls(self._rdk, "shared_bank_contrast"),
        ]


    def cases(self, size, preset):
        if size == "tiny":
            grid = [dict(B=4, N=64, d=32, dtype="float32")]
        elif preset is not None:   # RRD's queue is 16384 on both datasets
            grid = [dict(B=PRESETS[preset]["B"], N=16_384, d=128, dtype=dt) for dt in ("float32", "bfloat16")]
        elif size == "quick":
            grid = [dict(B=64, N=16_384, d=128, dtype="float32")]
        else:
            grid = [dict(B=b, N=n, d=128, dtype=dt) for b in (64, 256, 1024) for dt in ("float32", "bfloat16")
                    for n in (4096, 16_384, 65_536)]
        return [Case(f"B={g['B']} N={g['N']} d={g['d']} {g['dtype']}", g, preset) for g in grid]

    def make_inputs(self, case, device, seed):
        p = case.params
        gen = generator(device, seed)
        dtype = dtype_of(p["dtype"])
        q_s = unit_rows(p["B"], p["d"], dtype, device, gen).requires_grad_(True)
        q_t = unit_rows(p["B"], p["d"], dtype, device, gen)
        queue = unit_rows(p["N"], p["d"], dtype, device, gen)
        return {"q_s": q_s, "q_t": q_t, "queue": queue}

    def grad_inputs(self, inputs, out):
        return [inputs["q_s"]]

    def floor(self, case, mode):
        p = case.params
        B, N, d = p["B"], p["N"], p["d"]
        e = elt(dtype_of(p["dtype"]))
        if mode == "bwd":
            return Floor(2 * B * d * 4, B * d, torch.float32, "dq kept from the forward, scaled")
        gemms = 2 if mode == "fwd" else 3
        return Floor(N * d * e + 2 * B * d * e + B * d * 4, gemms * 2.0 * B * N * d, dtype_of(p["dtype"]),
                     "queue read once; 2 GEMMs (+1 for dq)")
