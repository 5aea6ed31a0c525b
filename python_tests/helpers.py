"""Comparison helpers for the parity tests, and a stand-in GPU for the backend choice."""
from __future__ import annotations

import os
import types

import pytest
import torch

# The cuda backend runs on CPU tensors through the CPU emulation of the kernels
# (RDKERNELS_TEST_EMULATED_CUDA=1, see conftest.py): tests of what happens where it
# cannot run, or of a real GPU's limits, do not apply.
EMULATED_CUDA = os.environ.get("RDKERNELS_TEST_EMULATED_CUDA") == "1" and not torch.cuda.is_available()
not_under_emulated_cuda = pytest.mark.skipif(
    EMULATED_CUDA, reason="the CUDA emulation runs the cuda backend on CPU tensors, with an H100's limits")

# (atol, rtol) for a fast path against the float64 reference, by the lowest
# precision among the inputs. bf16 storage rounds to 8 bits of mantissa.
TOLERANCES = {
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.5e-2, 1.5e-2),
}


def tolerance(*dtypes: torch.dtype) -> tuple[float, float]:
    order = [torch.bfloat16, torch.float16, torch.float32]
    for dt in order:
        if dt in dtypes:
            return TOLERANCES[dt]
    return TOLERANCES[torch.float32]


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> None:
    """allclose after casting to float64, with a message naming the worst element."""
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    assert torch.isfinite(a).all(), f"{name}: non-finite values at {torch.nonzero(~torch.isfinite(a))[:5].tolist()}"
    # (a NaN expectation would compare False against any value, and pass)
    assert torch.isfinite(e).all(), f"{name}: the expected values are not finite at " \
                                    f"{torch.nonzero(~torch.isfinite(e))[:5].tolist()}"
    err = (a - e).abs()
    bound = atol + rtol * e.abs()
    if (err > bound).any():
        worst = torch.argmax(err - bound)
        idx = tuple(int(i) for i in torch.unravel_index(worst, a.shape)) if a.dim() else ()
        raise AssertionError(
            f"{name}: {(err > bound).sum().item()} of {a.numel()} elements out of tolerance "
            f"(atol={atol}, rtol={rtol}); worst at {idx}: got {a[idx].item():.8g}, expected {e[idx].item():.8g}"
        )


def unit_rows(n: int, d: int, dtype=torch.float32, device="cpu", generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """n random unit rows, normalised in float64, then cast; drawn from ``generator``
    (a CPU one) when given, on ``device`` otherwise."""
    x = torch.randn(n, d, dtype=torch.float64, device="cpu" if generator is not None else device,
                    generator=generator)
    return (x / x.norm(dim=1, keepdim=True)).to(device=device, dtype=dtype)


def bank_loss_batch(b: int, k: int, s_dim: int, t_dim: int, n_data: int, device) -> tuple:
    """(f_s, f_t, idx, contrast_idx) for a bank loss (CRD, WCoRD): b distinct
    dataset indices, K random negatives after each row's positive."""
    f_s = torch.randn(b, s_dim, device=device)
    f_t = torch.randn(b, t_dim, device=device)
    idx = torch.randperm(n_data, device=device)[:b]
    contrast_idx = torch.randint(0, n_data, (b, k + 1), device=device)
    contrast_idx[:, 0] = idx
    return f_s, f_t, idx, contrast_idx


def bank_loss_step(module, f_s, f_t, idx, contrast_idx, dtype) -> tuple:
    """One forward + backward of ``module`` with the features in ``dtype``:
    (loss, grad f_s, grad f_t, {parameter name: grad})."""
    module.zero_grad()
    f_s = f_s.detach().to(dtype).clone().requires_grad_()
    f_t = f_t.detach().to(dtype).clone().requires_grad_()
    loss = module(f_s, f_t, idx, contrast_idx)
    loss.backward()
    return loss.detach(), f_s.grad, f_t.grad, {n: p.grad for n, p in module.named_parameters()}


def assert_bank_loss_step_matches(fused, reference, inputs, label: str, loss_atol: float = 1e-5) -> None:
    """One step of ``fused`` (fp32 features) against ``reference`` (float64): loss,
    the features' gradients and every parameter's."""
    loss, gs, gt, grads = bank_loss_step(fused, *inputs, torch.float32)
    r_loss, r_gs, r_gt, r_grads = bank_loss_step(reference, *inputs, torch.float64)
    assert_close(f"{label} loss", loss, r_loss, atol=loss_atol, rtol=1e-5)
    assert_close(f"{label} d f_s", gs, r_gs, atol=1e-6, rtol=1e-4)
    assert_close(f"{label} d f_t", gt, r_gt, atol=1e-6, rtol=1e-4)
    for name in grads:
        assert_close(f"{label} d {name}", grads[name], r_grads[name], atol=1e-6, rtol=1e-4)


def stub_cuda_gpu(monkeypatch, capability: tuple[int, int], image_error: str, ops=("bank_update",)):
    """Make cuda:0 a GPU of ``capability`` for rdkernels.backend, without one: the CUDA
    extension (a stand-in with the functions ``ops``, built for sm_80 and sm_90) gets
    ``image_error`` from the runtime there, and Triton can run. Returns the stand-in."""
    from rdkernels import backend

    module = types.SimpleNamespace(__file__="_C.so", compiled_archs=lambda: [800, 900], **{op: None for op in ops})
    monkeypatch.setattr(backend, "_probes", {"cuda": (module, None)})
    monkeypatch.setattr(backend, "_device_capability", lambda index: capability)
    monkeypatch.setattr(backend, "_kernel_image_error", lambda module, index: image_error)
    monkeypatch.setattr(backend, "triton_unavailable_reason", lambda device: None)
    return module


def naive_enqueue_(queue, ptr, keys):
    """A FIFO queue written the obvious way, one key after another, the pointer wrapping
    as torch's remainder does (a negative or too large start included): an independent
    check of fifo_enqueue_ and of the reference RRD loss's torch formulation."""
    with torch.no_grad():
        for key in keys:
            row = int(ptr) % queue.shape[0]
            queue[row] = key.to(queue.dtype)
            ptr.fill_(row + 1)
        ptr.remainder_(queue.shape[0])
