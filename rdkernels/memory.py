"""MemoryBank: a [n_data, dim] buffer of past embeddings, with sampling,
scoring and the momentum update on the fused ops."""
from __future__ import annotations

import math

import torch
from torch import nn

from rdkernels._validation import (BANK_DTYPES, INDEX_DTYPES, as_int, check_in_unit_interval, check_index_range,
                                   check_positive_int, check_tensor)
from rdkernels.ops import bank_contrast, bank_update_


def init_bank_(bank: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """RepDistiller's initialisation: U(-s, s) with s = 1/sqrt(dim/3) (rows of norm ~1)."""
    bound = 1.0 / math.sqrt(bank.shape[1] / 3)
    with torch.no_grad():
        noise = torch.rand(bank.shape, generator=generator, device=bank.device, dtype=torch.float32)
        bank.copy_(noise.mul_(2 * bound).sub_(bound))
    return bank


def sample_uniform(index: torch.Tensor, k: int, n_data: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """idx[B, k+1] on ``index``'s device: column 0 = index, then k ids drawn
    uniformly from [0, n_data) with replacement (RepDistiller's AliasMethod with
    uniform probabilities draws exactly this distribution)."""
    idx = torch.randint(0, n_data, (index.shape[0], k + 1), device=index.device, generator=generator)
    idx[:, 0] = index
    return idx


class MemoryBank(nn.Module):
    """A memory bank of ``n_data`` rows of width ``dim``.

    Args:
        n_data: rows (the dataset size).
        dim: embedding width.
        momentum: m in M[y] = normalize(m * M[y] + (1 - m) * v).
        dtype: storage, float32 or bfloat16 (half the bytes moved; arithmetic stays fp32).
    """

    def __init__(self, n_data: int, dim: int, momentum: float = 0.5, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        super().__init__()
        n_data, dim = check_positive_int("n_data", n_data), check_positive_int("dim", dim)
        momentum = check_in_unit_interval("momentum", momentum)
        if dtype not in BANK_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
        self.n_data, self.dim, self.momentum = n_data, dim, momentum
        self.register_buffer("memory", init_bank_(torch.empty(n_data, dim, device=device)).to(dtype))

    def sample(self, index: torch.Tensor, k: int, generator: torch.Generator | None = None, *,
               check_indices: bool = True) -> torch.Tensor:
        """Uniform negatives on the bank's device, the positive ``index`` in column 0.
        ``check_indices=False`` skips the range check of ``index`` (one host sync)
        for callers that made it."""
        check_tensor("index", index, ndim=1, dtypes=INDEX_DTYPES, device=self.memory.device, contiguous=False)
        k = as_int("k", k)
        if k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        if check_indices:
            check_index_range("index", index, self.n_data)
        return sample_uniform(index, k, self.n_data, generator)

    def contrast(self, query: torch.Tensor, idx: torch.Tensor, *, temperature: float, epilogue: str = "softmax",
                 z: torch.Tensor | None = None, reduction: str = "mean", **kwargs) -> torch.Tensor:
        """:func:`rdkernels.ops.bank_contrast` of ``query`` against this bank."""
        return bank_contrast(query, self.memory, idx, temperature=temperature, epilogue=epilogue, z=z,
                             n_data=self.n_data, reduction=reduction, **kwargs)

    @torch.no_grad()
    def update_(self, index: torch.Tensor, values: torch.Tensor, **kwargs) -> None:
        """Momentum update of rows ``index`` with ``values`` (detached)."""
        bank_update_(self.memory, index, values, self.momentum, **kwargs)

    def extra_repr(self) -> str:
        return f"n_data={self.n_data}, dim={self.dim}, momentum={self.momentum}, dtype={self.memory.dtype}"
