"""KDLoss against RepDistiller's DistillKL and a float64 closed form."""
import pytest
import torch

from conftest import DEVICE
from helpers import assert_close
from rdkernels.losses import KDLoss
from rdkernels.losses.reference.kd import KDLoss as ReferenceKD


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(T, dtype):
    y_s = (torch.randn(9, 100, device=DEVICE) * 3).to(dtype).requires_grad_()
    y_t = (torch.randn(9, 100, device=DEVICE) * 3).to(dtype)
    loss = KDLoss(T)(y_s, y_t)
    loss.backward()
    s64 = y_s.detach().double().requires_grad_()
    expected = ReferenceKD(T)(s64, y_t.double())
    expected.backward()
    p_t = torch.softmax(y_t.double() / T, 1)
    closed = (p_t * (p_t.log() - torch.log_softmax(s64.detach() / T, 1))).sum() * T * T / 9
    assert_close("reference", expected, closed, 1e-10, 1e-10)
    assert loss.dtype == torch.float32
    assert_close("loss", loss, expected, 1e-5, 1e-5)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    assert_close("grad", y_s.grad, s64.grad, tol, 1e-2 if dtype == torch.bfloat16 else 1e-5)


def test_zero_for_equal_logits_and_finite_when_teacher_underflows():
    y = torch.randn(4, 10)
    assert KDLoss()(y, y).abs().item() < 1e-6
    y_t = torch.tensor([[0.0, 2000.0, -2000.0]])
    out = KDLoss(T=1.0)(torch.zeros(1, 3), y_t)
    assert torch.isfinite(out)


@pytest.mark.parametrize("call,match", [
    (lambda m: m(torch.randn(4, 10), torch.randn(3, 10)), "y_t has size 3 in dimension 0"),
    (lambda m: m(torch.randn(4, 10), torch.randn(4, 11)), "y_t has size 11 in dimension 1"),
    (lambda m: m(torch.randn(4), torch.randn(4)), "y_s must have 2 dimensions"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(KDLoss())


def test_bad_temperature():
    with pytest.raises(ValueError, match="T must be a positive"):
        KDLoss(T=0)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_masked_teacher_logits_match_reference(T):
    """-inf teacher logits (masked classes): p_t = 0 there, and the term contributes 0
    to the value and the student's gradient, as kl_div on probabilities gives."""
    y_s = torch.randn(5, 12, device=DEVICE).requires_grad_()
    y_t = torch.randn(5, 12, device=DEVICE)
    y_t[:, 3] = float("-inf")
    y_t[1, 7:] = float("-inf")
    loss = KDLoss(T)(y_s, y_t)
    loss.backward()
    s64 = y_s.detach().double().requires_grad_()
    expected = ReferenceKD(T)(s64, y_t.double())
    expected.backward()
    assert torch.isfinite(expected)
    assert_close("loss", loss, expected, 1e-5, 1e-5)
    assert_close("grad", y_s.grad, s64.grad, 1e-6, 1e-5)
