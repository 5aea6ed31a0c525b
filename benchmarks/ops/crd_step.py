"""A whole CRD loss step: both projections, both contrast directions, both bank
updates, and the backward into f_s and the projection weights.

naive: RepDistiller's CRDLoss.forward (benchmarks.naive.crd_loss: scalars read
with .item() up front, index_select gathers, bmm, exp, Z, ContrastLoss,
index_copy_ update) on rdkernels.losses.reference.crd.CRDLoss's weights and banks.
Fused: rdkernels.CRDLoss with each backend, and the torch backend with each
strategy (torch:dense, triton:gather, ...) as well as "auto". Both start from the same weights,
banks and Z (set beforehand, as after the first step of training).
"""
from __future__ import annotations

import torch

from benchmarks import naive
from benchmarks.ops._common import PRESETS, elt, generator, sample_idx
from benchmarks.ops.bank_contrast import TEMPERATURE, BankContrast, bank_contrast_floor
from benchmarks.registry import Case, Floor, Impl, OpBench, backend_impls, module_missing, register, strategy_impls

MOMENTUM = 0.5


def _module_outputs(module, loss):
    mem = module.contrast
    return {"loss": loss, "memory_v1": mem.memory_v1, "memory_v2": mem.memory_v2,
            "grad_params": [module.embed_s.linear.weight, module.embed_s.linear.bias,
                            module.embed_t.linear.weight, module.embed_t.linear.bias]}


@register
class CRDStep(OpBench):
    name = "crd_step"
    description = "CRDLoss forward (2 directions + 2 bank updates) and backward"
    x_param = "K"

    def unavailable(self):
        return (module_missing("rdkernels.losses.reference.crd", "CRDLoss")
                or module_missing("rdkernels.losses", "CRDLoss"))

    @staticmethod
    def _args(p):
        return dict(s_dim=p["s_dim"], t_dim=p["t_dim"], n_data=p["N"], feat_dim=p["d"], nce_k=p["K"],
                    nce_t=TEMPERATURE, nce_m=MOMENTUM)

    def _prepare(self, fused: bool, backend: str | None = None, strategy: str = "auto"):
        def prepare(inp):
            p = inp["params"]
            if fused:
                from rdkernels.losses import CRDLoss
                module = CRDLoss(**self._args(p), backend=backend, strategy=strategy)
                loss = module
            else:   # the reference module's weights and buffers, RepDistiller's forward
                from rdkernels.losses.reference.crd import CRDLoss
                module = CRDLoss(**self._args(p))
                loss = lambda *args: naive.crd_loss(module, *args)   # noqa: E731
            module = module.to(device=inp["f_s"].device, dtype=inp["f_s"].dtype)
            module.load_state_dict(inp["state"])
            f_s, f_t, idx, cidx = inp["f_s"], inp["f_t"], inp["idx"], inp["contrast_idx"]
            return lambda: _module_outputs(module, loss(f_s, f_t, idx, cidx))
        return prepare

    def implementations(self):
        impls = [
            Impl("naive", self._prepare(False), kind="naive"),
            *backend_impls(lambda backend: self._prepare(True, backend), "bank_contrast"),
        ]
        # The best pure-PyTorch formulation is the faster strategy, whichever the
        # cost model would pick ("auto"), so each strategy gets a row too; a fused
        # backend's faster one is what a captured training step runs.
        strategies = BankContrast._strategies()
        if len(strategies) > 1:
            impls += strategy_impls(lambda backend, s: self._prepare(True, backend, s), strategies, "bank_contrast")
        return impls


    def cases(self, size, preset):
        if size == "tiny":
            grid = [dict(B=4, K=16, N=64, d=32, s_dim=24, t_dim=40)]
        elif preset is not None:
            grid = [dict(PRESETS[preset])]
        elif size == "quick":
            grid = [dict(PRESETS["cifar"], K=4096)]
        else:
            grid = [dict(PRESETS[name], K=k) for name in ("cifar", "imagenet") for k in (1024, 4096, 16_384)]
        for g in grid:
            g["dtype"] = "float32"
        return [Case(f"B={g['B']} K={g['K']} N={g['N']} s={g['s_dim']} t={g['t_dim']}", g, preset) for g in grid]

    def make_inputs(self, case, device, seed):
        from rdkernels.losses.reference.crd import CRDLoss
        p = case.params
        gen = generator(device, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = CRDLoss(**self._args(p)).to(device)
        f_s = torch.randn(p["B"], p["s_dim"], device=device, generator=gen).requires_grad_(True)
        f_t = torch.randn(p["B"], p["t_dim"], device=device, generator=gen)
        idx = torch.randperm(p["N"], device=device, generator=gen)[: p["B"]]
        cidx = sample_idx(idx, p["N"], p["K"], gen)
        with torch.no_grad():   # Z as the first training step sets it
            v_s, v_t = module.embed_s(f_s), module.embed_t(f_t)
            mem = module.contrast
            mem.params[2] = naive.gathered_scores(v_s, mem.memory_v2, cidx, TEMPERATURE).exp().mean() * p["N"]
            mem.params[3] = naive.gathered_scores(v_t, mem.memory_v1, cidx, TEMPERATURE).exp().mean() * p["N"]
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return {"f_s": f_s, "f_t": f_t, "idx": idx, "contrast_idx": cidx, "state": state, "params": p}

    def grad_inputs(self, inputs, out):
        return [inputs["f_s"], *out["grad_params"]]

    def check_outputs(self, inputs, out):
        idx = inputs["idx"]
        return {"loss": out["loss"], "memory_v1[idx]": out["memory_v1"].index_select(0, idx),
                "memory_v2[idx]": out["memory_v2"].index_select(0, idx)}

    def floor(self, case, mode):
        p = case.params
        B, d = p["B"], p["d"]
        embed_flops = 2 * B * (p["s_dim"] + p["t_dim"]) * d
        embed_bytes = 4 * (B * (p["s_dim"] + p["t_dim"]) + (p["s_dim"] + p["t_dim"]) * d)
        update_bytes = 2 * B * d * (2 * elt(torch.float32) + 4)
        out = []
        for f in bank_contrast_floor(p, mode, directions=2):
            if mode == "fwd":
                out.append(Floor(f.nbytes + embed_bytes + update_bytes, f.flops + embed_flops, f.dtype,
                                 f.note + "; 2 directions, 2 projections, 2 bank updates"))
            elif mode == "bwd":
                out.append(Floor(f.nbytes + 2 * embed_bytes, f.flops + 2 * embed_flops, f.dtype,
                                 "dq scaled; projection gradients"))
            else:
                out.append(Floor(f.nbytes + 3 * embed_bytes + update_bytes, f.flops + 3 * embed_flops, f.dtype,
                                 f.note + "; 2 directions, projections fwd+bwd, 2 bank updates"))
        return out
