"""bank_update_ on every backend against the float64 reference."""
import numpy as np
import pytest
import torch

from conftest import DEVICE, backends
from helpers import assert_close, unit_rows
from rdkernels.ops import bank_contrast, bank_update_
from rdkernels.ops.bank_update import bank_update_reference_


def _expected(bank, index, values, momentum):
    out = bank.to(torch.float64).clone()
    bank_update_reference_(out, index, values.to(torch.float64), momentum)
    return out


@pytest.mark.parametrize("backend", backends("bank_update"))
@pytest.mark.parametrize("batch,dim", [(1, 64), (7, 96), (33, 128), (16, 256)])
@pytest.mark.parametrize("bank_dtype,value_dtype", [
    (torch.float32, torch.float32), (torch.float32, torch.float16),
    (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_matches_reference(backend, batch, dim, bank_dtype, value_dtype, index_dtype):
    n_rows = 3 * batch + 5
    bank = torch.randn(n_rows, dim, device=DEVICE).to(bank_dtype)
    index = torch.randperm(n_rows, device=DEVICE)[:batch].to(index_dtype)
    values = torch.randn(batch, dim, device=DEVICE).to(value_dtype)
    expected = _expected(bank, index, values, 0.5)
    bank_update_(bank, index, values, 0.5, backend=backend)
    # one bf16 rounding of the stored row; fp32 rows to float rounding
    atol = 8e-3 if bank_dtype == torch.bfloat16 else 1e-6
    assert_close("bank", bank, expected, atol=atol, rtol=0)


@pytest.mark.parametrize("backend", backends("bank_update"))
def test_rows_wider_than_48_kb_of_floats(backend):
    # the CUDA kernel once kept the mixed row in shared memory: launches failed past d = 12280
    bank = torch.randn(9, 13_000, device=DEVICE)
    index = torch.tensor([4, 0, 7], device=DEVICE)
    values = torch.randn(3, 13_000, device=DEVICE)
    expected = _expected(bank, index, values, 0.5)
    bank_update_(bank, index, values, 0.5, backend=backend)
    assert_close("bank", bank, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", backends("bank_update"))
def test_duplicates_last_occurrence_wins(backend):
    bank = torch.randn(6, 64, device=DEVICE)
    before = bank.clone()
    index = torch.tensor([2, 4, 2, 2, 5], device=DEVICE)
    values = torch.randn(5, 64, device=DEVICE)
    bank_update_(bank, index, values, 0.25, backend=backend)
    mixed = 0.25 * before[2].double() + 0.75 * values[3].double()  # the last 2, against the old row
    assert_close("row 2", bank[2], mixed / mixed.norm(), atol=1e-6, rtol=0)
    untouched = [0, 1, 3]
    assert torch.equal(bank[untouched], before[untouched])


@pytest.mark.parametrize("backend", backends("bank_update"))
def test_rows_are_unit_norm_and_others_untouched(backend):
    bank = torch.randn(50, 128, device=DEVICE) * 3
    before = bank.clone()
    index = torch.tensor([0, 49, 17], device=DEVICE)
    bank_update_(bank, index, torch.randn(3, 128, device=DEVICE), 0.9, backend=backend)
    assert torch.allclose(bank[index].norm(dim=1), torch.ones(3, device=DEVICE), atol=1e-6)
    rest = torch.ones(50, dtype=torch.bool, device=DEVICE)
    rest[index] = False
    assert torch.equal(bank[rest], before[rest])


@pytest.mark.parametrize("bad,match", [
    (dict(index=torch.tensor([0, 10])), "index holds values in"),
    (dict(index=torch.tensor([-1, 0])), "index holds values in"),
    (dict(index=torch.tensor([0.0, 1.0])), "index must have dtype"),
    (dict(values=torch.randn(3, 16)), "values has size 3 in dimension 0"),
    (dict(values=torch.randn(2, 8)), "values has size 8 in dimension 1"),
    (dict(bank=torch.randn(16, 10).t()), "bank must be contiguous: it is state"),
    (dict(bank=torch.randn(10, 16, dtype=torch.float64)), "bank must have dtype"),
    (dict(momentum=1.5), "momentum must lie in"),
    (dict(momentum=True), "momentum must be a real number, got bool"),
    (dict(momentum=torch.tensor(0.5)), "momentum must be a real number, got Tensor"),
    (dict(index=torch.zeros(2, 1, dtype=torch.long)), "index must have 1 dimension,"),
])
def test_bad_input_raises_and_leaves_bank(bad, match):
    args = dict(bank=torch.randn(10, 16), index=torch.tensor([0, 1]), values=torch.randn(2, 16), momentum=0.5)
    args.update(bad)
    before = args["bank"].clone()
    with pytest.raises((ValueError, TypeError), match=match):
        bank_update_(**args)
    assert torch.equal(args["bank"], before)


@pytest.mark.parametrize("backend", backends("bank_update"))
def test_version_counter_bumps(backend):
    """Autograd must see the mutation, so a backward that saved the bank fails loudly.
    The fused kernels write through a raw pointer: the wrapper bumps the counter."""
    bank = torch.randn(10, 16, device=DEVICE)
    v0 = bank._version
    bank_update_(bank, torch.tensor([1], device=DEVICE), torch.randn(1, 16, device=DEVICE), 0.5, backend=backend)
    assert bank._version > v0


@pytest.mark.parametrize("backend", backends("bank_update"))
def test_scores_backward_refuses_a_bank_updated_in_place(backend):
    """The scores epilogue saves the bank for its backward; an update between
    forward and backward must make that backward raise, not use the new rows."""
    bank = unit_rows(10, 16, device=DEVICE)
    idx = torch.tensor([[1, 2, 3], [1, 4, 5]], device=DEVICE)
    q = torch.randn(2, 16, device=DEVICE, requires_grad=True)
    scores = bank_contrast(q, bank, idx, temperature=0.1, epilogue="scores", backend=backend)
    bank_update_(bank, torch.tensor([1, 2], device=DEVICE), torch.randn(2, 16, device=DEVICE), 0.0, backend=backend)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(scores.sum(), q)


@pytest.mark.parametrize("backend", backends("bank_update"))
def test_inference_bank_updates_only_in_inference_mode(backend):
    with torch.inference_mode():
        bank = torch.randn(10, 16, device=DEVICE)
    index, values = torch.tensor([0, 3], device=DEVICE), torch.randn(2, 16, device=DEVICE)
    before = bank.clone()
    with pytest.raises(ValueError, match="bank was created under torch.inference_mode"):
        bank_update_(bank, index, values, 0.5, backend=backend)
    assert torch.equal(bank, before)
    with torch.inference_mode():  # no version counter to bump: must not fail
        bank_update_(bank, index, values, 0.5, backend=backend)
    assert_close("bank", bank, _expected(before, index, values, 0.5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", backends("bank_update"))
def test_bank_that_requires_grad_updates_only_under_no_grad(backend):
    bank = torch.nn.Parameter(torch.randn(10, 16, device=DEVICE))
    index, values = torch.tensor([0, 3], device=DEVICE), torch.randn(2, 16, device=DEVICE)
    before = bank.detach().clone()
    with pytest.raises(ValueError, match="bank requires grad; it is a buffer"):
        bank_update_(bank, index, values, 0.5, backend=backend)
    assert torch.equal(bank.detach(), before)
    with torch.no_grad():
        bank_update_(bank, index, values, 0.5, backend=backend)
    assert_close("bank", bank, _expected(before, index, values, 0.5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", backends("bank_update"))
def test_values_that_view_the_bank(backend):
    """values = bank[0:4] written to rows 1..4: a kernel program must not read a
    values row another program already overwrote."""
    bank = torch.randn(8, 16, device=DEVICE)
    index = torch.tensor([1, 2, 3, 4], device=DEVICE)
    expected = _expected(bank, index, bank[0:4].clone(), 0.5)
    bank_update_(bank, index, bank[0:4], 0.5, backend=backend)
    assert_close("bank", bank, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", backends("bank_update"))
def test_numpy_momentum(backend):
    bank = torch.randn(6, 16, device=DEVICE)
    index, values = torch.tensor([2], device=DEVICE), torch.randn(1, 16, device=DEVICE)
    expected = _expected(bank, index, values, 0.25)
    bank_update_(bank, index, values, np.float32(0.25), backend=backend)
    assert_close("bank", bank, expected, atol=1e-6, rtol=0)
