"""The eager shortcut (rdkernels/ops/_eager.py) runs each op's own body, setup and
backward: it must agree exactly with the registered custom op, forward and backward,
and record no graph when no gradient is needed."""
import pytest
import torch

from conftest import DEVICE
from rdkernels.ops.bank_contrast import _loss, _loss_op
from rdkernels.ops.dcd import _dcd, _dcd_op
from rdkernels.ops.shared_bank_contrast import _shared_bank_contrast, _shared_bank_contrast_op


def _leaf(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape, device=DEVICE, dtype=torch.float64), dim=-1).float()


def _cases():
    B, N, d, K = 6, 40, 16, 9
    q, bank = _leaf(B, d), _leaf(N, d)
    idx = torch.randint(0, N, (B, K + 1), device=DEVICE)
    z = torch.tensor([3.0], device=DEVICE)
    yield "bank_contrast", _loss_op, _loss, (q, bank, idx, z, 0.1, "nce", N, "torch", True, "gather"), [0]
    q_t, queue = _leaf(B, d), _leaf(N, d)
    yield "shared_bank_contrast", _shared_bank_contrast_op, _shared_bank_contrast, \
        (q, q_t, queue, 0.05, 0.1, True, "torch"), [0]
    tau, bias = torch.tensor([0.5], device=DEVICE), torch.tensor([0.1], device=DEVICE)
    yield "dcd", _dcd_op, _dcd, (q, q_t, tau, bias, 0.5, 10.0, True, "torch"), [0, 1, 2, 3]


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_eager_path_equals_custom_op(case):
    _, op, eager, args, grad_positions = case

    def run(fn):
        inputs = list(args)
        leaves = []
        for i in grad_positions:
            inputs[i] = inputs[i].detach().clone().requires_grad_(True)
            leaves.append(inputs[i])
        out = fn(*inputs)
        loss = out[0].sum() * 1.7
        return [o.detach() for o in out], torch.autograd.grad(loss, leaves)

    out_op, grads_op = run(op)
    out_eager, grads_eager = run(eager)
    for a, b in zip(out_op + list(grads_op), out_eager + list(grads_eager)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_eager_path_without_grad_records_nothing(case):
    _, _, eager, args, _ = case
    with torch.no_grad():
        out = eager(*args)
    assert all(o.grad_fn is None and not o.requires_grad for o in out)
