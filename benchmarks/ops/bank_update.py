"""bank_update_: momentum update of B bank rows, in place.

naive: RepDistiller's index_select + mul_ + add_ + norm + div + index_copy_.
Floor: read and write the B rows of the bank, read the B values and indices.
"""
from __future__ import annotations

import torch

from benchmarks import naive
from benchmarks.ops._common import PRESETS, dtype_of, elt, generator, unit_rows
from benchmarks.registry import Case, Floor, Impl, OpBench, backend_impls, module_missing, register

MOMENTUM = 0.5


@register
class BankUpdate(OpBench):
    name = "bank_update"
    description = "momentum update + renormalise of B bank rows, in place"
    differentiable = False
    x_param = "B"

    def unavailable(self):
        return module_missing("rdkernels.ops", "bank_update_")

    def _rdk(self, backend: str):
        def prepare(inp):
            from rdkernels.ops import bank_update_
            bank, index, values = inp["bank"], inp["index"], inp["values"]
            return lambda: {"bank": bank_update_(bank, index, values, MOMENTUM, backend=backend)}
        return prepare

    def implementations(self):
        def naive_prepare(inp):
            bank, index, values = inp["bank"], inp["index"], inp["values"]
            return lambda: {"bank": naive.bank_update_(bank, index, values, MOMENTUM)}
        return [
            Impl("naive", naive_prepare, kind="naive"),
            *backend_impls(self._rdk, "bank_update"),
        ]


    def cases(self, size, preset):
        if size == "tiny":
            grid = [dict(B=8, N=256, d=32, dtype="float32")]
        elif preset is not None:
            p = PRESETS[preset]
            grid = [dict(B=p["B"], N=p["N"], d=p["d"], dtype=dt) for dt in ("float32", "bfloat16")]
        elif size == "quick":
            grid = [dict(B=b, N=50_000, d=128, dtype="float32") for b in (64, 1024)]
        else:
            grid = [dict(B=b, N=n, d=128, dtype=dt)
                    for n in (50_000, 1_281_167) for dt in ("float32", "bfloat16")
                    for b in (64, 256, 1024, 4096)]
        return [Case(f"B={g['B']} N={g['N']} d={g['d']} {g['dtype']}", g, preset) for g in grid]

    def make_inputs(self, case, device, seed):
        p = case.params
        gen = generator(device, seed)
        bank = unit_rows(p["N"], p["d"], dtype_of(p["dtype"]), device, gen)
        # Distinct ids: RepDistiller's index_copy_ is nondeterministic on duplicates.
        index = torch.randperm(p["N"], device=device, generator=gen)[: p["B"]]
        values = unit_rows(p["B"], p["d"], torch.float32, device, gen)
        return {"bank": bank, "index": index, "values": values}

    def check_outputs(self, inputs, out):
        return {"rows": out["bank"].index_select(0, inputs["index"])}

    def floor(self, case, mode):
        p = case.params
        rows = p["B"] * p["d"]
        nbytes = rows * (2 * elt(dtype_of(p["dtype"])) + 4) + p["B"] * 8
        return Floor(nbytes, 6.0 * rows, torch.float32, "B rows read+written, values and ids read")
