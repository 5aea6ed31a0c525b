"""l2_normalize: row-wise L2 normalisation of the projection heads' outputs.

naive: RepDistiller's Normalize(2), ``x / x.pow(2).sum(1, keepdim=True).pow(1/2)``
(four kernels forward, about ten backward). Floor: read x, write y; backward
read x and dy, write dx.
"""
from __future__ import annotations

import torch

from benchmarks import naive
from benchmarks.ops._common import dtype_of, elt, generator
from benchmarks.registry import Case, Floor, Impl, OpBench, backend_impls, module_missing, register


@register
class L2Normalize(OpBench):
    name = "l2_normalize"
    description = "row-wise L2 normalisation (the heads of CRD, WCoRD, DCD, RRD)"
    x_param = "B"
    loss_key = "y"   # backward from y, with a fixed-noise upstream gradient

    def unavailable(self):
        return module_missing("rdkernels.ops", "l2_normalize")

    def _rdk(self, backend):
        def prepare(inp):
            from rdkernels.ops import l2_normalize
            x = inp["x"]
            return lambda: {"y": l2_normalize(x, backend=backend)}
        return prepare

    def implementations(self):
        def naive_prepare(inp):
            x = inp["x"]
            return lambda: {"y": naive.l2_normalize(x)}
        return [
            Impl("naive", naive_prepare, kind="naive"),
            *backend_impls(self._rdk),
        ]


    def cases(self, size, preset):
        if size == "tiny":
            grid = [dict(B=8, d=32, dtype="float32")]
        elif preset is not None or size == "quick":
            grid = [dict(B=b, d=128, dtype="float32") for b in (64, 256)]
        else:
            grid = [dict(B=b, d=d, dtype=dt) for dt in ("float32", "bfloat16") for d in (128, 1024)
                    for b in (64, 256, 1024)]
        return [Case(f"B={g['B']} d={g['d']} {g['dtype']}", g, preset) for g in grid]

    def make_inputs(self, case, device, seed):
        p = case.params
        gen = generator(device, seed)
        x = torch.randn(p["B"], p["d"], device=device, generator=gen).to(dtype_of(p["dtype"]))
        return {"x": x.requires_grad_(True)}

    def grad_inputs(self, inputs, out):
        return [inputs["x"]]

    def floor(self, case, mode):
        p = case.params
        n = p["B"] * p["d"]
        e = elt(dtype_of(p["dtype"]))
        if mode == "fwd":
            return Floor(2 * n * e, 3.0 * n, torch.float32, "x read, y written")
        if mode == "bwd":
            return Floor(3 * n * e, 5.0 * n, torch.float32, "x, dy read, dx written")
        return Floor(5 * n * e, 8.0 * n, torch.float32, "x read twice, y written, dy read, dx written")
