"""The eager shortcut (rdkernels/ops/_eager.py) runs each op's own body, setup and
backward: it must agree exactly with the registered custom op, forward and backward,
and record no graph when no gradient is needed."""
import pytest
import torch

from conftest import DEVICE
from rdkernels.ops import _eager
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
def test_eager_path_without_grad_records_nothing(case, monkeypatch):
    """Inputs that require grad, under no_grad: the call routes to the body itself, not
    through the dispatcher or an autograd Function (whose apply is made to fail here)."""
    _, _, eager, args, grad_positions = case
    args = list(args)
    for i in grad_positions:
        args[i] = args[i].detach().clone().requires_grad_(True)

    def refuse(*a, **k):
        raise AssertionError("a no-grad eager call left the shortcut")
    monkeypatch.setattr(torch.autograd.Function, "apply", classmethod(refuse))
    with torch.no_grad():
        assert _eager._route(args) == _eager._RUN
        out = eager(*args)
    assert all(o.grad_fn is None and not o.requires_grad for o in out)
    with pytest.raises(AssertionError, match="left the shortcut"):   # with grad on, the Function is taken
        eager(*args)


def _double_backward_cases():
    """(name, f(leaf) -> output, leaf): each public op on the torch backend."""
    from rdkernels.ops import bank_contrast, dcd_loss, shared_bank_contrast, sinkhorn

    B, N, d = 3, 12, 8
    bank, idx = _leaf(N, d), torch.randint(0, N, (B, 4), device=DEVICE)
    z = torch.tensor([3.0], device=DEVICE)
    for epilogue in ("softmax", "nce", "scores"):
        yield f"bank_contrast-{epilogue}", lambda q, e=epilogue: bank_contrast(
            q, bank, idx, temperature=0.5, epilogue=e, z=z, n_data=N, reduction="none", backend="torch"), \
            _leaf(B, d)
    q_t, queue = _leaf(B, d), _leaf(N, d)
    yield "shared_bank_contrast", lambda q: shared_bank_contrast(q, q_t, queue, tau_s=0.1, tau_t=0.2,
                                                                 backend="torch"), _leaf(B, d)
    z_t, tau, bias = _leaf(B, d), torch.tensor(0.5, device=DEVICE), torch.tensor(0.1, device=DEVICE)
    yield "dcd", lambda z_s: dcd_loss(z_s, z_t, tau, bias, backend="torch"), _leaf(B, d)
    yield "sinkhorn", lambda cost: sinkhorn(cost, eps=0.5, max_iters=5, backend="torch").cost, \
        torch.rand(2, 3, 4, device=DEVICE)


@pytest.mark.parametrize("case", list(_double_backward_cases()), ids=lambda c: c[0])
def test_double_backward_raises(case):
    """The backwards scale gradients computed in the forward (sinkhorn's treats the
    plan as a constant): they are once differentiable, and differentiating the
    gradient again must raise torch's error, not crash inside the op or return a
    wrong second derivative."""
    _, fn, leaf = case
    leaf = leaf.detach().clone().requires_grad_(True)
    out = fn(leaf)
    (grad,) = torch.autograd.grad((out ** 2).sum(), leaf, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()
