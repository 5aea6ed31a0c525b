"""WCoRDLoss: Wasserstein contrastive representation distillation (Chen et al.,
CVPR 2021), on the fused ops.

The paper has no public code and its constants are not all published, so every
choice below is ours, stated here with its reason, and each is an argument.

Embeddings. v_s = embed_s(f_s), v_t = embed_t(f_t): Linear + L2 normalisation,
CRD's projection heads (same module and key names as CRDLoss).

Global part: the dual form of the Wasserstein dependency measure, an
InfoNCE-form contrastive objective over memory-bank negatives

    L_global = InfoNCE(v_s vs. teacher bank) + InfoNCE(v_t vs. student bank),
    InfoNCE(q vs. M) = -mean_b log softmax_k(<M[idx[b, k]], q_b> / nce_t)[0],

computed by ``bank_contrast(..., epilogue="softmax")`` without materialising
the [B, K+1, d] gather. Two banks as in CRD: the student bank (``memory_s``)
is scored by the teacher embedding and the teacher bank (``memory_t``) by the
student embedding; both get the momentum update (nce_m) after scoring. The
critic is T(x, y) = <v_s(x), v_t(y)> / nce_t on unit-norm embeddings, which
bounds it in [-1/nce_t, 1/nce_t] and makes it (1/nce_t)-Lipschitz in the
embeddings: that is the Lipschitz constraint the dual form needs, without a
penalty. Why InfoNCE and not CRD's NCE: the paper's global term is an
InfoNCE-form bound; NCE would also need CRD's Z normaliser.

Optional gradient penalty (``gp_weight > 0``, as in Wasserstein predictive
coding): the Lipschitz constraint is pushed down to the projection heads'
inputs with the one-sided penalty

    gp = mean_b relu(||grad_{f_s, f_t} <v_s(f_s_b), v_t(f_t_b)>|| - 1)^2

on the positive pairs, the features detached (the penalty trains the heads,
not the backbones). It costs one double-backward through the two heads only.

Local part: the primal form, entropic OT between the batch's B student and B
teacher embeddings with uniform marginals 1/B,

    L_local = <plan*, C>,  C_ij = 1 - <v_s_i, v_t_j>  ("cosine", in [0, 2])
                       or  C_ij = ||v_s_i - v_t_j||^2 ("sqeuclidean", in [0, 4]),

through ``rdkernels.ops.sinkhorn`` (log domain, one kernel launch for B <= 256;
the gradient treats the converged plan as a constant, d L_local / d C = plan).

Total returned: lambda_global * L_global + lambda_local * L_local + gp_weight * gp.
The cross-entropy on labels (and KD, if used) is added by the training loop,
as for CRDLoss.

Defaults and why:

* feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5: CRD's, which WCoRD builds on.
* lambda_global=1.0: the module returns the global term at unit weight, so a
  training loop that weights CRDLoss by 0.8 gives WCoRD's global term CRD's weight.
* lambda_local=1.0: the OT cost of unit vectors is O(1) (cosine cost in [0, 2]),
  the same order as the global term's gradient; no published value.
* eps=0.05: 2.5% of the cosine cost's range; sharp enough that the plan is
  close to a matching, large enough that 100 fp32 iterations converge for B <= 256.
* iters=100, tol=None: a fixed iteration count (deterministic, no host reads);
  give tol to stop each problem early on its marginal error.
* cost="cosine": the paper's feature-similarity cost; "sqeuclidean" = 2 * cosine
  on unit vectors, offered for eps comparisons with geomloss/POT.
* gp_weight=0.0: the unit-norm critic is already Lipschitz; the penalty is opt-in.
"""
from __future__ import annotations

import torch
from torch import nn

from rdkernels._validation import check_non_negative, check_positive, check_positive_int, index_checks_enabled
from rdkernels.losses._embed import Embed
from rdkernels.losses._inputs import (check_bank_loss_args, check_bank_loss_inputs, check_bank_loss_values,
                                     check_bank_options, check_bank_storage)
from rdkernels.memory import MemoryBank
from rdkernels.ops import sinkhorn
from rdkernels.ops.sinkhorn import check_tol

COSTS = ("cosine", "sqeuclidean")


def pairwise_cost(v_s: torch.Tensor, v_t: torch.Tensor, kind: str) -> torch.Tensor:
    """[B, B] float32 cost between unit-norm rows: 1 - cos, or ||v_s - v_t||^2 = 2 - 2 cos.

    Autocast is off here: it would run the product in bf16 whatever its inputs, an
    error of ~4e-3 in C, i.e. ~0.08 in C / eps at eps = 0.05, inside the exponent."""
    with torch.autocast(v_s.device.type, enabled=False):
        sim = v_s.float() @ v_t.float().t()
    return 1.0 - sim if kind == "cosine" else (2.0 - 2.0 * sim).clamp_min(0.0)


def gradient_norm(gs: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-row ||(gs, gt)||, at least in float32. The square root's argument is kept off zero:
    at a pair with v_s == v_t both gradients vanish, the penalty is 0 there, and
    sqrt'(0) = inf would otherwise turn that 0 into a NaN gradient for every head weight."""
    wide = torch.promote_types(gs.dtype, torch.float32)
    sq = gs.to(wide).flatten(1).pow(2).sum(1) + gt.to(wide).flatten(1).pow(2).sum(1)
    return sq.clamp_min(1e-12).sqrt()


def _head_dtype(head: nn.Module, default: torch.dtype) -> torch.dtype:
    for param in head.parameters():  # (not next(..., default): torch 2.5's compiler cannot trace that)
        return param.dtype
    return default


def critic_gradient_penalty(embed_s: nn.Module, embed_t: nn.Module, f_s: torch.Tensor,
                            f_t: torch.Tensor) -> torch.Tensor:
    """One-sided penalty mean relu(||grad <v_s, v_t>|| - 1)^2 over the positive pairs,
    with respect to the (detached) features; differentiable in the heads' weights.
    The features enter in the heads' dtype (a bf16 module takes bf16 features)."""
    xs = f_s.detach().to(_head_dtype(embed_s, f_s.dtype))
    xt = f_t.detach().to(_head_dtype(embed_t, f_t.dtype))
    if isinstance(embed_s, Embed) and isinstance(embed_t, Embed):
        gs, gt = _embed_critic_grads(embed_s, embed_t, xs, xt)
    else:  # any other heads: double backward (torch.compile cannot trace this path)
        xs, xt = xs.requires_grad_(True), xt.requires_grad_(True)
        critic = (embed_s(xs) * embed_t(xt)).sum(dim=1)
        gs, gt = torch.autograd.grad(critic.sum(), (xs, xt), create_graph=True)
    return torch.relu(gradient_norm(gs, gt) - 1.0).pow(2).mean()


def _embed_critic_grads(embed_s: Embed, embed_t: Embed, xs: torch.Tensor, xt: torch.Tensor):
    """d <v_s, v_t> / d x_s and d x_t for Embed heads v = u / ||u||, u = W x + b, in
    closed form: d/du_s = (v_t - <v_s, v_t> v_s) / ||u_s||, then through W. The same
    values autograd.grad(create_graph=True) gives, but an ordinary differentiable
    expression, so the penalty compiles with torch.compile(fullgraph=True)."""
    u_s = embed_s.linear(xs.reshape(xs.shape[0], -1))
    u_t = embed_t.linear(xt.reshape(xt.shape[0], -1))
    n_s = u_s.pow(2).sum(dim=1, keepdim=True).sqrt()
    n_t = u_t.pow(2).sum(dim=1, keepdim=True).sqrt()
    v_s, v_t = u_s / n_s, u_t / n_t
    cos = (v_s * v_t).sum(dim=1, keepdim=True)
    gs = ((v_t - cos * v_s) / n_s) @ embed_s.linear.weight.to(v_s.dtype)
    gt = ((v_s - cos * v_t) / n_t) @ embed_t.linear.weight.to(v_t.dtype)
    return gs, gt


def _weighted(weight: float, term: torch.Tensor) -> torch.Tensor:
    return term if weight == 1.0 else weight * term


class WCoRDLoss(nn.Module):
    """Wasserstein contrastive representation distillation loss.

    ``forward(f_s, f_t, idx, contrast_idx=None)`` as CRDLoss: ``idx`` [B] are the
    samples' dataset indices, ``contrast_idx`` [B, K+1] the bank rows to contrast
    with (column 0 the positive); if None, K = nce_k negatives are drawn
    uniformly on the device. See the module docstring for the objective.

    Keyword-only extras: ``tol`` (Sinkhorn early stop), ``bank_dtype`` (float32 or
    bfloat16 banks), ``backend`` (per-module override of rdkernels.set_backend),
    ``check_costs`` (True: a NaN or inf in the batch's OT cost raises a clear error,
    checked in the host sync the index checks make anyway, or, with
    ``RDKERNELS_CHECK_INDICES=0``, in one of Sinkhorn's own; False skips it, and a
    non-finite cost then shows as a NaN loss).

    State: ``embed_s.linear.*``, ``embed_t.linear.*``, ``memory_s.memory`` (student
    bank), ``memory_t.memory`` (teacher bank).

    ``torch.compile(fullgraph=True)`` works from the first step, the gradient
    penalty included (its input gradient is written in closed form for the Embed
    heads); under compile the index and cost checks run inside the ops.
    """

    def __init__(self, s_dim: int, t_dim: int, n_data: int, feat_dim: int = 128, nce_k: int = 16384,
                 nce_t: float = 0.07, nce_m: float = 0.5, lambda_global: float = 1.0, lambda_local: float = 1.0,
                 eps: float = 0.05, iters: int = 100, cost: str = "cosine", gp_weight: float = 0.0, *,
                 tol: float | None = None, bank_dtype: torch.dtype = torch.float32, backend: str | None = None,
                 check_costs: bool = True):
        super().__init__()
        s_dim, t_dim, n_data, feat_dim, nce_k, nce_t, nce_m = check_bank_loss_args(
            s_dim, t_dim, n_data, feat_dim, nce_k, nce_t, nce_m)
        lambda_global, lambda_local, gp_weight = (check_non_negative(name, value) for name, value in (
            ("lambda_global", lambda_global), ("lambda_local", lambda_local), ("gp_weight", gp_weight)))
        eps, iters = check_positive("eps", eps), check_positive_int("iters", iters)
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
        check_tol(tol)
        check_bank_options(bank_dtype, backend)
        self.s_dim, self.t_dim, self.n_data, self.nce_k, self.nce_t = s_dim, t_dim, n_data, nce_k, nce_t
        self.lambda_global, self.lambda_local, self.gp_weight = lambda_global, lambda_local, gp_weight
        self.eps, self.iters, self.cost, self.tol = eps, iters, cost, tol
        self.backend, self.check_costs = backend, bool(check_costs)
        self.embed_s = Embed(s_dim, feat_dim, fused=True)
        self.embed_t = Embed(t_dim, feat_dim, fused=True)
        self.memory_s = MemoryBank(n_data, feat_dim, momentum=nce_m, dtype=bank_dtype)  # scored by v_t
        self.memory_t = MemoryBank(n_data, feat_dim, momentum=nce_m, dtype=bank_dtype)  # scored by v_s

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, idx: torch.Tensor,
                contrast_idx: torch.Tensor | None = None) -> torch.Tensor:
        check_bank_storage(**{"memory_s.memory": self.memory_s.memory, "memory_t.memory": self.memory_t.memory})
        idx, contrast_idx = check_bank_loss_inputs(f_s, f_t, idx, contrast_idx, s_dim=self.s_dim, t_dim=self.t_dim,
                                                   n_data=self.n_data, projections=(self.embed_s, self.embed_t),
                                                   check_values=False)
        v_s = self.embed_s(f_s, backend=self.backend)
        v_t = self.embed_t(f_t, backend=self.backend)
        C = pairwise_cost(v_s, v_t, self.cost) if self.lambda_local else None
        # One host sync for every value check: the indices, the features and the OT cost
        # (made before anything reads the banks, and before Sinkhorn, which then skips
        # its own check). With index checks off, the cost keeps Sinkhorn's check (which
        # check_costs switches), as it does under torch.compile, inside the op's body.
        cost_checked_here = (self.check_costs and C is not None and index_checks_enabled()
                             and not torch.compiler.is_compiling())
        check_bank_loss_values(f_s, f_t, idx, contrast_idx, self.n_data,
                               {"the batch's OT cost (from embed_s and embed_t)": C} if cost_checked_here else None)
        if contrast_idx is None:
            contrast_idx = self.memory_s.sample(idx, self.nce_k, check_indices=False)  # idx checked above
        terms = []   # summed at the end: a weight of 1 and a zero start would each be another launch
        if self.lambda_global:
            # Eagerly, check_bank_loss_values checked every index with one sync; under torch.compile
            # that check is skipped and the op makes it inside its opaque body.
            kw = dict(temperature=self.nce_t, epilogue="softmax", backend=self.backend,
                      check_indices=torch.compiler.is_compiling())
            glob = self.memory_t.contrast(v_s, contrast_idx, **kw) + self.memory_s.contrast(v_t, contrast_idx, **kw)
            terms.append(_weighted(self.lambda_global, glob))
        if self.lambda_local:
            res = sinkhorn(C[None].contiguous(), eps=self.eps, max_iters=self.iters, tol=self.tol,
                           backend=self.backend, check_inputs=self.check_costs and not cost_checked_here)
            terms.append(_weighted(self.lambda_local, res.cost[0]))
        if self.gp_weight:
            terms.append(_weighted(self.gp_weight, critic_gradient_penalty(self.embed_s, self.embed_t, f_s, f_t)))
        loss = sum(terms[1:], terms[0]) if terms else v_s.new_zeros((), dtype=torch.float32)
        if loss.dtype in (torch.bfloat16, torch.float16):   # a narrow head's penalty alone: float32 as ever
            loss = loss.float()
        with torch.no_grad():  # after scoring, never before
            checks = torch.compiler.is_compiling()
            self.memory_s.update_(idx, v_s.detach(), backend=self.backend, check_indices=checks)
            self.memory_t.update_(idx, v_t.detach(), backend=self.backend, check_indices=checks)
        return loss


