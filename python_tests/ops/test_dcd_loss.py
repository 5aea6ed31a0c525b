"""dcd_loss (the fused DCD op) on every backend against the float64 autograd reference."""
import numpy as np
import pytest
import torch

from conftest import DEVICE, backends
from helpers import assert_close, tolerance, unit_rows
from rdkernels.ops import dcd_loss
from rdkernels.ops.dcd import _dcd_op, dcd_reference
from rdkernels.ops.dcd.reference import dcd_fwd_reference


def _inputs(batch, dim, dtype=torch.float32, tau=1.0, bias=0.0):
    z_s = unit_rows(batch, dim, dtype, DEVICE).requires_grad_()
    z_t = unit_rows(batch, dim, dtype, DEVICE).requires_grad_()
    tau = torch.tensor(tau, device=DEVICE, requires_grad=True)
    bias = torch.tensor(bias, device=DEVICE, requires_grad=True)
    return z_s, z_t, tau, bias


def _expected(z_s, z_t, tau, bias, alpha=0.5, upstream=1.0):
    leaves = [t.detach().double().requires_grad_() for t in (z_s, z_t, tau, bias)]
    loss = dcd_reference(*leaves, alpha=alpha)
    (loss * upstream).backward()
    return loss.detach(), [t.grad for t in leaves]


def _check(loss, inputs, expected, dtype):
    exp_loss, exp_grads = expected
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close("loss", loss, exp_loss, 2e-5, 1e-5)
    # The reference sees the same rounded inputs and the kernels compute in fp32, so a
    # narrow dtype adds only the rounding of the returned dz (2^-8 relative in bf16,
    # 2^-11 in fp16); tau and bias are fp32 and their gradients fp32 sums over B^2
    # terms, whatever the embeddings' dtype. (d bias is 0 up to rounding: both softmaxes
    # are invariant to a constant shift of the logits.)
    rtol = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    for name, t, g in zip(("z_s", "z_t", "tau", "bias"), inputs, exp_grads):
        assert t.grad.dtype == t.dtype and t.grad.shape == t.shape
        assert_close(f"d{name}", t.grad, g, 1e-5, rtol if t.dim() else 1e-4)


@pytest.mark.parametrize("backend", backends("dcd_loss"))
@pytest.mark.parametrize("batch,dim", [(1, 64), (5, 96), (37, 128), (64, 32), (16, 16), (20, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_reference(backend, batch, dim, dtype):
    inputs = _inputs(batch, dim, dtype, tau=0.7, bias=-0.2)
    loss = dcd_loss(*inputs, backend=backend)
    (loss * 1.3).backward()
    _check(loss, inputs, _expected(*inputs, upstream=1.3), dtype)


def _triton_candidates():
    from rdkernels.ops.dcd.triton import CANDIDATES, _candidate_tag
    return [pytest.param(c, id=_candidate_tag(c)) for c in CANDIDATES]


@pytest.mark.parametrize("config", _triton_candidates())
@pytest.mark.parametrize("batch,dim", [(70, 128), (37, 48)])
def test_triton_every_launch_candidate(config, batch, dim):
    """Each configuration of the gradient kernel the GPU may pick by timing gives the
    same loss and the four gradients: row blocks of 16 to 64 and steps of 32 or 64
    (a batch that ends mid-block, 3 and 5 logit tiles under the interpreter); 3xTF32
    dots on a GPU, exact fp32 under the interpreter."""
    from rdkernels.backend import triton_unavailable_reason
    if triton_unavailable_reason(DEVICE):
        pytest.skip(triton_unavailable_reason(DEVICE))
    from rdkernels.ops.dcd.triton import dcd_triton
    z_s, z_t, tau, bias = _inputs(batch, dim, tau=0.7, bias=-0.2)
    exp_loss, exp_grads = _expected(z_s, z_t, tau, bias)
    t = tau.detach().reshape(1).float()
    b = bias.detach().reshape(1).float()
    loss, grads = dcd_triton(z_s.detach(), z_t.detach(), t, b, 10.0, 0.5, True, config=config)
    assert_close("loss", loss.reshape(()), exp_loss, 2e-5, 1e-5)
    n = batch * dim
    for name, got, want in (("z_s", grads[:n].view(batch, dim), exp_grads[0]),
                            ("z_t", grads[n:2 * n].view(batch, dim), exp_grads[1]),
                            ("tau", grads[2 * n], exp_grads[2]), ("bias", grads[2 * n + 1], exp_grads[3])):
        assert_close(f"d{name}", got, want, 1e-5, 1e-4)
    fwd_only, _ = dcd_triton(z_s.detach(), z_t.detach(), t, b, 10.0, 0.5, False, config=config)
    assert_close("loss without gradient", fwd_only.reshape(()), exp_loss, 2e-5, 1e-5)


@pytest.mark.parametrize("batch,dim", [(100, 32), (300, 16)])
def test_triton_gpu_tiling(monkeypatch, batch, dim):
    """The GPU's layout under the interpreter too: 32-wide logit tiles and each walk
    cut into 8 splits. B = 100 has 4 tiles, so splits 4..7 walk nothing (their
    partials must be neutral); B = 300 has 10, two a split, the last one ragged."""
    from rdkernels.backend import triton_unavailable_reason
    if triton_unavailable_reason(DEVICE):
        pytest.skip(triton_unavailable_reason(DEVICE))
    from rdkernels.ops.dcd import triton as dcd_triton
    monkeypatch.setattr(dcd_triton, "INTERPRETER_TILE", dcd_triton.TILE)
    monkeypatch.setattr(dcd_triton, "INTERPRETER_SPLITS", dcd_triton.SPLITS)
    inputs = _inputs(batch, dim, tau=1.1, bias=0.3)
    loss = dcd_loss(*inputs, backend="triton")
    loss.backward()
    _check(loss, inputs, _expected(*inputs), torch.float32)


@pytest.mark.parametrize("backend", backends("dcd_loss"))
@pytest.mark.parametrize("tau,alpha", [(2.5, 0.5), (-1.0, 1.0), (1.0, 0.0), (2.302585, 2.0)])
def test_clamp_and_alpha(backend, tau, alpha):
    """exp(2.5) > 10: the clamp zeroes d tau (as torch.clamp's gradient does); alpha scales the KL."""
    inputs = _inputs(12, 64, tau=tau, bias=0.5)
    loss = dcd_loss(*inputs, alpha=alpha, backend=backend)
    loss.backward()
    _check(loss, inputs, _expected(*inputs, alpha=alpha), torch.float32)
    if tau > 2.4:
        assert inputs[2].grad.item() == 0.0


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, under the interpreter
@pytest.mark.parametrize("backend", backends("dcd_loss"))
def test_nan_tau_gives_nan(backend):
    """As torch.clamp(exp(tau), 0, max_scale) does: a NaN tau must not read as max_scale."""
    z_s, z_t, tau, bias = _inputs(5, 16, tau=float("nan"))
    loss = dcd_loss(z_s, z_t, tau, bias, backend=backend)
    loss.backward()
    assert torch.isnan(loss)
    assert torch.isnan(tau.grad) and torch.isnan(z_s.grad).all()


def test_closed_form_gradient_matches_autograd():
    """The torch backend's closed-form gradient (the kernels' formula) vs autograd, float64."""
    z_s, z_t = unit_rows(9, 16, torch.float64), unit_rows(9, 16, torch.float64)
    tau, bias = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    loss, *grads = dcd_fwd_reference(z_s, z_t, tau, bias, 0.5, 10.0, True)
    exp_loss, exp_grads = _expected(z_s, z_t, tau, bias)
    assert_close("loss", loss, exp_loss, 1e-12, 1e-12)
    for g, e in zip(grads, exp_grads):
        assert_close("grad", g, e, 1e-12, 1e-10)


@pytest.mark.parametrize("backend", backends("dcd_loss"))
def test_forward_only_and_partial_grads(backend):
    inputs = _inputs(8, 32)
    with torch.no_grad():
        plain = dcd_loss(*inputs, backend=backend)
    assert plain.grad_fn is None
    z_s, z_t, tau, bias = (t.detach() for t in inputs)
    z_s.requires_grad_()
    loss = dcd_loss(z_s, z_t, tau, bias, backend=backend)  # only z_s learns
    loss.backward()
    exp_loss, exp_grads = _expected(z_s, z_t, tau, bias)
    assert_close("loss", plain, exp_loss, 2e-5, 1e-5)
    assert_close("dz_s", z_s.grad, exp_grads[0], *tolerance(torch.float32))


def test_wide_embeddings():
    """auto falls back past the fused kernels' widths; an explicit request says why."""
    inputs = _inputs(6, 300)
    loss = dcd_loss(*inputs)
    assert_close("loss", loss, _expected(*inputs)[0], 2e-5, 1e-5)
    from rdkernels.backend import BackendUnavailable, available_backends
    if "triton" in available_backends(DEVICE, "dcd_loss"):
        with pytest.raises(BackendUnavailable, match="embedding width"):
            dcd_loss(*inputs, backend="triton")


def test_reference_gradcheck():
    args = [torch.randn(4, 6, dtype=torch.float64, requires_grad=True),
            torch.randn(4, 6, dtype=torch.float64, requires_grad=True),
            torch.tensor(0.4, dtype=torch.float64, requires_grad=True),
            torch.tensor(0.1, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *a: dcd_reference(*a, alpha=0.5), args)


def test_opcheck_torch_backend():
    z_s, z_t, tau, bias = _inputs(4, 16)
    torch.library.opcheck(_dcd_op, (z_s, z_t, tau, bias, 0.5, 10.0, True, "torch"),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("bad,match", [
    (dict(z_s=torch.randn(4, 16, dtype=torch.float64)), "z_s must have dtype"),
    (dict(z_t=torch.randn(3, 16)), "z_t has size 3 in dimension 0"),
    (dict(z_t=torch.randn(4, 8)), "z_t has size 8 in dimension 1"),
    (dict(z_t=torch.randn(4, 16, dtype=torch.float16)), "z_t must have the same dtype"),
    (dict(z_s=torch.randn(0, 16), z_t=torch.randn(0, 16)), "z_s is empty"),
    (dict(tau=torch.ones(2)), "tau must hold one element"),
    (dict(bias=torch.tensor(1, dtype=torch.int64)), "bias must have dtype"),
    (dict(tau=1.0), "tau must be a torch.Tensor"),
    (dict(alpha=-1.0), "alpha must be"),
    (dict(alpha=True), "alpha must be a real number, got bool"),
    (dict(max_scale=True), "max_scale must be a real number, got bool"),
    (dict(max_scale=float("nan")), "max_scale must be a positive number"),
])
def test_bad_input_raises(bad, match):
    args = dict(z_s=torch.randn(4, 16), z_t=torch.randn(4, 16), tau=torch.tensor(1.0), bias=torch.tensor(0.0))
    args.update(bad)
    kwargs = {k: args.pop(k) for k in ("alpha", "max_scale") if k in args}
    with pytest.raises((ValueError, TypeError), match=match):
        dcd_loss(args["z_s"], args["z_t"], args["tau"], args["bias"], **kwargs)


def test_numpy_scalars():
    inputs = _inputs(4, 16)
    expected = dcd_loss(*inputs, alpha=float(np.float32(0.3)), max_scale=8.0, backend="torch")
    assert torch.equal(dcd_loss(*inputs, alpha=np.float32(0.3), max_scale=np.int64(8), backend="torch"), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("batch", [64, 256, 1000, 1024, 1500])
@pytest.mark.parametrize("dim", [128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_large_batch(backend, batch, dim, dtype):
    """Batches past the GPU's tiles and the former kernels' limit of 1024."""
    from rdkernels.backend import available_backends
    from rdkernels.ops.dcd import MAX_FUSED_DIM
    if backend not in available_backends(DEVICE, "dcd_loss"):
        pytest.skip(f"{backend} unavailable")
    if backend == "triton" and dim > MAX_FUSED_DIM:
        pytest.skip("beyond the Triton kernel's width")
    inputs = _inputs(batch, dim, dtype, tau=1.2, bias=0.1)
    loss = dcd_loss(*inputs, backend=backend)
    loss.backward()
    _check(loss, inputs, _expected(*inputs), dtype)


@pytest.mark.gpu
def test_gpu_cuda_takes_widths_past_tritons():
    from rdkernels.backend import available_backends
    if "cuda" not in available_backends(DEVICE, "dcd_loss"):
        pytest.skip("cuda unavailable")
    inputs = _inputs(200, 320)
    loss = dcd_loss(*inputs, backend="cuda")
    loss.backward()
    _check(loss, inputs, _expected(*inputs), torch.float32)


def test_auto_takes_triton_where_only_device_time_counts(monkeypatch):
    """auto on a GPU: the CUDA kernels eagerly (less host time), Triton's while a graph
    records the call or inside assume_graph_replay (less device time); an explicit
    backend, a global one, or a width Triton's kernels cannot take keeps CUDA's choice."""
    import importlib

    import rdkernels
    dcd = importlib.import_module("rdkernels.ops.dcd")
    monkeypatch.setattr(rdkernels.backend, "resolve", lambda device, op, requested=None: "cuda")
    monkeypatch.setattr(rdkernels.backend, "triton_unavailable_reason", lambda device: None)
    narrow, wide = torch.empty(4, 128), torch.empty(4, dcd.MAX_FUSED_DIM + 1)
    for recording in (False, True):
        monkeypatch.setattr(dcd, "capturing", lambda t, recording=recording: recording)
        assert dcd._resolve(narrow, None) == ("triton" if recording else "cuda")
        assert dcd._resolve(narrow, "cuda") == "cuda"
        assert dcd._resolve(wide, None) == "cuda"
        with rdkernels.use_backend("cuda"):
            assert dcd._resolve(narrow, None) == "cuda"
    monkeypatch.setattr(rdkernels.backend, "triton_unavailable_reason", lambda device: "no Triton here")
    assert dcd._resolve(narrow, None) == "cuda"   # recording, but Triton cannot run
