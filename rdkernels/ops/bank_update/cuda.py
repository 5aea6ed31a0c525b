"""rdkernels._C wrapper for the in-place bank update."""
from __future__ import annotations

import torch

from rdkernels.backend import cuda_extension
from rdkernels.ops._cuda_common import dtype_code, stream_of


def bank_update_cuda_(bank: torch.Tensor, index: torch.Tensor, values: torch.Tensor, momentum: float) -> None:
    cuda_extension().bank_update(
        bank.data_ptr(), dtype_code(bank), bank.shape[1],
        index.data_ptr(), dtype_code(index),
        values.data_ptr(), dtype_code(values), values.shape[0],
        float(momentum), stream_of(bank),
    )
