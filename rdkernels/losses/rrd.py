"""RRD (Giakoumoglou & Stathaki 2024): Relational Representation Distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rdkernels import backend as _backend
from rdkernels._validation import check_positive, check_positive_int, check_tensors_finite, host_reads_allowed
from rdkernels.losses._host_copy import HostCopy, ReadsParamsAfterApply, reread_temperature_and_momentum
from rdkernels.losses._inputs import check_bank_loss_args, check_bank_loss_inputs, check_bank_storage, check_first_z
from rdkernels.ops import bank_update_, fifo_enqueue_
from rdkernels.losses.dcd import _check_pair, _embed
from rdkernels.losses.reference.rrd import load_reference_keys
from rdkernels.ops.shared_bank_contrast import _resolve as _resolve_shared_bank_contrast
from rdkernels.ops.shared_bank_contrast import run_shared_bank_contrast, validate_shared_bank_contrast

ENQUEUE_MODES = ("before", "after")


def init_queue(queue_size: int, feat_dim: int) -> torch.Tensor:
    """The reference initialisation: ``randn(N, d)`` normalised along dim 0.

    Note the axis: each *column* has unit norm, so the initial rows are short
    (norm ~ sqrt(d / N), 0.088 for 128 x 16384). Real teacher embeddings (unit
    rows) replace them after N / B steps.
    """
    return F.normalize(torch.randn(queue_size, feat_dim), dim=0)


class RRDLoss(nn.Module):
    """RRD with a FIFO queue of teacher embeddings.

        loss = -mean_b sum_k softmax(z_t Q^T / tau_t)_k * log_softmax(z_s Q^T / tau_s)_k

    ``embed_s``/``embed_t`` are plain ``nn.Linear`` projections followed by L2
    normalisation. The queue ``queue`` [queue_size, feat_dim] holds teacher
    embeddings, written FIFO at ``ptr``; any batch size works (no
    queue_size % B == 0 requirement). ``enqueue="before"`` (the current public
    code) writes the batch's teacher embeddings before scoring, so each row's
    own teacher embedding is in the queue; ``"after"`` (the earlier code) scores
    first. The scoring is one fused op (:func:`rdkernels.ops.shared_bank_contrast`,
    no [B, queue_size] matrix); its gradient flows to the student side only.

    The reference never trains ``embed_t`` (the teacher side is detached, so the
    queue holds teacher features through a fixed random projection): that is the
    default. ``train_teacher_proj=True`` lets the teacher projection learn
    through the softmax of ``z_t`` (its logits against the detached queue); that
    path materialises the teacher logits [B, queue_size] in torch, against a
    copy of the queue (the reference's ``queue.clone().detach()``): their
    backward needs the queue as scored, and the in-place enqueue would
    otherwise invalidate it before backward runs.

    Checkpoints of the reference code (``memory.`` prefix, ``queue_ptr``) load
    as they are. Forward: ``loss = rrd(f_s, f_t)``.
    """

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int = 128, queue_size: int = 16384,
                 tau_s: float = 0.02, tau_t: float = 0.1, enqueue: str = "before",
                 train_teacher_proj: bool = False):
        super().__init__()
        if enqueue not in ENQUEUE_MODES:
            raise ValueError(f"enqueue must be one of {ENQUEUE_MODES}, got {enqueue!r}")
        self.s_dim, self.t_dim, self.feat_dim, self.queue_size = (check_positive_int(name, value) for name, value in (
            ("s_dim", s_dim), ("t_dim", t_dim), ("feat_dim", feat_dim), ("queue_size", queue_size)))
        self.tau_s, self.tau_t = check_positive("tau_s", tau_s), check_positive("tau_t", tau_t)
        self.enqueue = enqueue
        self.train_teacher_proj = bool(train_teacher_proj)
        self.embed_s = nn.Linear(self.s_dim, self.feat_dim)
        self.embed_t = nn.Linear(self.t_dim, self.feat_dim)
        self.register_buffer("queue", init_queue(self.queue_size, self.feat_dim))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))
        self.register_load_state_dict_pre_hook(load_reference_keys)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        _check_pair(f_s, f_t, self.s_dim, self.t_dim, (self.embed_s, self.embed_t))
        z_s = _embed(self.embed_s, f_s)
        if self.train_teacher_proj:
            z_t = _embed(self.embed_t, f_t)
        else:
            with torch.no_grad():
                z_t = _embed(self.embed_t, f_t)
        if z_t.dtype != z_s.dtype:
            z_t = z_t.to(z_s.dtype)
        # Every check runs before the queue changes, so a bad call leaves it intact: the
        # inputs, and the backend (one that is asked for and cannot run, or cannot take
        # this width, raises here, not after the enqueue).
        validate_shared_bank_contrast(z_s, z_t, self.queue, self.tau_s, self.tau_t, "mean")
        backend = _resolve_shared_bank_contrast(z_s, None)
        # A NaN or inf teacher embedding would sit in the queue for queue_size / B steps and
        # make every loss on it NaN; a non-finite f_s gives a NaN loss. One host sync refuses
        # both before the queue moves, as the bank losses refuse non-finite features (off
        # with RDKERNELS_CHECK_INDICES=0, skipped under compile and CUDA graph capture).
        check_tensors_finite({"f_s": f_s.detach(), "the teacher embedding embed_t(f_t)": z_t.detach()})
        if self.enqueue == "before":
            fifo_enqueue_(self.queue, self.ptr, z_t)
        loss = run_shared_bank_contrast(z_s, z_t, self.queue, self.tau_s, self.tau_t, "mean", backend)
        if self.train_teacher_proj and z_t.requires_grad:
            loss = loss + _teacher_term(z_s.detach(), z_t, self.queue, self.tau_s, self.tau_t)
        if self.enqueue == "after":
            fifo_enqueue_(self.queue, self.ptr, z_t)
        return loss

    def extra_repr(self) -> str:
        return (f"queue_size={self.queue_size}, tau_s={self.tau_s}, tau_t={self.tau_t}, "
                f"enqueue={self.enqueue!r}, train_teacher_proj={self.train_teacher_proj}")


def _teacher_term(z_s, z_t, queue, tau_s, tau_t):
    """Zero-valued term whose gradient is d loss / d z_t (student side constant)."""
    dt = torch.float32 if z_t.dtype != torch.float64 else torch.float64
    # A copy, not queue.detach(): a detached view shares the queue's version counter,
    # so the enqueue after scoring (or the next forward's, before a shared backward)
    # would make autograd reject the saved operand of z_t @ queue^T.
    queue = queue.detach().to(dt, copy=True)
    log_p_s = torch.log_softmax(z_s.to(dt) @ queue.t() / tau_s, dim=1)
    p_t = torch.softmax(z_t.to(dt) @ queue.t() / tau_t, dim=1)
    term = -(p_t * log_p_s).sum(dim=1).mean()
    return term - term.detach()


class _AttachGradient(torch.autograd.Function):
    """value (no graph) + a precomputed d value / d x: backward returns grad * dx."""

    @staticmethod
    def forward(ctx, value, x, dx):
        ctx.save_for_backward(dx)
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        (dx,) = ctx.saved_tensors
        return None, (grad * dx).to(dx.dtype), None


class RRDMomentumLoss(ReadsParamsAfterApply, nn.Module):
    """RRD with momentum memory banks instead of the FIFO queue (the public code's
    ``memory_type="momentum"``): CRD's two banks, scored at sampled rows.

        s_s = <M_t[idx], z_s> / nce_t,   s_t = <M_s[idx], z_t> / nce_t   (rows idx[B, K+1])
        x   = exp(s) / Z  (Z frozen on the first call, as CRD)
        loss = -mean_b sum_k softmax(x_t / tau_t)_k * log_softmax(x_s / tau_s)_k

    As in the reference, the softmaxes act on the exponentiated, Z-normalised
    scores (x is ~1e-5, so the loss stays close to log(K + 1)); this is kept
    for faithfulness. After scoring, both banks get the momentum update at
    ``idx`` (student bank with z_s, teacher bank with z_t). The banks are
    :class:`rdkernels.MemoryBank` (``memory_s``: the reference's ``memory_v1``,
    ``memory_t``: ``memory_v2``); the scores come from the fused bank-contrast op
    (no [B, K+1, d] gather), and the gradient to z_s is computed before the banks
    change. Reference checkpoints (``memory.contrast.*``) load as they are.

    Forward: ``loss = rrd(f_s, f_t, idx, contrast_idx=None)``; ``contrast_idx``
    None samples K uniform negatives on the device.

    ``torch.compile(fullgraph=True)`` works from the first step: Z is set on the
    device (no host read) and the index checks move into the ops under compile.
    T and the momentum are read from ``params`` on the host (a loaded checkpoint's
    values, as the reference reads them): at construction, at every
    ``load_state_dict`` and cast or move (``.to()``), and at an eager call after
    an in-place write. A compiled
    call takes the values last read; :meth:`reread_params` hands it a schedule's.
    """

    def __init__(self, s_dim: int, t_dim: int, n_data: int, feat_dim: int = 128, nce_k: int = 16384,
                 nce_t: float = 0.07, nce_m: float = 0.5, tau_s: float = 0.02, tau_t: float = 0.1):
        super().__init__()
        from rdkernels.memory import MemoryBank

        # (nce_k = 0 would score the positive alone: loss 0, no gradient)
        s_dim, t_dim, n_data, feat_dim, nce_k, nce_t, nce_m = check_bank_loss_args(
            s_dim, t_dim, n_data, feat_dim, nce_k, nce_t, nce_m)
        self.s_dim, self.t_dim, self.feat_dim, self.n_data, self.nce_k = s_dim, t_dim, feat_dim, n_data, nce_k
        self.nce_t, self.tau_s, self.tau_t = nce_t, check_positive("tau_s", tau_s), check_positive("tau_t", tau_t)
        self.embed_s = nn.Linear(s_dim, feat_dim)
        self.embed_t = nn.Linear(t_dim, feat_dim)
        self.memory_s = MemoryBank(self.n_data, self.feat_dim, momentum=nce_m)
        self.memory_t = MemoryBank(self.n_data, self.feat_dim, momentum=nce_m)
        # [K, T, Z_s, Z_t, momentum] as the reference's ContrastMemory.params; Z = -1 until set
        self.register_buffer("params", torch.tensor([float(nce_k), float(nce_t), -1.0, -1.0, float(nce_m)]))
        self.register_load_state_dict_pre_hook(_load_reference_momentum_keys)
        # Whether Z is known to be set, so eager calls stop reading it (see _check_first_z),
        # and (T, momentum) as params holds them (see _temperature_and_momentum): read
        # now, from the CPU tensor, and again whenever a state_dict is loaded.
        self._z_set_on_host = False
        self._host_params = HostCopy()
        self.reread_params()
        self.register_load_state_dict_post_hook(RRDMomentumLoss._after_load)

    @staticmethod
    def _after_load(module, incompatible_keys) -> None:
        module._z_set_on_host = False
        module.reread_params()

    _forget_host_state = _after_load   # the hook's earlier name, which whole-module pickles refer to

    def reread_params(self) -> None:
        """Read T and momentum from ``params`` again: after a schedule writes them while
        the loss runs under torch.compile (eager calls see such writes by themselves);
        one device sync (losses/_host_copy.py)."""
        reread_temperature_and_momentum(self._host_params, self.params)

    def _temperature_and_momentum(self) -> tuple[float, float]:
        """(T, momentum) from ``params``, as the reference reads them on every call: a
        loaded checkpoint's own values, not the constructor's, and an in-place edit's.
        Read on the host and kept while params is unchanged (losses/_host_copy.py);
        a compiled call takes those last read (see reread_params)."""
        kept = self._host_params.get(self.params)
        if kept is not None:
            return kept
        if self.params.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("RRDMomentumLoss reads T and momentum on the host after params changes: run "
                               "one eager step (or call reread_params()) before a CUDA graph capture")
        if not host_reads_allowed(self.params):
            # a trace, or meta / fake tensors (shape inference) with nothing read yet: the
            # constructor's values, which params holds unless a checkpoint was loaded
            return self.nce_t, self.memory_s.momentum
        self.reread_params()
        return self._host_params.get(self.params)

    def _check_first_z(self, z: torch.Tensor) -> None:
        """Z is frozen once set, so a NaN or inf estimate would poison every later step.
        Eager calls refuse one, with a host read until Z is set (the first call); under
        torch.compile Z is set on the device without the read."""
        if self._z_set_on_host or not host_reads_allowed(z):  # (not while torch.compile traces)
            return
        unset = tuple(v < 0 for v in self.params[2:4].tolist())
        check_first_z(z, unset, owner="RRDMomentumLoss", names=("Z_s", "Z_t"))

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, idx: torch.Tensor,
                contrast_idx: torch.Tensor | None = None) -> torch.Tensor:
        check_bank_storage(**{"memory_s.memory": self.memory_s.memory, "memory_t.memory": self.memory_t.memory})
        idx, contrast_idx = check_bank_loss_inputs(f_s, f_t, idx, contrast_idx, s_dim=self.s_dim, t_dim=self.t_dim,
                                                   n_data=self.n_data, projections=(self.embed_s, self.embed_t))
        # The scores below resolve bank_contrast's backend before anything is written;
        # resolve bank_update's now too, so that it cannot fail after Z was set.
        _backend.resolve(self.memory_s.memory.device, "bank_update", None)
        if contrast_idx is None:
            contrast_idx = self.memory_s.sample(idx, self.nce_k, check_indices=False)  # idx checked above
        z_s = _embed(self.embed_s, f_s)
        with torch.no_grad():
            z_t = _embed(self.embed_t, f_t)
        need_grad = torch.is_grad_enabled() and z_s.requires_grad
        # The indices were range-checked above with one sync; under torch.compile that
        # check is skipped and the ops make it inside their opaque bodies instead.
        checks = torch.compiler.is_compiling()
        temperature, momentum = self._temperature_and_momentum()
        kw = dict(temperature=temperature, epilogue="scores", check_indices=checks)

        with torch.no_grad():
            s_t = self.memory_s.contrast(z_t.to(z_s.dtype), contrast_idx, **kw)
            s_s = self.memory_t.contrast(z_s.detach(), contrast_idx, **kw)
            # Z: set once from the first batch, then a constant. Kept local (rounded to
            # params' dtype, as stored) and written below, once nothing can fail.
            n = float(self.n_data)
            z_new = torch.stack([s_s.float().exp().mean() * n, s_t.float().exp().mean() * n])
            z = torch.where(self.params[2:4] < 0, z_new.to(self.params.dtype), self.params[2:4])
            self._check_first_z(z)
            x_s = s_s.float().exp() / z[0].float()
            x_t = s_t.float().exp() / z[1].float()
            log_p_s = torch.log_softmax(x_s / self.tau_s, dim=1)
            p_t = torch.softmax(x_t / self.tau_t, dim=1)
            loss = -(p_t * log_p_s).sum(1).mean()
            # d loss / d z_s, taken now because the bank update below changes the rows
            # the scores' backward would read. Written out (the chain rule through the
            # softmax cross-entropy and exp(s) / Z) rather than torch.autograd.grad, which
            # torch.compile cannot trace; the bank part is the scores op's own backward.
            dq = None
            if need_grad:
                p_rows = p_t.sum(dim=1, keepdim=True)  # 1 up to rounding, kept as autograd has it
                grad_s = x_s * (log_p_s.exp() * p_rows - p_t) / (x_s.shape[0] * self.tau_s)
                dq = _scores_query_grad(grad_s, z_s.detach(), self.memory_t.memory, contrast_idx, temperature)

        with torch.no_grad():  # the state changes only now: Z, then the banks
            self.params[2:4] = z
            self._host_params.stamp(self.params)   # T and momentum as read
        if not torch.compiler.is_compiling():
            self._z_set_on_host = True
        bank_update_(self.memory_s.memory, idx, z_s.detach(), momentum, check_indices=checks)
        bank_update_(self.memory_t.memory, idx, z_t, momentum, check_indices=checks)
        if dq is None:
            return loss
        return _AttachGradient.apply(loss, z_s, dq)

    def extra_repr(self) -> str:
        return f"n_data={self.n_data}, nce_k={self.nce_k}, nce_t={self.nce_t}, tau_s={self.tau_s}, tau_t={self.tau_t}"


def _scores_query_grad(grad_scores, query, bank, idx, temperature):
    """d/d query of sum(grad_scores * s) for s = bank_contrast(..., epilogue="scores"),
    on the same backend and strategy as the forward scores."""
    from rdkernels.ops.bank_contrast import _choose, _resolve, scores_query_grad

    name = _resolve(query, None)
    strategy = _choose("auto", query, bank, idx, name)
    grad = scores_query_grad(grad_scores.contiguous(), query, bank, idx, float(temperature), name, strategy)
    return grad.to(query.dtype)


def _load_reference_momentum_keys(module, state_dict, prefix, *args) -> None:
    """``memory.contrast.memory_v1/v2`` -> ``memory_s/t.memory``, ``memory.contrast.params`` -> ``params``,
    ``memory.embed_*`` -> ``embed_*``."""
    renames = {"memory.contrast.memory_v1": "memory_s.memory", "memory.contrast.memory_v2": "memory_t.memory",
               "memory.contrast.params": "params"}
    for old, new in renames.items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
    for key in [k for k in state_dict if k.startswith(prefix + "memory.embed_")]:
        state_dict[prefix + key[len(prefix + "memory."):]] = state_dict.pop(key)
