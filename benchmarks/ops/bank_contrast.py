"""bank_contrast: scores of B queries against their K+1 sampled bank rows + loss.

naive: RepDistiller's formulation: index_select of the [B, K+1, d] rows, bmm,
exp, divide by Z, then ContrastLoss's elementwise ops (nce), or cross-entropy
on the scores (softmax).

Floor: the cheaper of the two exact strategies -- gather (read the B*(K+1)
sampled rows once) or dense (read the whole bank once, 2*B*N*d flops per
product) -- plus reading q and writing dq. Forward needs the scores only
(2 flops per row element); forward+backward also dq (4); backward alone,
with dq kept from the forward, only reads and writes B x d.
"""
from __future__ import annotations

import importlib

import torch

from benchmarks import naive
from benchmarks.ops._common import PRESETS, bank_init, dtype_of, elt, generator, sample_idx, unit_rows
from benchmarks.registry import Case, Floor, Impl, OpBench, backend_impls, module_missing, register, strategy_impls

TEMPERATURE = 0.07


def bank_contrast_floor(p: dict, mode: str, directions: int = 1) -> list[Floor]:
    """Floors of one (or two, for CRD) bank-contrast passes, per strategy; two
    passes read their banks and queries each, and one shared index tensor."""
    B, K, N, d = p["B"], p["K"], p["N"], p["d"]
    e = elt(dtype_of(p["dtype"]))
    q_io = 2 * B * d * e + B * 4                       # q read, dq written; per-row loss
    ids = B * (K + 1) * 8                              # read once: the directions share one index tensor
    if mode == "bwd":
        return [Floor(directions * (2 * B * d * 4), directions * B * d, torch.float32, "dq scaled and written")]
    per = 2 if mode == "fwd" else 4
    gather = Floor(directions * (B * (K + 1) * d * e + q_io) + ids, directions * per * B * (K + 1) * d,
                   dtype_of(p["dtype"]), "gather: sampled rows read once")
    dense = Floor(directions * (N * d * e + q_io) + ids, directions * per * B * N * d,
                  dtype_of(p["dtype"]), "dense: bank read once, GEMM against every row")
    return [gather, dense]


@register
class BankContrast(OpBench):
    name = "bank_contrast"
    description = "scores against K+1 sampled bank rows + NCE/InfoNCE loss, gradient to the query"
    x_param = "K"

    def unavailable(self):
        return module_missing("rdkernels.ops", "bank_contrast")

    @staticmethod
    def _strategies() -> tuple:
        # The package, not the function rdkernels.ops re-exports under its name.
        pkg = importlib.import_module("rdkernels.ops.bank_contrast")
        return tuple(s for s in getattr(pkg, "STRATEGIES", ("auto",)) if s != "auto")

    def _rdk(self, backend: str, strategy: str = "auto"):
        def prepare(inp):
            from rdkernels.ops import bank_contrast
            q, bank, idx, z = inp["query"], inp["bank"], inp["idx"], inp["z"]
            kw = dict(temperature=TEMPERATURE, epilogue=inp["epilogue"], n_data=bank.shape[0],
                      backend=backend, strategy=strategy)
            if inp["epilogue"] == "nce":
                kw["z"] = z
            return lambda: {"loss": bank_contrast(q, bank, idx, **kw)}
        return prepare

    def implementations(self):
        def naive_prepare(inp):
            q, bank, idx, z = inp["query"], inp["bank"], inp["idx"], inp["z"]
            return lambda: {"loss": naive.bank_contrast(q, bank, idx, temperature=TEMPERATURE,
                                                        epilogue=inp["epilogue"], z=z, n_data=bank.shape[0])}
        impls = [
            Impl("naive", naive_prepare, kind="naive"),
            *backend_impls(self._rdk, "bank_contrast"),
        ]
        strategies = self._strategies()
        if len(strategies) > 1:   # a real choice: time each strategy too
            impls += strategy_impls(self._rdk, strategies, "bank_contrast")
        return impls


    def cases(self, size, preset):
        if size == "tiny":
            grid = [dict(B=4, K=16, N=64, d=32, dtype="float32", epilogue="nce"),
                    dict(B=4, K=16, N=64, d=32, dtype="float32", epilogue="softmax")]
        elif preset is not None:
            p = PRESETS[preset]
            grid = [dict(B=p["B"], K=p["K"], N=p["N"], d=p["d"], dtype=dt, epilogue=ep)
                    for dt in ("float32", "bfloat16") for ep in ("nce", "softmax")]
        elif size == "quick":
            # K=4096 is the CPU target's size (torch backend, dense strategy, vs the naive gather)
            grid = [dict(B=64, K=k, N=50_000, d=128, dtype="float32", epilogue="nce") for k in (1024, 4096, 16_384)]
        else:
            grid = [dict(B=b, K=k, N=n, d=128, dtype=dt, epilogue="nce")
                    for (b, n) in ((64, 50_000), (256, 1_281_167)) for dt in ("float32", "bfloat16")
                    for k in (256, 1024, 4096, 16_384)]
            grid += [dict(B=b, K=16_384, N=n, d=128, dtype="float32", epilogue="softmax")
                     for (b, n) in ((64, 50_000), (256, 1_281_167))]
            grid += [dict(B=64, K=k, N=50_000, d=dd, dtype="float32", epilogue="nce")
                     for dd in (64, 256) for k in (1024, 16_384)]
        return [Case(f"B={g['B']} K={g['K']} N={g['N']} d={g['d']} {g['dtype']} {g['epilogue']}", g, preset)
                for g in grid]

    def make_inputs(self, case, device, seed):
        p = case.params
        gen = generator(device, seed)
        dtype = dtype_of(p["dtype"])
        bank = bank_init(p["N"], p["d"], dtype, device, gen)
        query = unit_rows(p["B"], p["d"], dtype, device, gen).requires_grad_(True)
        index = torch.randint(0, p["N"], (p["B"],), device=device, generator=gen)
        idx = sample_idx(index, p["N"], p["K"], gen)
        with torch.no_grad():   # CRD's Z rule, on these inputs
            s = naive.gathered_scores(query.float(), bank.float(), idx, TEMPERATURE)
            z = (s.exp().mean() * p["N"]).reshape(1).float()
        return {"query": query, "bank": bank, "idx": idx, "z": z, "epilogue": p["epilogue"]}

    def grad_inputs(self, inputs, out):
        return [inputs["query"]]

    def floor(self, case, mode):
        return bank_contrast_floor(case.params, mode)
