"""Input checks shared by the memory-bank losses (CRD, WCoRD, RRD's momentum variant)."""
from __future__ import annotations

import math

import torch
from torch import nn

from rdkernels._validation import (BANK_DTYPES, FLOAT_DTYPES, INDEX_DTYPES, check_dim, check_in_unit_interval,
                                   check_index_ranges, check_positive, check_positive_int, check_tensor)
from rdkernels.backend import BACKENDS
from rdkernels.ops.bank_contrast import STRATEGIES


def check_bank_loss_args(s_dim, t_dim, n_data, feat_dim, nce_k, nce_t, nce_m) -> tuple:
    """The constructor arguments every memory-bank loss takes, returned in this
    order as Python numbers: the sizes positive ints (Python or NumPy, not bool:
    ``s_dim=True`` is a mistake, not 1), ``nce_t`` positive and finite, ``nce_m``
    in [0, 1]."""
    sizes = (("s_dim", s_dim), ("t_dim", t_dim), ("n_data", n_data), ("feat_dim", feat_dim), ("nce_k", nce_k))
    return (*(check_positive_int(name, value) for name, value in sizes),
            check_positive("nce_t", nce_t), check_in_unit_interval("nce_m", nce_m))


def check_bank_options(bank_dtype, backend, strategy="auto") -> None:
    """Constructor options the ops would otherwise reject on every forward."""
    if bank_dtype not in BANK_DTYPES:
        raise TypeError(f"bank_dtype must be torch.float32 or torch.bfloat16, got {bank_dtype!r}")
    if backend is not None and not (isinstance(backend, str) and backend.lower() in BACKENDS):
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def check_fits_projection(name: str, f: torch.Tensor, projection: nn.Module) -> None:
    """``f`` on the device of the projection it goes through and, outside autocast,
    of its dtype: ``F.linear`` would otherwise refuse it naming neither."""
    weight = getattr(projection, "weight", None)   # nn.Linear's, Embed's: parameters() walks the module tree
    if not isinstance(weight, torch.Tensor):
        weight = next(projection.parameters())
    if f.device != weight.device:
        raise ValueError(f"{name} is on {f.device} but the loss's parameters and buffers are on {weight.device}: "
                         f"move the loss there (loss.to({str(f.device)!r})) or {name} to {weight.device}")
    autocast = f.device.type != "meta" and torch.is_autocast_enabled(f.device.type)
    if f.dtype != weight.dtype and not autocast:
        raise TypeError(f"{name} is {f.dtype} but the loss's projections are {weight.dtype}: cast {name} "
                        f"(or the loss) to one dtype, or call the loss under torch.autocast")


def check_bank_storage(**banks: torch.Tensor) -> None:
    """Memory banks in a dtype the ops store: ``Module.half()`` (or ``.double()``) casts
    every floating buffer, banks included, and the ops would then refuse a "bank" the user never named."""
    for name, bank in banks.items():
        if bank.dtype not in BANK_DTYPES:
            raise TypeError(f"the memory bank {name} is {bank.dtype} (was the whole loss cast, by .half(), .double() "
                            "or .to(dtype)?); banks are float32 or bfloat16: keep the loss in float32 and use "
                            "torch.autocast, or build it with bank_dtype=torch.bfloat16")


def check_bank_loss_inputs(f_s, f_t, idx, contrast_idx, *, s_dim: int, t_dim: int, n_data: int,
                           projections: tuple[nn.Module, nn.Module], check_values: bool = True) -> tuple:
    """f_s [B, s_dim], f_t [B, t_dim] (or reshapeable) that fit their ``projections``,
    idx [B] and contrast_idx [B, K+1] (K >= 1, or None) in [0, n_data): every error
    names the argument. Returns (idx, contrast_idx) made contiguous, as the ops
    take them (any layout is accepted). Then, unless ``check_values`` is False (the
    caller makes :func:`check_bank_loss_values` itself, later, with more to check),
    the values' check of :func:`check_bank_loss_values`."""
    check_tensor("f_s", f_s, dtypes=FLOAT_DTYPES, contiguous=False)
    check_tensor("f_t", f_t, dtypes=FLOAT_DTYPES, device=f_s.device, contiguous=False)
    if f_s.dim() < 2 or math.prod(f_s.shape[1:]) != s_dim:
        raise ValueError(f"f_s must be [B, {s_dim}] (or reshape to it), got shape {tuple(f_s.shape)}")
    if f_t.dim() < 2 or math.prod(f_t.shape[1:]) != t_dim:
        raise ValueError(f"f_t must be [B, {t_dim}] (or reshape to it), got shape {tuple(f_t.shape)}")
    check_dim("f_t", f_t, 0, f_s.shape[0], "f_s's batch size")
    check_fits_projection("f_s", f_s, projections[0])
    check_fits_projection("f_t", f_t, projections[1])
    check_tensor("idx", idx, ndim=1, dtypes=INDEX_DTYPES, device=f_s.device, contiguous=False)
    check_dim("idx", idx, 0, f_s.shape[0], "f_s's batch size")
    if contrast_idx is not None:
        check_tensor("contrast_idx", contrast_idx, ndim=2, dtypes=INDEX_DTYPES, device=f_s.device, contiguous=False)
        check_dim("contrast_idx", contrast_idx, 0, f_s.shape[0], "f_s's batch size")
        if contrast_idx.shape[1] < 2:
            raise ValueError("contrast_idx must have at least 2 columns (the positive and a negative), "
                             f"got shape {tuple(contrast_idx.shape)}")
    if check_values:
        check_bank_loss_values(f_s, f_t, idx, contrast_idx, n_data)
    return idx.contiguous(), None if contrast_idx is None else contrast_idx.contiguous()


def check_bank_loss_values(f_s, f_t, idx, contrast_idx, n_data: int, more_finite: dict | None = None) -> None:
    """With one host sync (skipped under torch.compile and with index checks off),
    all indices range-checked and f_s, f_t (and the ``more_finite`` tensors, by
    name) checked to be finite: a NaN or inf there would be written into the banks
    and poison every later step."""
    check_index_ranges({"idx": idx, "contrast_idx": contrast_idx}, n_data,
                       finite={"f_s": f_s, "f_t": f_t, **(more_finite or {})})


def check_first_z(z: torch.Tensor, unset: tuple[bool, bool], *, owner: str, names: tuple[str, str]) -> None:
    """NCE's normaliser Z is set once, from the first batch, then frozen, so a NaN or
    inf estimate would poison every later step: refuse it (one host read). ``z``:
    the two values about to be stored; ``unset``: which of them this call sets."""
    for value, was_unset, name, features in zip(z.tolist(), unset, names, ("f_s", "f_t")):
        if was_unset and not math.isfinite(value):
            raise ValueError(f"{owner} sets {name} once, from the first batch, and got {value}: {features} (or the "
                             f"bank it is scored against) holds NaN or inf, or nce_t is so small that exp(s / nce_t) "
                             "overflows; Z was left unset")
