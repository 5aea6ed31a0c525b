"""What the memory-bank losses (CRD, WCoRD, RRD's momentum variant) accept and
refuse, alike: indices in any layout; features that would poison the banks, or
that their projections cannot take, refused with the argument named and every
buffer untouched; a NaN normaliser Z never frozen."""
import numpy as np
import pytest
import torch

from conftest import DEVICE
from helpers import bank_loss_batch
import rdkernels
from rdkernels.losses.rrd import RRDMomentumLoss

S_DIM, T_DIM, N_DATA, FEAT, K = 12, 10, 40, 16, 6


def _crd():
    return rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=K)


def _wcord():
    return rdkernels.WCoRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=K)


def _rrd_momentum():
    return RRDMomentumLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=K)


LOSSES = {"crd": _crd, "wcord": _wcord, "rrd_momentum": _rrd_momentum}
BANKS = {"crd": "contrast.memory_v1", "wcord": "memory_s.memory", "rrd_momentum": "memory_s.memory"}


def _pair(name):
    """Two modules of ``name`` in the same state."""
    torch.manual_seed(0)
    a, b = LOSSES[name]().to(DEVICE), LOSSES[name]().to(DEVICE)
    b.load_state_dict(a.state_dict())
    return a, b


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_state(module, before):
    for key, value in module.state_dict().items():  # bit-identical, a NaN planted by a test included
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True, msg=key)


@pytest.mark.parametrize("name", LOSSES)
def test_strided_and_expanded_indices_match_contiguous(name):
    a, b = _pair(name)
    f_s, f_t, idx, cidx = bank_loss_batch(4, K, S_DIM, T_DIM, N_DATA, DEVICE)
    strided_idx = torch.stack([idx, idx], dim=1)[:, 0]             # stride 2
    strided_cidx = cidx.t().contiguous().t()                        # column-major
    assert not strided_idx.is_contiguous() and not strided_cidx.is_contiguous()
    for _ in range(2):  # the second step scores the rows the first one wrote
        torch.testing.assert_close(a(f_s, f_t, strided_idx, strided_cidx), b(f_s, f_t, idx, cidx), rtol=0, atol=0)
    _assert_state(a, b.state_dict())
    # one dataset index broadcast over the batch (stride 0)
    same = torch.tensor(3, device=DEVICE).expand(4)
    torch.testing.assert_close(a(f_s, f_t, same, cidx), b(f_s, f_t, same.contiguous(), cidx), rtol=0, atol=0)


@pytest.mark.parametrize("already_stepped", [False, True])
@pytest.mark.parametrize("which,value", [("f_s", float("nan")), ("f_t", float("inf")), ("f_s", -float("inf"))])
@pytest.mark.parametrize("name", LOSSES)
def test_non_finite_features_are_refused_before_any_write(name, which, value, already_stepped):
    loss, _ = _pair(name)
    f_s, f_t, idx, cidx = bank_loss_batch(4, K, S_DIM, T_DIM, N_DATA, DEVICE)
    if already_stepped:
        loss(f_s, f_t, idx, cidx)
    before = _state(loss)
    bad = {"f_s": f_s.clone(), "f_t": f_t.clone()}
    bad[which][2, 1] = value
    with pytest.raises(ValueError, match=f"{which} holds NaN or inf"):
        loss(bad["f_s"], bad["f_t"], idx, cidx)
    _assert_state(loss, before)


@pytest.mark.parametrize("name", LOSSES)
def test_without_index_checks_non_finite_features_pass_unchecked(name, monkeypatch):
    """The finiteness check shares the index checks' host sync, and their switch."""
    monkeypatch.setenv("RDKERNELS_CHECK_INDICES", "0")
    loss, _ = _pair(name)
    if name == "wcord":
        loss.check_costs = False  # its Sinkhorn op's own check of the OT costs, a switch of its own
    f_s, f_t, idx, cidx = bank_loss_batch(4, K, S_DIM, T_DIM, N_DATA, DEVICE)
    loss(f_s, f_t, idx, cidx)  # Z set from clean features
    f_s[0, 0] = float("nan")
    assert torch.isnan(loss(f_s, f_t, idx, cidx))


@pytest.mark.parametrize("name", LOSSES)
def test_features_of_another_dtype_than_the_projections_name_the_argument(name):
    loss, _ = _pair(name)
    f_s, f_t, idx, cidx = bank_loss_batch(4, K, S_DIM, T_DIM, N_DATA, DEVICE)
    before = _state(loss)
    with pytest.raises(TypeError, match="f_s is torch.bfloat16 but the loss's projections are torch.float32"):
        loss(f_s.bfloat16(), f_t.bfloat16(), idx, cidx)
    _assert_state(loss, before)
    # under autocast the projections take narrow inputs: the call goes through
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        assert torch.isfinite(loss(f_s.bfloat16(), f_t.bfloat16(), idx, cidx))


@pytest.mark.parametrize("name", LOSSES)
def test_features_on_another_device_than_the_loss_name_the_argument(name):
    loss, _ = _pair(name)
    meta = [t.to("meta") for t in bank_loss_batch(4, K, S_DIM, T_DIM, N_DATA, DEVICE)]
    with pytest.raises(ValueError, match=r"f_s is on meta but the loss's parameters and buffers are on"):
        loss(*meta)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
@pytest.mark.parametrize("name", LOSSES)
def test_a_loss_cast_to_another_dtype_names_its_bank(name, dtype):
    loss = LOSSES[name]().to(DEVICE).to(dtype)
    f_s, f_t, idx, cidx = bank_loss_batch(4, K, S_DIM, T_DIM, N_DATA, DEVICE)
    with pytest.raises(TypeError, match=f"the memory bank {BANKS[name]} is {dtype}.*was the whole loss cast"):
        loss(f_s.to(dtype), f_t.to(dtype), idx, cidx)


@pytest.mark.parametrize("name", ["crd", "rrd_momentum"])
def test_a_non_finite_first_z_is_refused_and_left_unset(name):
    """Z is frozen once set: a NaN estimate (here from a NaN row of the bank the
    student is scored against) must not become the constant of every later step."""
    loss, _ = _pair(name)
    f_s, f_t, idx, cidx = bank_loss_batch(4, K, S_DIM, T_DIM, N_DATA, DEVICE)
    params = loss.contrast.params if name == "crd" else loss.params
    bank = loss.contrast.memory_v2 if name == "crd" else loss.memory_t.memory
    with torch.no_grad():
        bank[cidx[0, 1]] = float("nan")
    before = _state(loss)
    with pytest.raises(ValueError, match="once, from the first batch"):
        loss(f_s, f_t, idx, cidx)
    _assert_state(loss, before)
    assert (params[2:4] == -1).all()


def test_memory_bank_checks_its_arguments_like_the_losses():
    bank = rdkernels.MemoryBank(np.int64(8), 4, momentum=np.float32(0.5))  # NumPy numbers, as the losses take
    assert (bank.n_data, bank.dim, bank.momentum) == (8, 4, 0.5)
    for kwargs, error, match in [
        (dict(n_data=True, dim=4), TypeError, "n_data must be an integer, got bool"),
        (dict(n_data=8, dim=4, momentum="0.5"), TypeError, "momentum must be a real number"),
        (dict(n_data=8, dim=4, momentum=torch.tensor(0.5)), TypeError, "momentum must be a real number"),
        (dict(n_data=8, dim=0), ValueError, "dim must be a positive int"),
        (dict(n_data=8, dim=4, dtype=torch.float16), TypeError, "dtype must be torch.float32 or torch.bfloat16"),
    ]:
        with pytest.raises(error, match=match):
            rdkernels.MemoryBank(**kwargs)
    with pytest.raises(ValueError, match=r"index holds values in \[0, 40\]"):
        bank.sample(torch.tensor([0, 40]), 3)
    with pytest.raises(TypeError, match="k must be an integer, got bool"):
        bank.sample(torch.tensor([0, 1]), True)
    assert bank.sample(torch.tensor([5, 2, 7])[::2], 3).shape == (2, 4)  # any layout
