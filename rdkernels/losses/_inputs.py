"""Input checks shared by the memory-bank losses (CRD, WCoRD, RRD's momentum variant)."""
from __future__ import annotations

import math

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


def check_bank_loss_inputs(f_s, f_t, idx, contrast_idx, *, s_dim: int, t_dim: int, n_data: int) -> None:
    """f_s [B, s_dim], f_t [B, t_dim] (or reshapeable), idx [B] and contrast_idx
    [B, K+1] (K >= 1, or None) in [0, n_data): every error names the argument.
    All indices are range-checked with one host sync (skipped under torch.compile)."""
    check_tensor("f_s", f_s, dtypes=FLOAT_DTYPES, contiguous=False)
    check_tensor("f_t", f_t, dtypes=FLOAT_DTYPES, device=f_s.device, contiguous=False)
    if f_s.dim() < 2 or math.prod(f_s.shape[1:]) != s_dim:
        raise ValueError(f"f_s must be [B, {s_dim}] (or reshape to it), got shape {tuple(f_s.shape)}")
    if f_t.dim() < 2 or math.prod(f_t.shape[1:]) != t_dim:
        raise ValueError(f"f_t must be [B, {t_dim}] (or reshape to it), got shape {tuple(f_t.shape)}")
    check_dim("f_t", f_t, 0, f_s.shape[0], "f_s's batch size")
    check_tensor("idx", idx, ndim=1, dtypes=INDEX_DTYPES, device=f_s.device)
    check_dim("idx", idx, 0, f_s.shape[0], "f_s's batch size")
    if contrast_idx is not None:
        check_tensor("contrast_idx", contrast_idx, ndim=2, dtypes=INDEX_DTYPES, device=f_s.device)
        check_dim("contrast_idx", contrast_idx, 0, f_s.shape[0], "f_s's batch size")
        if contrast_idx.shape[1] < 2:
            raise ValueError("contrast_idx must have at least 2 columns (the positive and a negative), "
                             f"got shape {tuple(contrast_idx.shape)}")
    check_index_ranges({"idx": idx, "contrast_idx": contrast_idx}, n_data)
