"""What every op body runs under (ops/_eager.py, op_body).

Autocast: the ops define their own precision, so an autocast region around a
call must not change what they compute (a torch formulation inside a body would
otherwise have its matmuls cast to bf16). Each op, on every backend here, gives
bit-identical outputs and gradients with and without autocast.

Device: Triton and the CUDA extension launch on the current GPU, so a body runs
with its tensors' GPU made current.
"""
import contextlib

import pytest
import torch
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import DEVICE, backends
from helpers import assert_close
from rdkernels.ops import _eager, bank_contrast, bank_update_, dcd_loss, kd_loss, shared_bank_contrast, sinkhorn
from rdkernels.ops.kd_loss import kd_loss_reference

AUTOCAST_DTYPE = torch.bfloat16


def _unit(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape, device=DEVICE), dim=-1)


def _run(fn, leaves, autocast: bool):
    """(outputs, gradients of out[0].sum() w.r.t. leaves) of ``fn(*leaves)``."""
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    with torch.autocast(DEVICE.type, dtype=AUTOCAST_DTYPE, enabled=autocast):
        out = fn(*leaves)
    out = out if isinstance(out, tuple) else (out,)
    grads = torch.autograd.grad(out[0].float().sum(), leaves) if leaves else ()
    return [o.detach() for o in out], list(grads)


def _assert_autocast_has_no_effect(fn, leaves):
    out_plain, grads_plain = _run(fn, leaves, autocast=False)
    out_cast, grads_cast = _run(fn, leaves, autocast=True)
    for plain, cast in zip(out_plain + grads_plain, out_cast + grads_cast):
        assert cast.dtype == plain.dtype
        assert torch.equal(cast, plain)


@pytest.mark.parametrize("strategy", ["gather", "dense"])
@pytest.mark.parametrize("epilogue", ["softmax", "nce", "scores"])
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_bank_contrast(backend, epilogue, strategy):
    B, K, N, d = 5, 12, 70, 32
    bank, idx = _unit(N, d), torch.randint(0, N, (B, K + 1), device=DEVICE)
    z = torch.tensor([40.0], device=DEVICE)
    _assert_autocast_has_no_effect(
        lambda q: bank_contrast(q, bank, idx, temperature=0.07, epilogue=epilogue, z=z, n_data=N, backend=backend,
                                strategy=strategy), [_unit(B, d)])


@pytest.mark.parametrize("backend", backends("shared_bank_contrast"))
def test_shared_bank_contrast(backend):
    queue = _unit(64, 32)
    q_t = _unit(6, 32)
    _assert_autocast_has_no_effect(
        lambda q_s: shared_bank_contrast(q_s, q_t, queue, tau_s=0.02, tau_t=0.1, backend=backend), [_unit(6, 32)])


@pytest.mark.parametrize("backend", backends("dcd_loss"))
def test_dcd(backend):
    tau, bias = torch.tensor([1.0], device=DEVICE), torch.tensor([0.1], device=DEVICE)
    _assert_autocast_has_no_effect(lambda z_s, z_t: dcd_loss(z_s, z_t, tau, bias, backend=backend),
                                   [_unit(8, 32), _unit(8, 32)])


@pytest.mark.parametrize("backend", backends("sinkhorn"))
def test_sinkhorn(backend):
    cost = torch.rand(3, 20, 24, device=DEVICE)
    _assert_autocast_has_no_effect(lambda c: sinkhorn(c, eps=0.1, max_iters=30, backend=backend).cost, [cost])


@pytest.mark.parametrize("backend", backends("bank_update"))
def test_bank_update(backend):
    bank, index, values = _unit(30, 16), torch.tensor([3, 7, 3], device=DEVICE), torch.randn(3, 16, device=DEVICE)
    plain, cast = bank.clone(), bank.clone()
    bank_update_(plain, index, values, 0.5, backend=backend)
    with torch.autocast(DEVICE.type, dtype=AUTOCAST_DTYPE):
        bank_update_(cast, index, values, 0.5, backend=backend)
    assert torch.equal(cast, plain)


@pytest.mark.parametrize("current,expected", [(0, [1]), (1, [])])
def test_body_runs_on_its_tensors_gpu(monkeypatch, current, expected):
    """Tensors on cuda:1 while cuda:0 is current: the body runs with cuda:1 current
    (nothing is switched when it already is). A stand-in device: no GPU needed."""
    entered, seen = [], []

    @contextlib.contextmanager
    def device(d):
        entered.append(d.index)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "device", device)
    # a fake cuda:1 would otherwise open a context on a real GPU, if any: one GPU has no cuda:1
    monkeypatch.setattr(fake_tensor, "init_gpu_context", lambda d: None)
    with FakeTensorMode():
        x = torch.empty(2, device="cuda:1")
    body = _eager.op_body(lambda t, scale: seen.append((t.device, scale)) or scale)
    assert body(x, 3.0) == 3.0
    assert entered == expected and seen == [(torch.device("cuda", 1), 3.0)]


def test_ops_infer_shapes_on_meta_tensors():
    """Meta tensors carry shapes, no values: the torch backend gives each op's output
    shapes, and no check tries to read values (or autocast state) from them."""
    meta = dict(device="meta")
    q, bank, idx = torch.empty(4, 16, **meta), torch.empty(32, 16, **meta), torch.zeros(4, 7, dtype=torch.long, **meta)
    z = torch.ones(1, **meta)
    for epilogue, shape in (("softmax", ()), ("nce", ()), ("scores", (4, 7))):
        out = bank_contrast(q, bank, idx, temperature=0.07, epilogue=epilogue, z=z, n_data=32, backend="torch")
        assert out.device.type == "meta" and out.shape == shape
    assert shared_bank_contrast(q, q, bank, tau_s=0.02, tau_t=0.1, backend="torch").shape == (4,)  # per row
    assert dcd_loss(q, q, torch.ones(1, **meta), torch.zeros(1, **meta), backend="torch").shape == ()
    res = sinkhorn(torch.empty(2, 5, 6, **meta), eps=0.1, backend="torch")
    assert (res.f.shape, res.g.shape, res.cost.shape) == ((2, 5), (2, 6), (2,))
    bank_update_(bank, torch.tensor([1, 2], **meta), torch.empty(2, 16, **meta), 0.5, backend="torch")


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_body_runs_float32_matmuls_at_full_precision(precision):
    """A script's lowered float32 matmul precision (TF32 on a GPU) must not reach the
    torch formulations inside an op, and is the script's again after the call."""
    seen = []
    body = _eager.op_body(lambda t: seen.append(torch.get_float32_matmul_precision()) or t)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        body(torch.ones(2, device=DEVICE))
        with pytest.raises(ZeroDivisionError):  # restored on the way out of an error too
            _eager.op_body(lambda t: 1 / 0)(torch.ones(2, device=DEVICE))
        assert torch.get_float32_matmul_precision() == precision
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen == ["highest"]


_PER_BACKEND = {"global": lambda: torch.backends, "cuda": lambda: torch.backends.cuda.matmul,
                "mkldnn": lambda: torch.backends.mkldnn.matmul}


@pytest.mark.skipif(not hasattr(torch.backends, "fp32_precision"), reason="torch without per-backend precision")
@pytest.mark.parametrize("where,value", [("global", "tf32"), ("cuda", "tf32"), ("mkldnn", "bf16")])
def test_body_runs_at_full_precision_under_the_per_backend_api(where, value):
    """torch's per-backend settings (fp32_precision = "tf32") make the legacy getter
    raise; the ops still run, their matmuls at "ieee" inside, and every setting is
    the script's again after the call, an inherited one still inheriting."""
    settings = lambda: {name: get().fp32_precision for name, get in _PER_BACKEND.items()}  # noqa: E731
    before = settings()
    seen = []
    body = _eager.op_body(lambda t: seen.append((torch.backends.cuda.matmul.fp32_precision,
                                                 torch.backends.mkldnn.matmul.fp32_precision)) or t)
    try:
        _PER_BACKEND[where]().fp32_precision = value
        lowered = settings()
        body(torch.ones(2, device=DEVICE))
        x = torch.randn(4, 8, device=DEVICE)
        assert_close("kd_loss", kd_loss(x, x.flip(0)), kd_loss_reference(x.double(), x.flip(0).double(), 4.0),
                     1e-6, 1e-6)
        with pytest.raises(ZeroDivisionError):  # restored on the way out of an error too
            _eager.op_body(lambda t: 1 / 0)(torch.ones(2, device=DEVICE))
        assert settings() == lowered
        if where == "global":  # the leaves inherit the global value, and still do
            torch.backends.fp32_precision = "ieee"
            assert settings()["cuda"] == settings()["mkldnn"] == "ieee"
    finally:
        for name in ("cuda", "mkldnn", "global"):
            _PER_BACKEND[name]().fp32_precision = before[name]
    assert seen == [("ieee", "ieee")]
