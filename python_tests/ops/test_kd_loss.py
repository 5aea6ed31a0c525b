"""kd_loss (Triton kernel and torch formulation) against the float64 reference, value and both gradients."""
import pytest
import torch

from conftest import DEVICE
from helpers import assert_close
from rdkernels.backend import BackendUnavailable, cuda_device_reason, triton_unavailable_reason, use_backend
from rdkernels.losses import KDLoss
from rdkernels.losses.reference.kd import KDLoss as ReferenceKD
from rdkernels.ops import kd_loss
from rdkernels.ops.kd_loss import MAX_TRITON_CLASSES, _kd_loss_op, _resolve, kd_loss_reference

TRITON = pytest.mark.skipif(triton_unavailable_reason(DEVICE) is not None, reason="Triton unavailable here")
BACKENDS = [pytest.param("torch"), pytest.param("triton", marks=TRITON)]
# (B, C): one row, ragged class counts, CIFAR-100's, ImageNet's, the widest row the kernel takes
SHAPES = [(1, 2), (7, 37), (64, 100), (3, 1000), (2, MAX_TRITON_CLASSES)]
# the narrow types' gradients come back rounded to their dtype
GRAD_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def _logits(batch, n_cls, dtype, scale=3.0):
    return (torch.randn(batch, n_cls, device=DEVICE) * scale).to(dtype)


def _check(backend, y_s, y_t, T, teacher_grad=True):
    """Value and both gradients (under a random upstream weight) against float64 autograd
    through the reference on the same (possibly narrow) values."""
    y_s, y_t = y_s.detach().requires_grad_(), y_t.detach().requires_grad_(teacher_grad)
    loss = kd_loss(y_s, y_t, T=T, backend=backend)
    assert loss.shape == () and loss.dtype == torch.float32
    s64, t64 = y_s.detach().double().requires_grad_(), y_t.detach().double().requires_grad_(teacher_grad)
    expected = kd_loss_reference(s64, t64, T)
    weight = torch.rand((), dtype=torch.float64) + 0.5
    (weight * expected).backward()
    (weight.float() * loss).backward()
    assert_close("loss", loss, expected, 1e-6 * max(1.0, expected.abs().item()), 1e-5)
    finite = torch.cat([s64.detach().flatten(), t64.detach().flatten()]).isfinite()
    scale = max(1.0, torch.cat([s64.detach().flatten(), t64.detach().flatten()])[finite].abs().max().item())
    for name, got, want in (("grad y_s", y_s.grad, s64.grad), ("grad y_t", y_t.grad, t64.grad)):
        if want is None:
            assert got is None, name
            continue
        assert got.dtype == (y_s.dtype if name == "grad y_s" else y_t.dtype), name
        # fp32 arithmetic on log-probabilities of size ~|y| / T, times T: an error of ~eps |y|
        atol = 1e-6 * scale + GRAD_RTOL[got.dtype] * want.abs().max().item()
        assert_close(name, got, want, atol, GRAD_RTOL[got.dtype])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_C{}".format(*s))
@pytest.mark.parametrize("T", [1.0, 4.0, 0.1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_float64(backend, T, shape):
    _check(backend, _logits(*shape, torch.float32), _logits(*shape, torch.float32), T)


@pytest.mark.parametrize("s_dtype,t_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                             (torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_narrow_logits(backend, s_dtype, t_dtype):
    _check(backend, _logits(9, 100, s_dtype), _logits(9, 100, t_dtype), 4.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_teacher_gets_no_gradient(backend):
    _check(backend, _logits(5, 10, torch.float32), _logits(5, 10, torch.float32), 4.0, teacher_grad=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_logits(backend):
    """Logits sliced out of a wider output (a column step) and transposed ones."""
    wide = _logits(6, 40, torch.float32)
    _check(backend, wide[:, ::2], _logits(20, 6, torch.float32).t(), 4.0)
    _check(backend, wide[:, 5:25], wide[:, 20:], 2.0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN case, interpreted
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_and_underflowing_teacher_classes(backend):
    """-inf teacher logits and probabilities that underflow add 0 (xlogy), the student's
    gradient stays finite, as kl_div on probabilities gives; a class both sides rule out
    gives NaN, as there."""
    y_s, y_t = _logits(5, 12, torch.float32), _logits(5, 12, torch.float32)
    y_t[:, 3] = float("-inf")
    y_t[1, 7:] = float("-inf")
    y_t[2, 0] = -4000.0
    _check(backend, y_s, y_t, 1.0, teacher_grad=False)
    # an underflowing teacher probability (not a masked one) gives the teacher a finite gradient,
    # the limit, where autograd through the reference's softmax and kl_div gives NaN (0 * log 0)
    y_t = _logits(5, 12, torch.float32).requires_grad_()
    with torch.no_grad():
        y_t[2, 0] = -4000.0
    (grad_t,) = torch.autograd.grad(kd_loss(y_s, y_t, T=1.0, backend=backend), y_t)
    t64 = y_t.detach().double().requires_grad_()
    log_p_s, log_p_t = torch.log_softmax(y_s.double(), 1), torch.log_softmax(t64, 1)
    (expected,) = torch.autograd.grad((log_p_t.exp() * (log_p_t - log_p_s)).sum() / 5, t64)
    assert torch.isfinite(expected).all() and expected[2, 0] == 0
    assert_close("grad y_t", grad_t, expected, 1e-5, 1e-5)
    reference_t = y_t.detach().requires_grad_()
    kd_loss_reference(y_s, reference_t, 1.0).backward()
    assert torch.isnan(reference_t.grad[2]).all()   # why the op does not take autograd's gradient there
    y_t = y_t.detach()
    y_s[0, 3] = float("-inf")
    y_t[0, 3] = float("-inf")
    assert torch.isnan(kd_loss(y_s, y_t, T=1.0, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_module_runs_the_op(backend):
    y_s, y_t = _logits(8, 100, torch.float32).requires_grad_(), _logits(8, 100, torch.float32)
    with use_backend(backend):
        loss = KDLoss(T=4.0)(y_s, y_t)
    (grad,) = torch.autograd.grad(loss, y_s)
    s64 = y_s.detach().double().requires_grad_()
    expected = ReferenceKD(4.0)(s64, y_t.double())
    expected.backward()
    assert_close("loss", loss, expected, 1e-6, 1e-5)
    assert_close("grad", grad, s64.grad, 1e-8, 1e-5)


def test_float64_and_wide_rows_take_the_torch_formulation():
    y = torch.empty(2, 8, device=DEVICE)
    assert _resolve(y.double(), y, "auto") == "torch" and _resolve(y, y.double(), "torch") == "torch"
    # an explicit triton cannot run float64 logits: it says so, as sinkhorn does for float64 costs
    for s, t in ((y.double(), y), (y, y.double())):
        with pytest.raises(BackendUnavailable, match="backend 'triton' cannot run kd_loss: float64 logits"):
            _resolve(s, t, "triton")
    wide = torch.empty(2, MAX_TRITON_CLASSES + 1, device=DEVICE)
    assert _resolve(wide, wide, "auto") == "torch"
    with pytest.raises(BackendUnavailable, match=f"kd_loss: rows of more than {MAX_TRITON_CLASSES} classes"):
        _resolve(wide, wide, "triton")
    if DEVICE.type == "cpu":   # auto runs Triton on a GPU only
        assert _resolve(y, y, "auto") == "torch"
    if not cuda_device_reason(DEVICE):   # a GPU, or the tests' emulated cuda backend
        assert _resolve(wide, wide, "cuda") == "torch"
    else:   # cuda on CPU tensors raises, whatever their size or dtype
        for s, t in ((y, y), (wide, wide), (y.double(), y)):
            with pytest.raises(BackendUnavailable, match="kd_loss: the cuda backend needs CUDA tensors"):
                _resolve(s, t, "cuda")


@pytest.mark.parametrize("call,error,match", [
    (lambda: kd_loss(torch.randn(4, 10), torch.randn(3, 10)), ValueError, "y_t has size 3 in dimension 0"),
    (lambda: kd_loss(torch.randn(4, 10), torch.randn(4, 11)), ValueError, "y_t has size 11 in dimension 1"),
    (lambda: kd_loss(torch.randn(4), torch.randn(4)), ValueError, "y_s must have 2 dimensions"),
    (lambda: kd_loss(torch.randn(4, 10), torch.randn(4, 10).int()), TypeError, "y_t must have dtype"),
    (lambda: kd_loss(torch.randn(4, 10), torch.randn(4, 10), T=0.0), ValueError, "T must be a positive"),
    (lambda: kd_loss(torch.randn(4, 10), torch.randn(4, 10), backend="gpu"), ValueError, "backend must be one of"),
])
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    for student_grad, teacher_grad in ((False, False), (True, False), (True, True), (False, True)):
        y_s = _logits(4, 10, torch.float32).requires_grad_(student_grad)
        y_t = _logits(4, 10, torch.float32).requires_grad_(teacher_grad)
        torch.library.opcheck(_kd_loss_op, (y_s, y_t, 4.0, student_grad or teacher_grad, teacher_grad, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_the_gradients_autograd_asks_for_are_written(backend, monkeypatch):
    """Under no_grad, or with logits that do not require it, no [B, C] gradient is
    allocated or written; the value is the same."""
    import importlib
    asked = []   # (need_grad, teacher_grad) of each call of the backend's formulation
    for module, name in (("rdkernels.ops.kd_loss", "kd_loss_rows_torch"), ("rdkernels.ops.kd_loss.triton",
                                                                          "kd_loss_triton")):
        if backend == "torch" and name == "kd_loss_triton":
            continue
        mod = importlib.import_module(module)
        fn = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, fn=fn: (asked.append(a[3:5]), fn(*a))[1])
    y_s, y_t = _logits(5, 30, torch.float32), _logits(5, 30, torch.float32)
    expected = kd_loss_reference(y_s.double(), y_t.double(), 4.0)
    rows, grad_s, grad_t = _kd_loss_op(y_s, y_t, 4.0, False, False, backend)
    assert grad_s.numel() == 0 and grad_t.numel() == 0
    assert_close("rows", rows.mean(), expected, 1e-6, 1e-6)
    full = _kd_loss_op(y_s, y_t, 4.0, True, True, backend)
    assert torch.equal(full[0], rows) and full[1].shape == full[2].shape == (5, 30)
    with torch.no_grad():
        assert_close("no_grad", kd_loss(y_s.requires_grad_(), y_t, T=4.0, backend=backend), expected, 1e-6, 1e-6)
    kd_loss(y_s.detach(), y_t, T=4.0, backend=backend)
    kd_loss(y_s.detach(), y_t.requires_grad_(), T=4.0, backend=backend).backward()   # a learning teacher alone
    assert y_t.grad is not None and y_t.grad.isfinite().all()
    assert asked == [(False, False), (True, True), (False, False), (False, False), (True, True)]


@TRITON
def test_compiles_fullgraph():
    y_s, y_t = _logits(6, 30, torch.float32).requires_grad_(), _logits(6, 30, torch.float32)
    fn = torch.compile(lambda s, t: kd_loss(s, t, T=4.0, backend="triton"), fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(fn(y_s, y_t), y_s)
    (expected,) = torch.autograd.grad(kd_loss_reference(y_s, y_t, 4.0), y_s)
    assert_close("compiled grad", grad, expected, 1e-8, 1e-5)
