"""fifo_enqueue_: RRD's FIFO queue takes the batch's teacher embeddings.

naive: RRD's public code, ``queue[ptr:ptr + B] = keys`` with the pointer read on
the host (a sync a step; it asserts N % B == 0). torch: the same FIFO with the
positions computed on the device (seven launches, no sync, any B). Floor: read
the B keys, write the B queue rows.
"""
from __future__ import annotations

import torch

from benchmarks import naive
from benchmarks.ops._common import dtype_of, elt, generator, unit_rows
from benchmarks.registry import Case, Floor, Impl, OpBench, backend_impls, module_missing, register


@register
class FifoEnqueue(OpBench):
    name = "fifo_enqueue"
    description = "B keys into a FIFO queue of N rows, pointer advanced on the device"
    differentiable = False
    x_param = "B"

    def unavailable(self):
        return module_missing("rdkernels.ops", "fifo_enqueue_")

    def _rdk(self, backend: str):
        def prepare(inp):
            from rdkernels.ops import fifo_enqueue_
            queue, ptr, keys = inp["queue"], inp["ptr"], inp["keys"]
            return lambda: {"queue": fifo_enqueue_(queue, ptr, keys, backend=backend), "ptr": ptr}
        return prepare

    def implementations(self):
        def naive_prepare(inp):
            queue, ptr, keys = inp["queue"], inp["ptr"], inp["keys"]

            def run():
                naive.fifo_enqueue_(queue, ptr, keys)
                return {"queue": queue, "ptr": ptr}
            return run
        return [
            Impl("naive", naive_prepare, kind="naive"),
            *backend_impls(self._rdk),
        ]


    def cases(self, size, preset):
        if size == "tiny":
            grid = [dict(B=8, N=64, d=32, dtype="float32")]
        elif preset is not None or size == "quick":
            grid = [dict(B=64, N=16384, d=128, dtype="float32")]
        else:
            grid = [dict(B=b, N=16384, d=128, dtype=dt) for dt in ("float32", "bfloat16") for b in (64, 256, 1024)]
        return [Case(f"B={g['B']} N={g['N']} d={g['d']} {g['dtype']}", g, preset) for g in grid]

    def make_inputs(self, case, device, seed):
        p = case.params
        gen = generator(device, seed)
        queue = unit_rows(p["N"], p["d"], dtype_of(p["dtype"]), device, gen)
        keys = unit_rows(p["B"], p["d"], dtype_of(p["dtype"]), device, gen)
        return {"queue": queue, "ptr": torch.zeros(1, dtype=torch.long, device=device), "keys": keys}

    def check_outputs(self, inputs, out):
        # the rows the first call writes (the check runs one call on fresh inputs), and the pointer
        return {"rows": out["queue"][: inputs["keys"].shape[0]], "ptr": out["ptr"].double()}

    def floor(self, case, mode):
        p = case.params
        nbytes = 2 * p["B"] * p["d"] * elt(dtype_of(p["dtype"])) + 16
        return Floor(nbytes, 0.0, torch.float32, "B keys read, B queue rows written")
