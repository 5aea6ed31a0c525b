"""The bank-contrast merge kernel (triton_merge.py) against the merge in float64.

The ops' tests reach the merge through a handful of splits (three under the
interpreter); here it gets synthetic partials directly: many more splits than
one step of its loop takes, widths that leave a column slice part-empty, and
both placements of the positive (in the partials: gather; left to the merge:
dense).
"""
import math

import pytest
import torch
from conftest import DEVICE
from helpers import assert_close
from rdkernels.backend import available_backends

from rdkernels.ops.bank_contrast.reference import nce_constants

pytestmark = pytest.mark.skipif("triton" not in available_backends(DEVICE, "bank_contrast"),
                                reason="Triton cannot run here")

TEMPERATURE = 0.1


def _partials(epilogue, batch, splits, dim, n_bank, k):
    g = torch.Generator().manual_seed(batch * 1000 + splits + dim)
    query = torch.randn(batch, dim, generator=g)
    bank = torch.randn(n_bank, dim, generator=g)
    idx = torch.randint(0, n_bank, (batch, k + 1), generator=g)
    dq_parts = torch.randn(batch, splits, dim, generator=g)
    loss_parts = torch.rand(batch, splits, generator=g)
    max_parts = torch.randn(batch, splits, generator=g) * 3
    max_parts[:, ::7] = -math.inf                       # splits that saw no column
    sum_parts = torch.rand(batch, splits, generator=g) + 0.5
    z = torch.tensor([1.7e4])
    return query, bank, idx, z, loss_parts, dq_parts, max_parts, sum_parts


def _merge_f64(epilogue, positive_in_parts, query, bank, idx, z, n_data, loss_parts, dq_parts, max_parts,
               sum_parts):
    """(row_loss, dq) as the module doc states the merge, in float64."""
    query, bank, z = query.double(), bank.double(), z.double()
    dq_parts, loss_parts = dq_parts.double(), loss_parts.double()
    max_parts, sum_parts = max_parts.double(), sum_parts.double()
    inv_t = 1.0 / TEMPERATURE
    w0 = bank[idx[:, 0]]
    s0 = (w0 * query).sum(1) * inv_t
    if epilogue == "nce":
        loss, dq = loss_parts.sum(1), dq_parts.sum(1)
        if not positive_in_parts:
            log_c = nce_constants(idx.shape[1] - 1, n_data)[0]
            t0 = log_c - (s0 - torch.log(z))
            loss = loss + torch.nn.functional.softplus(t0)
            dq = dq - (inv_t * torch.sigmoid(t0))[:, None] * w0
        return loss, dq
    top = max_parts.max(1).values
    if not positive_in_parts:
        top = torch.maximum(top, s0)
    scale = torch.exp(max_parts - top[:, None])
    total = (scale * sum_parts).sum(1)
    weighted = (scale[:, :, None] * dq_parts).sum(1)
    if not positive_in_parts:
        p0 = torch.exp(s0 - top)
        total, weighted = total + p0, weighted + p0[:, None] * w0
    return top + torch.log(total) - s0, (weighted / total[:, None] - w0) * inv_t


@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
@pytest.mark.parametrize("positive_in_parts", [True, False], ids=["gather", "dense"])
@pytest.mark.parametrize("batch,splits,dim", [(3, 300, 40), (2, 5, 128), (2, 130, 16), (1, 3, 1024)])
def test_merge_matches_float64(epilogue, positive_in_parts, batch, splits, dim):
    from rdkernels.ops.bank_contrast.triton_merge import merge_partials_triton
    n_bank, k = 50, 20
    query, bank, idx, z, loss_parts, dq_parts, max_parts, sum_parts = _partials(epilogue, batch, splits, dim,
                                                                                 n_bank, k)
    to = lambda t: t.to(DEVICE)  # noqa: E731
    loss, dq = merge_partials_triton(epilogue, to(query), to(bank), to(idx), to(z), TEMPERATURE, n_bank,
                                     to(loss_parts), to(dq_parts), to(max_parts), to(sum_parts),
                                     positive_in_parts=positive_in_parts)
    ref_loss, ref_dq = _merge_f64(epilogue, positive_in_parts, query, bank, idx, z, n_bank, loss_parts, dq_parts,
                                  max_parts, sum_parts)
    assert_close("row loss", loss.cpu(), ref_loss, 1e-5, 1e-5)
    assert_close("dq", dq.cpu(), ref_dq, 1e-5, 1e-5)
