"""kd_loss: Hinton's KD term, which every distillation step computes on the logits.

naive: RepDistiller's DistillKL, ``kl_div(log_softmax(y_s / T), softmax(y_t / T),
sum) * T^2 / B`` (about six kernels each way). Floor: read both logit rows
once, write the student's gradient; the backward's scaling is a second pass
over that gradient.
"""
from __future__ import annotations

import torch

from benchmarks.ops._common import dtype_of, elt, generator
from benchmarks.registry import Case, Floor, Impl, OpBench, backend_impls, module_missing, register

T = 4.0   # RepDistiller's default kd_T


@register
class KDLoss(OpBench):
    name = "kd_loss"
    description = "KD's temperature-softened KL between student and teacher logits"
    x_param = "B"

    def unavailable(self):
        return module_missing("rdkernels.ops", "kd_loss")

    def _rdk(self, backend):
        def prepare(inp):
            from rdkernels.ops import kd_loss
            y_s, y_t = inp["y_s"], inp["y_t"]
            return lambda: {"loss": kd_loss(y_s, y_t, T=T, backend=backend)}
        return prepare

    def implementations(self):
        def naive_prepare(inp):
            from rdkernels.losses.reference.kd import KDLoss
            y_s, y_t, kd = inp["y_s"], inp["y_t"], KDLoss(T)
            return lambda: {"loss": kd(y_s, y_t)}
        return [
            Impl("naive", naive_prepare, kind="naive"),
            *backend_impls(self._rdk),
        ]


    def cases(self, size, preset):
        if size == "tiny":
            grid = [dict(B=8, C=10, dtype="float32")]
        elif preset == "imagenet":
            grid = [dict(B=256, C=1000, dtype="float32")]
        elif preset is not None or size == "quick":   # CIFAR-100's classes
            grid = [dict(B=64, C=100, dtype="float32")]
        else:
            grid = [dict(B=b, C=c, dtype=dt) for dt in ("float32", "bfloat16") for c in (100, 1000)
                    for b in (64, 256, 1024)]
        return [Case(f"B={g['B']} C={g['C']} {g['dtype']}", g, preset) for g in grid]

    def make_inputs(self, case, device, seed):
        p = case.params
        gen = generator(device, seed)
        dtype = dtype_of(p["dtype"])
        y_s = (3 * torch.randn(p["B"], p["C"], device=device, generator=gen)).to(dtype)
        y_t = (3 * torch.randn(p["B"], p["C"], device=device, generator=gen)).to(dtype)
        return {"y_s": y_s.requires_grad_(True), "y_t": y_t}   # a frozen teacher's logits

    def grad_inputs(self, inputs, out):
        return [inputs["y_s"]]

    def floor(self, case, mode):
        p = case.params
        n = p["B"] * p["C"]
        e = elt(dtype_of(p["dtype"]))
        if mode == "fwd":
            return Floor(2 * n * e, 12.0 * n, torch.float32, "both logit rows read")
        if mode == "bwd":
            return Floor(2 * n * e, 1.0 * n, torch.float32, "the student's gradient read and written")
        return Floor(4 * n * e, 13.0 * n, torch.float32, "both rows read, the student's gradient written and read")
