"""CRDLoss: contrastive representation distillation (Tian et al., 2019) on the
fused ops, with RepDistiller's semantics and checkpoint layout.

Per step, for student features f_s and teacher features f_t:

1. v_s = embed_s(f_s), v_t = embed_t(f_t): Linear + L2 normalisation.
2. Scores of the student anchor v_s against the teacher bank (memory_v2) and of
   the teacher anchor v_t against the student bank (memory_v1), rows idx.
3. On the very first call only, Z_v1 and Z_v2 are set to mean(exp(s)) * n_data
   of those scores and frozen (no gradient flows through Z, ever). One
   deviation from the reference: a Z that comes out NaN or inf (non-finite
   features, or an nce_t so small that exp(s / nce_t) overflows) raises a
   ValueError and stays unset, where the reference would freeze it and return
   NaN losses for good.
4. loss = NCE(student anchor) + NCE(teacher anchor).
5. Then (never before scoring) both banks get the momentum update at the
   dataset indices: memory_v1 <- v_s, memory_v2 <- v_t.

The gradient of each NCE term is computed in the same gather pass as the loss,
so the bank update in step 5 cannot corrupt the backward pass. Nothing (Z, the
banks) is written until both losses were computed, so a call that fails
leaves the state as it was.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from rdkernels import backend as _backend
from rdkernels import distributed
from rdkernels._validation import as_real
from rdkernels.losses._embed import Embed
from rdkernels.losses._host_copy import HostCopy, ReadsParamsAfterApply, reread_temperature_and_momentum
from rdkernels.losses._inputs import (check_bank_loss_args, check_bank_loss_inputs, check_bank_options,
                                     check_bank_storage, check_first_z)
from rdkernels.memory import init_bank_, sample_uniform
from rdkernels.ops import bank_contrast, bank_update_, estimate_nce_z
from rdkernels.ops.bank_contrast.sample_counts import shared_sample_counts

_OPT_FIELDS = ("s_dim", "t_dim", "n_data", "feat_dim", "nce_k", "nce_t", "nce_m")


def _as_stored(params: torch.Tensor, *values: float) -> tuple[float, ...]:
    """``values`` rounded to ``params``' dtype (float32 holds 0.13 as 0.12999999523...)."""
    return tuple(torch.tensor(values, dtype=params.dtype, device="cpu").tolist())


def _is_opt(s_dim) -> bool:
    """Whether the first argument is RepDistiller's options object rather than a size."""
    return s_dim is not None and not isinstance(s_dim, int) and any(hasattr(s_dim, f) for f in _OPT_FIELDS)


def _opt_fields(opt) -> tuple:
    # RepDistiller's train_student.py sets s_dim, t_dim and n_data on opt by hand before
    # building the loss: a script that forgot one hears which, not that s_dim is no integer
    missing = [f for f in _OPT_FIELDS if not hasattr(opt, f)]
    if missing:
        raise TypeError(f"CRDLoss(opt): opt has no {', '.join(missing)}; it needs {', '.join(_OPT_FIELDS)} "
                        "(RepDistiller's train_student.py sets s_dim, t_dim and n_data before building the loss)")
    return tuple(getattr(opt, f) for f in _OPT_FIELDS)


class ContrastMemory(ReadsParamsAfterApply, nn.Module):
    """The two banks and ``params = [K, T, Z_v1, Z_v2, momentum]`` (Z = -1 until
    set), under RepDistiller's buffer names so its checkpoints load as they are."""

    def __init__(self, feat_dim: int, n_data: int, nce_k: int, nce_t: float, nce_m: float,
                 bank_dtype: torch.dtype = torch.float32, z_momentum: float | None = None,
                 sync_banks: bool | str = "auto", process_group=None):
        super().__init__()
        self.n_data, self.nce_k = n_data, nce_k
        self.z_momentum, self.sync_banks, self.process_group = z_momentum, sync_banks, process_group
        self.register_buffer("params", torch.tensor([float(nce_k), nce_t, -1.0, -1.0, nce_m]))
        # (T, momentum) a call traced before any eager step takes (nothing kept on the host
        # yet): the constructor's, or the last reread_params()'s (a loaded checkpoint's);
        # rounded to params' dtype, as an eager call reads them
        self._traced_first_params = _as_stored(self.params, nce_t, nce_m)
        self.register_buffer("memory_v1", init_bank_(torch.empty(n_data, feat_dim)).to(bank_dtype))
        self.register_buffer("memory_v2", init_bank_(torch.empty(n_data, feat_dim)).to(bank_dtype))
        # (T, momentum) read from params and kept on the host while params is unchanged,
        # so a step costs no device sync (losses/_host_copy.py); and whether the synced
        # banks were made identical on every rank. A loaded state_dict's T and momentum
        # are read at once (so a compiled loss takes them too); the ranks align again.
        self._host_params = HostCopy()
        self._ranks_aligned = False
        self.register_load_state_dict_post_hook(ContrastMemory._after_load)

    @staticmethod
    def _after_load(module, incompatible_keys) -> None:
        module.reread_params()
        module._ranks_aligned = False

    _forget_host_state = _after_load   # the hook's earlier name, which whole-module pickles refer to

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_traced_first_params" not in self.__dict__:   # a whole-module pickle of an earlier version
            self._traced_first_params = tuple(self.params.detach().cpu()[[1, 4]].tolist())

    def reread_params(self) -> None:
        """Read T and momentum from ``params`` again: after a schedule writes them while
        the loss runs under torch.compile (eager calls see such writes by themselves);
        one device sync (losses/_host_copy.py)."""
        read = reread_temperature_and_momentum(self._host_params, self.params, only_if_z_set=True)
        if read is not None:
            self._traced_first_params = read

    def _batch_z(self, v_s, v_t, idx, temperature, backend, strategy, check_indices, synced):
        """[Z_v1, Z_v2] of this batch (mean of exp(s) times n_data), averaged
        over the global batch when the banks are synchronised."""
        kw = dict(temperature=temperature, n_data=self.n_data, backend=backend, strategy=strategy,
                  check_indices=check_indices)
        z = torch.cat([estimate_nce_z(v_s.detach(), self.memory_v2, idx, **kw),   # student anchor, teacher bank
                       estimate_nce_z(v_t.detach(), self.memory_v1, idx, **kw)])  # teacher anchor, student bank
        return distributed.weighted_mean(z, idx.numel(), self.process_group) if synced else z

    def _read_params(self, v_s, v_t, idx, backend, strategy, check_indices, synced):
        """(T, momentum, z, z_new): ``z`` = [Z_v1, Z_v2] in float32, as bank_contrast
        takes it (free for fp32 params; a module cast to bf16 has bf16 params).

        T and momentum are read on the host and kept while params is unchanged (an
        in-place edit of params, as a momentum or temperature schedule makes, is read
        at the next call, as the reference reads params every call; an edit through
        ``params.data`` bumps no version counter and is not seen). On the first read
        any unset Z is estimated from this batch (CRD's rule: mean of exp(s) over all
        B*(K+1) scores times n_data), rounded to params' dtype as it will be stored,
        and returned with z_new=True: forward writes it only after the losses were
        computed, so a call that fails leaves Z unset. Later calls read nothing.

        A call traced by torch.compile before any eager one cannot read params: it
        takes the constructor's (or a loaded checkpoint's) T and momentum, and sets
        any unset Z on the device (torch.where, no NaN check). Its forward keeps
        (T, momentum), so the next compiled call recompiles once without the Z
        estimate, as RRDMomentumLoss does."""
        z = self.params[2:4]
        kept = self._host_params.get(self.params)
        if kept is not None:
            return (*kept, z.float(), False)
        if torch.compiler.is_compiling():
            temperature, momentum = self._traced_first_params
            z_batch = self._batch_z(v_s, v_t, idx, temperature, backend, strategy, check_indices, synced)
            return temperature, momentum, torch.where(z < 0, z_batch.to(z.dtype), z).float(), True
        if self.params.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("CRDLoss reads T and momentum (and sets Z) on the host on its first call; run one "
                               "step outside CUDA graph capture first, as graph warm-up steps do")
        _, temperature, z_v1, z_v2, momentum = self.params.tolist()
        unset = (z_v1 < 0, z_v2 < 0)
        if not any(unset):
            return temperature, momentum, z.float(), False
        with torch.no_grad():
            z_batch = self._batch_z(v_s, v_t, idx, temperature, backend, strategy, check_indices, synced)
            z = torch.where(z < 0, z_batch.to(z.dtype), z)
        check_first_z(z, unset, owner="CRDLoss", names=("Z_v1", "Z_v2"))
        return temperature, momentum, z.float(), True

    def forward(self, v_s, v_t, index, idx, backend=None, strategy="auto", check_indices=True):
        """NCE(student anchor) + NCE(teacher anchor), then the bank updates."""
        synced = distributed.active(self.process_group, self.sync_banks)
        # bank_contrast resolves its backend before it runs; resolve bank_update's
        # now, so that it cannot fail after Z was set.
        _backend.resolve(self.memory_v1.device, "bank_update", backend)
        if synced and not self._ranks_aligned:  # each rank initialised its own banks
            distributed.broadcast_from_first_rank_([self.memory_v1, self.memory_v2, self.params], self.process_group)
            self._ranks_aligned = True
        temperature, momentum, z, z_new = self._read_params(v_s, v_t, idx, backend, strategy, check_indices, synced)
        kw = dict(temperature=temperature, epilogue="nce", n_data=self.n_data, backend=backend,
                  strategy=strategy, check_indices=check_indices)
        # The dense strategy counts idx's samples once for both directions (a memo in
        # Python state: eager only; compiled graphs count twice).
        with contextlib.nullcontext() if torch.compiler.is_compiling() else shared_sample_counts():
            loss_s = bank_contrast(v_s, self.memory_v2, idx, z=z[0:1], **kw)
            loss_t = bank_contrast(v_t, self.memory_v1, idx, z=z[1:2], **kw)
        with torch.no_grad():  # both losses computed: only now is any state written
            if z_new:
                # Traced, inductor may order this write before the loss op that refuses a
                # non-finite Z raises: keep only a finite pair (else Z stays unset, as eagerly).
                self.params[2:4] = (torch.where(torch.isfinite(z).all(), z, self.params[2:4])
                                    if torch.compiler.is_compiling() else z)
            if self.z_momentum is not None:  # EMA of Z, from the banks as scored
                z = self._batch_z(v_s, v_t, idx, temperature, backend, strategy, False, synced)
                self.params[2:4] = self.z_momentum * self.params[2:4] + (1.0 - self.z_momentum) * z
            # kept only now, after Z is written: a kept (T, momentum) means Z is set (see _read_params)
            self._host_params.set(self.params, (temperature, momentum))
            v_s, v_t = v_s.detach(), v_t.detach()
            if synced:  # every rank applies the global batch's update, in rank order
                group = self.process_group
                index = distributed.all_gather_cat(index, group)
                v_s, v_t = distributed.all_gather_cat(v_s, group), distributed.all_gather_cat(v_t, group)
            bank_update_(self.memory_v1, index, v_s, momentum, backend=backend, check_indices=check_indices)
            bank_update_(self.memory_v2, index, v_t, momentum, backend=backend, check_indices=check_indices)
        return loss_s + loss_t


class CRDLoss(nn.Module):
    """Contrastive representation distillation loss.

    ``CRDLoss(s_dim, t_dim, n_data, feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5)``
    or ``CRDLoss(opt)`` with RepDistiller's ``opt`` (s_dim, t_dim, feat_dim,
    nce_k, nce_t, nce_m, n_data). ``forward(f_s, f_t, idx, contrast_idx=None)``:
    ``idx`` [B] are the samples' dataset indices; ``contrast_idx`` [B, K+1] the
    bank rows to contrast with (column 0 the positive); if None, K = nce_k
    negatives are drawn uniformly on the device.

    Keyword-only extras:

    * ``bank_dtype``: float32 (default) or bfloat16 bank storage (half the bytes
      moved; arithmetic stays fp32).
    * ``z_momentum``: None (default) keeps the reference's Z, set once from the
      first batch. A value such as 0.99 instead tracks Z as an exponential moving
      average of each batch's estimate, taken after scoring (one extra gather
      pass per direction per step).
    * ``sync_banks``: "auto" (default) keeps the banks identical on every rank
      when torch.distributed is initialised with more than one rank (see
      rdkernels.distributed: the first rank's banks are broadcast on the first
      step, then every rank applies the global batch's update); True requires it;
      False keeps per-rank banks as the reference code does. ``process_group``
      selects the group. The synced update reads the ranks' batch sizes on the
      host: torch.compile breaks its graph there (``fullgraph=True`` fails) and
      such a step cannot be captured in a CUDA graph.
    * ``backend``: per-module override of rdkernels.set_backend; ``strategy``:
      bank_contrast's "auto" (default), "gather" or "dense".

    ``torch.compile`` (``fullgraph=True`` too) works from the first call: a first
    call traced before any eager one sets Z on the device (without the eager
    call's NaN check) and the next call recompiles once without that estimate. A
    compiled loss keeps T and momentum as last read: after a schedule writes
    ``contrast.params``, call :meth:`reread_params` (``load_state_dict`` and ``.to()`` do);
    each new pair is a recompile, within torch's recompile limit.
    """

    def __init__(self, s_dim=None, t_dim=None, n_data=None, feat_dim=128, nce_k=16384, nce_t=0.07, nce_m=0.5,
                 *, bank_dtype: torch.dtype = torch.float32, z_momentum: float | None = None,
                 sync_banks: bool | str = "auto", process_group=None, backend: str | None = None,
                 strategy: str = "auto"):
        super().__init__()
        if _is_opt(s_dim):
            s_dim, t_dim, n_data, feat_dim, nce_k, nce_t, nce_m = _opt_fields(s_dim)
        s_dim, t_dim, n_data, feat_dim, nce_k, nce_t, nce_m = check_bank_loss_args(
            s_dim, t_dim, n_data, feat_dim, nce_k, nce_t, nce_m)
        if z_momentum is not None:
            if not 0.0 <= as_real("z_momentum", z_momentum) < 1.0:
                raise ValueError(f"z_momentum must be None or lie in [0, 1), got {z_momentum!r}")
            z_momentum = float(z_momentum)
        if sync_banks not in (True, False, "auto"):
            raise ValueError(f"sync_banks must be True, False or 'auto', got {sync_banks!r}")
        check_bank_options(bank_dtype, backend, strategy)
        self.s_dim, self.t_dim, self.n_data, self.nce_k = s_dim, t_dim, n_data, nce_k
        self.backend, self.strategy = backend, strategy
        self.embed_s = Embed(s_dim, feat_dim, fused=True)
        self.embed_t = Embed(t_dim, feat_dim, fused=True)
        self.contrast = ContrastMemory(feat_dim, n_data, nce_k, nce_t, nce_m, bank_dtype,
                                       z_momentum=z_momentum, sync_banks=sync_banks, process_group=process_group)

    def _validate(self, f_s, f_t, idx, contrast_idx) -> tuple:
        check_bank_storage(**{"contrast.memory_v1": self.contrast.memory_v1,
                              "contrast.memory_v2": self.contrast.memory_v2})
        return check_bank_loss_inputs(f_s, f_t, idx, contrast_idx, s_dim=self.s_dim, t_dim=self.t_dim,
                                      n_data=self.n_data, projections=(self.embed_s, self.embed_t))

    def reread_params(self) -> None:
        """Read T and momentum from ``contrast.params`` again (one device sync): for a
        compiled loss after a schedule writes them (eager calls see such writes)."""
        self.contrast.reread_params()

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, idx: torch.Tensor,
                contrast_idx: torch.Tensor | None = None) -> torch.Tensor:
        idx, contrast_idx = self._validate(f_s, f_t, idx, contrast_idx)
        if contrast_idx is None:
            contrast_idx = sample_uniform(idx, self.nce_k, self.n_data)
        v_s = self.embed_s(f_s, backend=self.backend)
        v_t = self.embed_t(f_t, backend=self.backend)
        # Eagerly, _validate checked every index with one sync. Under torch.compile
        # that check is skipped and the ops make it inside their opaque bodies.
        return self.contrast(v_s, v_t, idx, contrast_idx, backend=self.backend, strategy=self.strategy,
                             check_indices=torch.compiler.is_compiling())
