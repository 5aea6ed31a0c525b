"""Strided activations (a transpose, a column slice) are accepted by every op and
give what their contiguous copies give, gradients included; state tensors (a
bank, a queue) must stay contiguous and are refused, untouched, otherwise."""
import pytest
import torch

from conftest import DEVICE, backends
from helpers import unit_rows
from rdkernels.ops import (bank_contrast, bank_update_, dcd_loss, estimate_nce_z, l2_normalize,
                           shared_bank_contrast, sinkhorn)


def _strided(x: torch.Tensor, how: str) -> torch.Tensor:
    """A leaf with x's values laid out non-contiguously, and the view of it that equals x."""
    if how == "transposed":
        leaf = x.detach().t().contiguous().requires_grad_(x.requires_grad)
        return leaf, leaf.t()
    # every other column of a wider buffer: rows have stride 2 * d and elements stride 1
    wide = torch.zeros(x.shape[0], 2 * x.shape[1], dtype=x.dtype, device=x.device)
    wide[:, ::2] = 0.5
    wide[:, 1::2] = x.detach()
    wide.requires_grad_(x.requires_grad)
    return wide, wide[:, 1::2]


def _grad_of(leaf: torch.Tensor, how: str) -> torch.Tensor:
    return leaf.grad.t() if how == "transposed" else leaf.grad[:, 1::2]


HOWS = ["transposed", "column_slice"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("backend", backends("bank_contrast"))
@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
def test_bank_contrast_strided_query_and_idx(backend, epilogue, how):
    B, K, d, N = 5, 9, 32, 40
    query = unit_rows(B, d, device=DEVICE).requires_grad_()
    bank = unit_rows(N, d, device=DEVICE)
    idx = torch.randint(0, N, (B, K + 1), device=DEVICE)
    z = torch.tensor([N * 1.3], device=DEVICE) if epilogue == "nce" else None
    kw = dict(temperature=0.07, epilogue=epilogue, z=z, n_data=N, backend=backend)
    expected = bank_contrast(query, bank, idx, **kw)
    expected.backward()
    leaf, q_view = _strided(query, how)
    idx_view = idx.t().contiguous().t()
    assert not q_view.is_contiguous() and not idx_view.is_contiguous()
    actual = bank_contrast(q_view, bank, idx_view, **kw)
    actual.backward()
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(_grad_of(leaf, how), query.grad)
    if epilogue == "softmax":
        z_view = estimate_nce_z(q_view.detach(), bank, idx_view, temperature=0.07, n_data=N, backend=backend)
        torch.testing.assert_close(z_view, estimate_nce_z(query.detach(), bank, idx, temperature=0.07, n_data=N,
                                                          backend=backend))


@pytest.mark.parametrize("backend", backends("bank_update"))
def test_bank_update_strided_index_and_values(backend):
    N, d = 30, 16
    bank = unit_rows(N, d, device=DEVICE)
    index = torch.tensor([[3, 7], [11, 3]], device=DEVICE)[:, 0]     # stride 2: [3, 11]
    values = torch.randn(d, 2, device=DEVICE).t()                    # transposed
    assert not index.is_contiguous() and not values.is_contiguous()
    expected = bank_update_(bank.clone(), index.contiguous(), values.contiguous(), 0.5, backend=backend)
    actual = bank_update_(bank.clone(), index, values, 0.5, backend=backend)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert not torch.equal(actual, bank)


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("backend", backends("dcd_loss"))
def test_dcd_strided_embeddings(backend, how):
    B, d = 6, 16
    z_s = unit_rows(B, d, device=DEVICE).requires_grad_()
    z_t = unit_rows(B, d, device=DEVICE)
    tau, bias = torch.tensor(1.0, device=DEVICE), torch.tensor(0.1, device=DEVICE)
    expected = dcd_loss(z_s, z_t, tau, bias, backend=backend)
    expected.backward()
    leaf, zs_view = _strided(z_s, how)
    actual = dcd_loss(zs_view, z_t.t().contiguous().t(), tau, bias, backend=backend)
    actual.backward()
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(_grad_of(leaf, how), z_s.grad)


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("backend", backends("shared_bank_contrast"))
def test_shared_bank_contrast_strided_queries(backend, how):
    B, d, N = 5, 16, 48
    q_s = unit_rows(B, d, device=DEVICE).requires_grad_()
    q_t = unit_rows(B, d, device=DEVICE)
    queue = unit_rows(N, d, device=DEVICE)
    kw = dict(tau_s=0.05, tau_t=0.1, reduction="sum", backend=backend)
    expected = shared_bank_contrast(q_s, q_t, queue, **kw)
    expected.backward()
    leaf, qs_view = _strided(q_s, how)
    actual = shared_bank_contrast(qs_view, _strided(q_t, how)[1], queue, **kw)
    actual.backward()
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(_grad_of(leaf, how), q_s.grad)


@pytest.mark.parametrize("backend", backends("sinkhorn"))
def test_sinkhorn_strided_cost(backend):
    cost = torch.rand(3, 7, 5, device=DEVICE)
    leaf = cost.transpose(1, 2).contiguous().requires_grad_()
    view = leaf.transpose(1, 2)                                  # [3, 7, 5], not contiguous
    assert not view.is_contiguous()
    expected_cost = cost.clone().requires_grad_()
    expected = sinkhorn(expected_cost, eps=0.1, max_iters=50, backend=backend)
    expected.cost.sum().backward()
    actual = sinkhorn(view, eps=0.1, max_iters=50, backend=backend)
    actual.cost.sum().backward()
    torch.testing.assert_close(actual.cost, expected.cost)
    torch.testing.assert_close(actual.f, expected.f)
    torch.testing.assert_close(leaf.grad.transpose(1, 2), expected_cost.grad)


@pytest.mark.parametrize("backend", backends("l2_normalize"))
def test_l2_normalize_transposed_rows(backend):
    x = torch.randn(6, 24, device=DEVICE, requires_grad=True)
    expected = l2_normalize(x, backend=backend)
    (expected * torch.arange(24.0, device=DEVICE)).sum().backward()
    leaf, view = _strided(x, "transposed")
    actual = l2_normalize(view, backend=backend)
    (actual * torch.arange(24.0, device=DEVICE)).sum().backward()
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(leaf.grad.t(), x.grad)


def test_strided_bank_is_refused_untouched():
    """A strided bank is refused: the update must land in the caller's tensor,
    and a silent per-call copy of a bank is a cost the caller should see."""
    bank = torch.randn(16, 30, device=DEVICE).t()                 # [30, 16], not contiguous
    before = bank.clone()
    with pytest.raises(ValueError, match="bank must be contiguous: it is state"):
        bank_update_(bank, torch.tensor([1], device=DEVICE), torch.randn(1, 16, device=DEVICE), 0.5)
    assert torch.equal(bank, before)
