"""bank_contrast (gather strategy) on every backend against the float64 reference."""
import math

import numpy as np
import pytest
import torch

from conftest import DEVICE, backends
from helpers import assert_close, not_under_emulated_cuda, unit_rows
from rdkernels.ops import bank_contrast, estimate_nce_z
from rdkernels.ops.bank_contrast import bank_contrast_reference
from rdkernels.ops.bank_contrast import reference as ref_module

SHAPES = [  # (B, K, d, N): ragged K, B = 1, every supported d
    (1, 5, 64, 40),
    (7, 100, 96, 300),
    (33, 37, 128, 500),
    (4, 300, 256, 200),
    (64, 20, 128, 1000),
]
DTYPES = [  # (query, bank)
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float32),
    (torch.float32, torch.bfloat16),
]


def make_inputs(batch, k, dim, n_rows, q_dtype, bank_dtype, idx_dtype=torch.int64, temperature=0.07):
    query = unit_rows(batch, dim, device=DEVICE).to(q_dtype)
    bank = unit_rows(n_rows, dim, device=DEVICE).to(bank_dtype)
    idx = torch.randint(0, n_rows, (batch, k + 1), device=DEVICE, dtype=idx_dtype)
    # Z as CRD would set it; here from the float64 reference scores
    s = bank_contrast_reference(query.double(), bank.double(), idx, temperature=temperature, epilogue="scores")
    z = (s.exp().mean() * n_rows).float().reshape(1)
    return query, bank, idx, z


def run(fn, query, grad_weights=None, **kw):
    q = query.detach().clone().requires_grad_()
    out = fn(q, **kw)
    (out * grad_weights).sum().backward() if grad_weights is not None else out.sum().backward()
    return out.detach(), q.grad


@pytest.mark.parametrize("backend", backends("bank_contrast"))
@pytest.mark.parametrize("epilogue", ["nce", "softmax", "scores"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-K{}-d{}-N{}".format(*s))
@pytest.mark.parametrize("dtypes", DTYPES, ids=lambda d: f"q{str(d[0])[6:]}-bank{str(d[1])[6:]}")
def test_matches_float64_reference(backend, epilogue, shape, dtypes):
    batch, k, dim, n_rows = shape
    idx_dtype = torch.int32 if (batch + k) % 2 else torch.int64
    query, bank, idx, z = make_inputs(batch, k, dim, n_rows, *dtypes, idx_dtype=idx_dtype)
    weights = torch.randn(batch, k + 1, device=DEVICE) if epilogue == "scores" else None
    common = dict(bank=bank, idx=idx, temperature=0.07, epilogue=epilogue, z=z, n_data=n_rows)
    out, grad = run(bank_contrast, query, weights, backend=backend, **common)
    ref_common = dict(common, bank=bank.double(), z=z.double())
    ref_out, ref_grad = run(bank_contrast_reference, query.double(),
                            None if weights is None else weights.double(), **ref_common)
    # the inputs are the same rounded values, so only fp32 accumulation differs
    assert out.dtype == torch.float32
    assert_close("loss" if epilogue != "scores" else "scores", out, ref_out, atol=2e-5, rtol=2e-5)
    assert grad.dtype == query.dtype
    g_tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[query.dtype]
    scale = ref_grad.abs().max().item()
    assert_close("d query", grad, ref_grad, atol=g_tol * scale, rtol=g_tol)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
@pytest.mark.parametrize("epilogue", ["nce", "softmax", "scores"])
@pytest.mark.parametrize("dim", [32, 128])  # CUDA: 16 groups of 8 lanes a block; 4 groups of 32
def test_reruns_are_bit_identical(backend, epilogue, dim):
    """The gather kernels sum dq over a block's row groups in a fixed order, so the
    same call twice gives the same bits (shared-memory atomics would not)."""
    k, n = (4000, 5000) if DEVICE.type == "cuda" else (40, 200)  # GPU: many columns a block, warps that race
    query, bank, idx, z = make_inputs(16, k, dim, n, torch.float32, torch.float32)
    kw = dict(temperature=0.07, epilogue=epilogue, z=z, n_data=n, backend=backend, strategy="gather")
    if epilogue != "scores":
        kw["reduction"] = "none"
    weights = torch.randn(16, k + 1, device=DEVICE) if epilogue == "scores" else None
    first, second = (run(bank_contrast, query, weights, bank=bank, idx=idx, **kw) for _ in range(2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("backend", backends("bank_contrast"))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(backend, reduction):
    query, bank, idx, z = make_inputs(6, 30, 64, 100, torch.float32, torch.float32)
    kw = dict(temperature=0.1, epilogue="nce", z=z, n_data=100, reduction=reduction)
    out = bank_contrast(query, bank, idx, backend=backend, **kw)
    ref = bank_contrast_reference(query.double(), bank.double(), idx, **dict(kw, z=z.double()))
    assert out.shape == ref.shape
    assert_close("loss", out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_nce_eps_matters(backend, monkeypatch):
    """With m*Pn ~ eps the reference's eps = 1e-7 changes the loss: a kernel
    that dropped it (or moved it into the numerator) would fail here."""
    n_data = 10 ** 7  # Pn = 1e-7, K = 1: m*Pn equals eps
    query, bank, idx, _ = make_inputs(3, 1, 64, 50, torch.float32, torch.float32)
    z = estimate_nce_z(query, bank, idx, temperature=0.07, n_data=n_data)
    kw = dict(temperature=0.07, epilogue="nce", z=z, n_data=n_data)
    out = bank_contrast(query, bank, idx, backend=backend, **kw)
    ref = bank_contrast_reference(query.double(), bank.double(), idx, **dict(kw, z=z.double()))
    assert_close("loss", out, ref, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(ref_module, "NCE_EPS", 0.0)
    without_eps = bank_contrast_reference(query.double(), bank.double(), idx, **dict(kw, z=z.double()))
    assert (without_eps - ref).abs() > 100 * (1e-5 + 1e-5 * ref.abs())


@pytest.mark.parametrize("strategy", ["auto", "gather", "dense"])
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_estimate_nce_z(backend, strategy):
    query, bank, idx, _ = make_inputs(9, 70, 128, 300, torch.float32, torch.float32)
    z = estimate_nce_z(query, bank, idx, temperature=0.07, n_data=300, backend=backend, strategy=strategy)
    s = bank_contrast_reference(query.double(), bank.double(), idx, temperature=0.07, epilogue="scores")
    assert z.shape == (1,) and z.dtype == torch.float32 and not z.requires_grad
    assert_close("Z", z, (s.exp().mean() * 300).reshape(1), atol=0, rtol=1e-5)


def test_estimate_nce_z_names_itself_and_takes_the_strategy_asked_for(monkeypatch):
    import importlib
    import rdkernels
    module = importlib.import_module("rdkernels.ops.bank_contrast")   # the package (ops.bank_contrast: the op)
    query, bank, idx, _ = make_inputs(3, 5, 16, 20, torch.float32, torch.float32)
    with monkeypatch.context() as patch:
        patch.setattr(rdkernels.backend, "triton_unavailable_reason", lambda device: "no Triton here")
        with pytest.raises(rdkernels.BackendUnavailable, match="backend 'triton' cannot run estimate_nce_z: no Triton"):
            estimate_nce_z(query, bank, idx, temperature=0.07, n_data=20, backend="triton")
    with pytest.raises(ValueError, match="strategy must be one of"):
        estimate_nce_z(query, bank, idx, temperature=0.07, n_data=20, strategy="Dense")
    ran = []
    real_loss = module._loss
    monkeypatch.setattr(module, "_loss", lambda *args: ran.append(args[-1]) or real_loss(*args))
    for strategy in ("gather", "dense"):
        estimate_nce_z(query, bank, idx, temperature=0.07, n_data=20, strategy=strategy)
    assert ran == ["gather", "dense"]


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_duplicate_and_positive_columns(backend):
    """A bank row sampled several times in one row (the positive among them)
    counts once per occurrence."""
    query, bank, _, z = make_inputs(2, 5, 64, 10, torch.float32, torch.float32)
    idx = torch.tensor([[3, 3, 3, 1, 1, 7], [0, 9, 0, 9, 9, 0]], device=DEVICE)
    for epilogue in ("nce", "softmax"):
        kw = dict(temperature=0.2, epilogue=epilogue, z=z, n_data=10)
        out, grad = run(bank_contrast, query, bank=bank, idx=idx, backend=backend, **kw)
        ref, ref_grad = run(bank_contrast_reference, query.double(), bank=bank.double(), idx=idx,
                            **dict(kw, z=z.double()))
        assert_close(epilogue, out, ref, atol=1e-5, rtol=1e-5)
        assert_close(f"{epilogue} grad", grad, ref_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_loss_gradient_ignores_later_bank_updates(backend):
    """CRD updates the bank between forward and backward: the gradient must be
    the one of the bank as scored."""
    query, bank, idx, z = make_inputs(4, 20, 64, 50, torch.float32, torch.float32)
    q = query.clone().requires_grad_()
    loss = bank_contrast(q, bank, idx, temperature=0.07, epilogue="nce", z=z, n_data=50, backend=backend)
    q_ref = query.double().requires_grad_()
    bank_contrast_reference(q_ref, bank.double(), idx, temperature=0.07, epilogue="nce", z=z.double(),
                            n_data=50).backward()
    bank[idx[:, 0]] = -bank[idx[:, 0]]  # what an update of the positives could do
    loss.backward()
    assert_close("d query", q.grad, q_ref.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_scores_backward_refuses_a_changed_bank(backend):
    query, bank, idx, _ = make_inputs(3, 10, 64, 30, torch.float32, torch.float32)
    q = query.clone().requires_grad_()
    scores = bank_contrast(q, bank, idx, temperature=0.07, epilogue="scores", backend=backend)
    bank.mul_(0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        scores.sum().backward()


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_every_output_element_is_written(backend, monkeypatch):
    """Outputs and partial buffers are allocated with torch.empty; poison them
    with NaN so an element the kernel forgot to write shows up."""
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    query, bank, idx, z = make_inputs(5, 45, 96, 80, torch.float32, torch.float32)
    monkeypatch.setattr(torch, "empty", nan_empty)
    for epilogue in ("nce", "softmax", "scores"):
        q = query.clone().requires_grad_()
        out = bank_contrast(q, bank, idx, temperature=0.07, epilogue=epilogue, z=z, n_data=80,
                            backend=backend, reduction="none")
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(q.grad).all(), epilogue


@pytest.mark.parametrize("epilogue", ["nce", "softmax", "scores"])
def test_reference_gradcheck(epilogue):
    query = unit_rows(3, 8, dtype=torch.float64).requires_grad_()
    bank = unit_rows(12, 8, dtype=torch.float64)
    idx = torch.randint(0, 12, (3, 5))
    z = torch.tensor([20.0], dtype=torch.float64)
    fn = lambda q: bank_contrast_reference(q, bank, idx, temperature=0.5, epilogue=epilogue, z=z, n_data=12)
    assert torch.autograd.gradcheck(fn, (query,))


def _good():
    query, bank, idx, z = make_inputs(4, 6, 64, 20, torch.float32, torch.float32)
    return dict(query=query, bank=bank, idx=idx, temperature=0.07, epilogue="nce", z=z, n_data=20)


BAD = [
    (dict(query=torch.randn(4, 64, dtype=torch.float64)), TypeError, "query must have dtype"),
    (dict(query=torch.randn(4, 32)), ValueError,
     "query has size 32 in dimension 1 but must match the bank's row width \\(64\\)"),
    (dict(query=torch.randn(5, 64)), ValueError, "idx has size 4 in dimension 0"),
    (dict(bank=torch.randn(64, 20).t()), ValueError, "bank must be contiguous: it is state"),
    (dict(query=torch.randn(4, 64, 1)), ValueError, "query must have 2 dimensions"),
    (dict(query=torch.randn(0, 64)), ValueError, "query is empty"),
    (dict(bank=torch.randn(20, 64, dtype=torch.float16)), TypeError, "bank must have dtype"),
    (dict(idx=torch.randint(0, 20, (4, 7)).float()), TypeError, "idx must have dtype"),
    (dict(idx=torch.full((4, 7), 20)), ValueError, r"idx holds values in \[20, 20\]"),
    (dict(idx=torch.full((4, 7), -3)), ValueError, "idx holds values in"),
    (dict(idx=torch.zeros(4, 1, dtype=torch.long)), ValueError, "at least 2 columns"),
    (dict(temperature=0.0), ValueError, "temperature must be a positive"),
    (dict(z=None), ValueError, "z is required"),
    (dict(z=torch.ones(2)), ValueError, "z must hold one value"),
    (dict(n_data=0), ValueError, "n_data must be a positive int"),
    (dict(n_data=None), ValueError, "n_data is required for the nce epilogue"),
    (dict(temperature=True), TypeError, "temperature must be a real number, got bool"),
    (dict(temperature=torch.tensor(0.07)), TypeError, "temperature must be a real number, got Tensor"),
    (dict(n_data=True), TypeError, "n_data must be an integer, got bool"),
    (dict(n_data=20.0), TypeError, "n_data must be an integer, got float"),
    (dict(z=torch.tensor([0.0])), ValueError, r"z must be positive and finite, got \[0.0\]"),
    (dict(z=torch.tensor([-3.0])), ValueError, "z must be positive and finite"),
    (dict(z=torch.tensor([float("nan")])), ValueError, "z must be positive and finite"),
    (dict(z=torch.tensor([float("inf")])), ValueError, "z must be positive and finite"),
    (dict(bank=torch.randn(20, 64, requires_grad=True)), ValueError, r"bank requires grad.*pass bank.detach\(\)"),
    (dict(epilogue="dot"), ValueError, "epilogue must be one of"),
    (dict(reduction="max"), ValueError, "reduction must be one of"),
]


@pytest.mark.parametrize("bad,error,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_raises(bad, error, match):
    args = _good()
    args.update({k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in bad.items()})
    before = args["bank"].clone()
    with pytest.raises(error, match=match):
        bank_contrast(**args)
    assert torch.equal(args["bank"], before)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_numpy_scalars(backend):
    """NumPy scalars are numbers: temperature and n_data act as the Python ones."""
    query, bank, idx, z = make_inputs(3, 6, 64, 20, torch.float32, torch.float32)
    kw = dict(epilogue="nce", z=z, backend=backend)
    expected = bank_contrast(query, bank, idx, temperature=float(np.float32(0.07)), n_data=20, **kw)
    got = bank_contrast(query, bank, idx, temperature=np.float32(0.07), n_data=np.int64(20), **kw)
    assert torch.equal(got, expected)
    z_np = estimate_nce_z(query, bank, idx, temperature=np.float64(0.07), n_data=np.int32(20), backend=backend)
    assert torch.equal(z_np, estimate_nce_z(query, bank, idx, temperature=0.07, n_data=20, backend=backend))


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_bank_that_requires_grad(backend):
    """The op never differentiates the bank: a bank that requires grad is refused
    while grad mode is on (bank.grad would stay None); detached or under no_grad it runs."""
    query, bank, idx, _ = make_inputs(2, 5, 64, 20, torch.float32, torch.float32)
    param = torch.nn.Parameter(bank.clone())
    with pytest.raises(ValueError, match="bank requires grad"):
        bank_contrast(query.requires_grad_(), param, idx, temperature=0.1, epilogue="scores", backend=backend)
    expected = bank_contrast(query, bank, idx, temperature=0.1, epilogue="scores", backend=backend)
    assert torch.equal(bank_contrast(query, param.detach(), idx, temperature=0.1, epilogue="scores",
                                     backend=backend), expected)
    with torch.no_grad():
        assert torch.equal(bank_contrast(query, param, idx, temperature=0.1, epilogue="scores", backend=backend),
                           expected)
    estimate_nce_z(query, param, idx, temperature=0.1, n_data=20, backend=backend)  # never differentiates


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_z_beyond_float32_is_inf_and_refused(backend):
    """The log-space mean cannot overflow, but Z = mean * n_data is float32: at
    T = 0.01 with queries equal to their bank rows, exp(100) * N is inf; the nce
    epilogue then refuses it with the index check (and only with it)."""
    bank = unit_rows(8, 16, device=DEVICE)
    idx = torch.arange(8, device=DEVICE).reshape(4, 2)
    query = bank[idx[:, 0]]
    z = estimate_nce_z(query, bank, idx, temperature=0.01, n_data=8, backend=backend)
    assert torch.isinf(z).all()
    kw = dict(temperature=0.01, epilogue="nce", z=z, n_data=8, backend=backend)
    with pytest.raises(ValueError, match="z must be positive and finite"):
        bank_contrast(query, bank, idx, **kw)
    bank_contrast(query, bank, idx, check_indices=False, **kw)  # no sync, no check


@not_under_emulated_cuda
def test_unavailable_backend_says_why():
    """CPU tensors (on a GPU machine too) asked to run on the cuda backend."""
    import rdkernels
    args = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in _good().items()}
    with pytest.raises(rdkernels.BackendUnavailable, match="needs CUDA tensors, got cpu tensors"):
        bank_contrast(**args, backend="cuda")


def test_auto_backend_on_cpu_is_torch():
    """The interpreter is a correctness tool: auto never picks it."""
    from rdkernels.backend import resolve
    assert resolve(torch.device("cpu"), "bank_contrast", "auto") == "torch"
    args = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in _good().items()}
    assert math.isfinite(bank_contrast(**args).item())


def test_widths_past_the_fused_kernels_fall_back_under_auto_and_raise_when_requested(monkeypatch):
    """d > MAX_FUSED_DIM: ``auto`` moves to torch (the same value as torch), a backend
    asked for by name raises BackendUnavailable, as for the other ops' limits."""
    import rdkernels
    from rdkernels import backend as backend_module
    from rdkernels.backend import BackendUnavailable
    from rdkernels.ops.bank_contrast import MAX_FUSED_DIM

    d = MAX_FUSED_DIM + 8
    query, bank = unit_rows(3, d, device=DEVICE), unit_rows(20, d, device=DEVICE)
    idx = torch.randint(0, 20, (3, 5), device=DEVICE)
    expected = bank_contrast(query, bank, idx, temperature=0.07, backend="torch")
    # a device where auto would pick a fused backend (a GPU), stood in for on any machine
    monkeypatch.setattr(backend_module, "resolve", lambda device, op, requested=None, **kw: "triton")
    assert torch.equal(bank_contrast(query, bank, idx, temperature=0.07), expected)
    with rdkernels.use_backend("triton"), pytest.raises(BackendUnavailable, match=f"query has {d} columns"):
        bank_contrast(query, bank, idx, temperature=0.07)
    with pytest.raises(BackendUnavailable, match="up to 1024"):
        bank_contrast(query, bank, idx, temperature=0.07, backend="triton")
    # names are case-insensitive everywhere: "AUTO" is auto, not a request for a fused backend
    assert torch.equal(bank_contrast(query, bank, idx, temperature=0.07, backend="AUTO"), expected)
