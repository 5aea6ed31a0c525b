"""l2_normalize: Triton and torch against the float64 reference, forward and backward."""
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE
from helpers import assert_close, tolerance

from rdkernels.backend import BackendUnavailable, cuda_device_reason, triton_unavailable_reason
from rdkernels.losses._embed import Embed
from rdkernels.ops.l2_normalize import (MAX_TRITON_DIM, _l2_normalize_backward_op, _l2_normalize_op, _resolve,
                                        l2_normalize, l2_normalize_reference)

BACKENDS = [pytest.param("torch"),
            pytest.param("triton", marks=pytest.mark.skipif(triton_unavailable_reason(DEVICE) is not None,
                                                            reason="Triton unavailable here"))]
# (B, d): one row, ragged widths, the losses' 128, wide rows
SHAPES = [(1, 16), (5, 33), (64, 128), (3, 1000), (2, 4096)]


def _rows(batch, dim, dtype):
    """Rows of very different norms, some below the eps = 0.5 case's bound."""
    scale = torch.logspace(-2, 1, batch, device=DEVICE)[:, None]
    return (torch.randn(batch, dim, device=DEVICE) * scale / dim ** 0.5).to(dtype)


def _check(backend, x, eps):
    x = x.detach().requires_grad_()
    y = l2_normalize(x, eps=eps, backend=backend)
    assert y.dtype == x.dtype and y.shape == x.shape
    x64 = x.detach().double().requires_grad_()
    ref = l2_normalize_reference(x64, eps)
    weights = torch.randn(ref.shape, dtype=torch.float64, device=DEVICE)
    (ref * weights).sum().backward()
    (y * weights.to(y.dtype)).sum().backward()
    atol, rtol = tolerance(x.dtype)
    assert_close("y", y, ref, atol, rtol)
    assert x.grad.dtype == x.dtype
    # d y / d x scales as 1 / ||x||: judge the gradient against its own size
    assert_close("grad", x.grad, x64.grad, atol * x64.grad.abs().max().item(), rtol)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_d{}".format(*s))
@pytest.mark.parametrize("eps", [0.0, 1e-12, 0.5])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_float64(backend, eps, shape):
    _check(backend, _rows(*shape, torch.float32), eps)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_narrow_dtypes(backend, dtype):
    _check(backend, _rows(17, 128, dtype), 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_stride(backend):
    """Rows of a wider buffer (stride 0 > d), as a slice of a projection's output gives."""
    base = _rows(6, 200, torch.float32)
    _check(backend, base[:, :128], 0.0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                            "ignore:divide by zero encountered:RuntimeWarning")  # the interpreter's 0 / 0
@pytest.mark.parametrize("backend", BACKENDS)
def test_is_the_heads_normalisation(backend):
    """eps = 0 is RepDistiller's Normalize (Embed's reference path), eps = 1e-12 F.normalize,
    values and gradients, with a zero row where the two differ (NaN vs zeros)."""
    x = _rows(8, 64, torch.float32)
    x[3] = 0.0
    for eps, formula in ((0.0, lambda v: v / v.pow(2).sum(1, keepdim=True).pow(0.5)),
                         (1e-12, lambda v: F.normalize(v, dim=1))):
        a, b = x.clone().requires_grad_(), x.double().requires_grad_()   # the formula in float64
        ya, yb = l2_normalize(a, eps=eps, backend=backend), formula(b)
        w = torch.randn_like(yb)
        (ya * w.float()).sum().backward()
        (yb * w).sum().backward()
        torch.testing.assert_close(ya, yb.float(), equal_nan=True, atol=1e-6, rtol=1e-5)
        # d y / d x scales as 1 / ||x||, and these rows' norms differ 1000-fold (the zero row's
        # gradient is g / eps): each row is judged against its own size
        scale = b.grad.nan_to_num().abs().amax(1, keepdim=True).clamp_min(1e-30)
        torch.testing.assert_close(a.grad / scale, b.grad / scale, equal_nan=True, atol=1e-6, rtol=1e-5,
                                   check_dtype=False)
    assert torch.isnan(l2_normalize(x, backend=backend)[3]).all()   # the reference's 0 / 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_gives_the_torch_formulations_dtype(backend):
    """Under autocast the fused heads hand the loss the dtype the torch formulation
    gives: fp32 under CUDA autocast (it computes the norm in fp32 and the division
    promotes), the narrow type under CPU autocast (which does not)."""
    x = _rows(4, 32, torch.bfloat16)
    assert l2_normalize(x, backend=backend).dtype == torch.bfloat16
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y = l2_normalize(x, backend=backend)
        repdistiller = x / x.pow(2).sum(1, keepdim=True).pow(0.5)   # its Normalize(2)
        assert y.dtype == repdistiller.dtype == F.normalize(x, dim=1).dtype
    assert y.dtype == (torch.float32 if DEVICE.type == "cuda" else torch.bfloat16)
    # fp32: float rounding; bf16: one rounding to it (a truncation under the interpreter)
    atol, rtol = (1e-6, 1e-5) if y.dtype == torch.float32 else (1e-6, 2.0 ** -7)
    torch.testing.assert_close(y.float(), l2_normalize_reference(x.double()).float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_embed_matches_the_reference_embed(backend):
    ref, fused = Embed(48, 16), Embed(48, 16, fused=True)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(9, 3, 16)   # flattened to 48 features
    ref, fused, x = ref.to(DEVICE), fused.to(DEVICE), x.to(DEVICE)
    torch.testing.assert_close(fused(x, backend=backend), ref(x), atol=1e-6, rtol=1e-5)
    fused(x, backend=backend).sum().backward()
    ref(x).sum().backward()
    torch.testing.assert_close(fused.linear.weight.grad, ref.linear.weight.grad, atol=1e-5, rtol=1e-4)


def test_double_backward_is_refused():
    x = _rows(3, 16, torch.float32).requires_grad_()
    (g,) = torch.autograd.grad(l2_normalize(x, backend="torch").pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_opcheck():
    """Both ops (the backward is its own, for torch.compile's fake-tensor trace)."""
    x = _rows(5, 24, torch.float32)
    torch.library.opcheck(_l2_normalize_op, (x.clone().requires_grad_(), 1e-12, False, "torch"),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    norm = torch.linalg.vector_norm(x, dim=1)
    torch.library.opcheck(_l2_normalize_backward_op, (torch.randn_like(x), x, norm, 1e-12, "torch"),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiles_fullgraph(backend):
    x, w = _rows(6, 40, torch.float32).requires_grad_(), torch.randn(6, 40, device=DEVICE)
    fn = torch.compile(lambda v: (l2_normalize(v, backend=backend) * w).sum(), fullgraph=True, backend="aot_eager")
    (g,) = torch.autograd.grad(fn(x), x)
    (expected,) = torch.autograd.grad((l2_normalize_reference(x.double()) * w).sum(), x)
    assert_close("compiled grad", g, expected, 1e-5 * expected.abs().max().item(), 1e-4)


def test_cuda_backend_uses_a_kernel_it_has():
    """No CUDA C++ kernel: backend 'cuda' runs Triton's on a GPU (torch's where Triton
    cannot run there), and raises on CPU tensors, as for the ops with a CUDA kernel."""
    x = _rows(3, 16, torch.float32)
    if cuda_device_reason(DEVICE):   # CPU tensors (the tests' emulated cuda backend takes them)
        with pytest.raises(BackendUnavailable, match="backend 'cuda' cannot run l2_normalize: the cuda "
                                                     "backend needs CUDA tensors, got cpu tensors"):
            l2_normalize(x, backend="cuda")
        return
    on_gpu_triton = DEVICE.type == "cuda" and triton_unavailable_reason(DEVICE) is None
    assert _resolve(x, "cuda") == ("triton" if on_gpu_triton else "torch")
    torch.testing.assert_close(l2_normalize(x, backend="cuda"), l2_normalize_reference(x))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=torch.randn(5)), ValueError, "x must have 2 dimensions"),
    (dict(x=torch.randn(4, 8, dtype=torch.float64)), TypeError, "x must have dtype"),
    (dict(x=torch.randn(4, 0)), ValueError, "x is empty"),
    (dict(eps=-1.0), ValueError, "eps must be a finite number >= 0"),
    (dict(eps=float("nan")), ValueError, "eps must be"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
])
def test_bad_input_raises(kwargs, error, match):
    args = dict(x=torch.randn(4, 8), eps=0.0, backend=None)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        l2_normalize(args.pop("x"), **args)


def test_triton_refuses_what_it_cannot_run():
    """Where Triton runs, rows wider than MAX_TRITON_DIM (the width, not the device);
    where it cannot, any row, with that reason."""
    reason = triton_unavailable_reason(DEVICE)
    x = torch.randn(2, MAX_TRITON_DIM + 1, device=DEVICE)
    expected = f"l2_normalize: {reason}" if reason else f"rows wider than {MAX_TRITON_DIM} (got {MAX_TRITON_DIM + 1})"
    with pytest.raises(BackendUnavailable, match=re.escape(expected)):
        l2_normalize(x, backend="triton")
    if reason is None:
        l2_normalize(torch.randn(2, MAX_TRITON_DIM, device=DEVICE), backend="triton")
