"""shared_bank_contrast on every backend against the float64 reference."""
import numpy as np
import pytest
import torch

from conftest import DEVICE, backends
from helpers import assert_close, tolerance, unit_rows
from rdkernels.ops import shared_bank_contrast
from rdkernels.ops.shared_bank_contrast import _shared_bank_contrast_op, shared_bank_contrast_reference

TAU_S, TAU_T = 0.02, 0.1


def _inputs(batch, dim, n_rows, q_dtype=torch.float32, queue_dtype=torch.float32):
    q_s = unit_rows(batch, dim, q_dtype, DEVICE).requires_grad_()
    q_t = unit_rows(batch, dim, q_dtype, DEVICE)
    queue = unit_rows(n_rows, dim, queue_dtype, DEVICE)
    return q_s, q_t, queue


def _expected(q_s, q_t, queue, grad, tau_s=TAU_S, tau_t=TAU_T):
    q64 = q_s.detach().double().requires_grad_()
    loss = shared_bank_contrast_reference(q64, q_t.double(), queue.double(), tau_s, tau_t)
    (loss * grad.double()).sum().backward()
    return loss.detach(), q64.grad


def _loss_tol(q_dtype, queue_dtype):
    # The loss is an O(10) log-sum-exp of logits up to 1/tau_s = 50: fp32 rounding
    # of the logits dominates, so the absolute bound scales with 1/tau_s.
    atol, rtol = tolerance(torch.float32)
    return 50 * atol, rtol


@pytest.mark.parametrize("backend", backends("shared_bank_contrast"))
@pytest.mark.parametrize("batch,dim,n_rows", [(1, 64, 40), (7, 96, 100), (20, 128, 129), (3, 32, 48)])
@pytest.mark.parametrize("q_dtype,queue_dtype", [
    (torch.float32, torch.float32), (torch.bfloat16, torch.float32),
    (torch.float16, torch.float16), (torch.float32, torch.bfloat16)])
def test_matches_reference(backend, batch, dim, n_rows, q_dtype, queue_dtype):
    q_s, q_t, queue = _inputs(batch, dim, n_rows, q_dtype, queue_dtype)
    grad = torch.randn(batch, device=DEVICE)
    loss = shared_bank_contrast(q_s, q_t, queue, tau_s=TAU_S, tau_t=TAU_T, backend=backend)
    (loss * grad).sum().backward()
    exp_loss, exp_grad = _expected(q_s, q_t, queue, grad)
    assert loss.dtype == torch.float32 and loss.shape == (batch,)
    assert q_s.grad.dtype == q_dtype
    assert_close("loss", loss, exp_loss, *_loss_tol(q_dtype, queue_dtype))
    # dq is O(1/tau_s) and computed in fp32 on the same rounded inputs: the only
    # narrow-dtype error is the rounding of the returned gradient (2^-8 relative in
    # bf16, 2^-11 in fp16), so the bound is relative, with the fp32 floor as atol.
    rtol = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 8e-3}[q_dtype]
    assert_close("dq_s", q_s.grad, exp_grad, 5e-4, rtol)


def _far_apart_maxima_inputs(batch, dim, n_rows, n_last):
    """Queries near one direction e, the queue near -e but for its last ``n_last``
    rows, near e: the student's base-2 logits are about -70 in the first splits and
    +70 in the last, so a merge that rescales by a maximum other than the largest
    overflows exp2 (fp32's range ends at 2^128)."""
    g = torch.Generator().manual_seed(5)
    e = torch.nn.functional.normalize(torch.randn(dim, generator=g, dtype=torch.float64), dim=0)

    def near(sign, rows):
        return torch.nn.functional.normalize(sign * e + 0.02 * torch.randn(rows, dim, generator=g, dtype=torch.float64),
                                             dim=1).float().to(DEVICE)
    queue = torch.cat([near(-1, n_rows - n_last), near(1, n_last)])
    return near(1, batch).requires_grad_(), near(1, batch), queue


@pytest.mark.parametrize("merge_steps", ["one step", "several steps"])
@pytest.mark.parametrize("splits", [1, 3, 100])
def test_triton_split_merge(splits, merge_steps, monkeypatch):
    """Every split count gives the same loss and gradient (the log-sum-exp merge is
    exact), the merge taking its splits in one step of each loop or in several (the
    90-row queue holds 6 tiles, so 100 splits are 6), its splits' maxima far apart."""
    from rdkernels.backend import triton_unavailable_reason
    if triton_unavailable_reason(DEVICE):
        pytest.skip(triton_unavailable_reason(DEVICE))
    from rdkernels.ops.shared_bank_contrast import triton as sbc_triton
    from rdkernels.ops.shared_bank_contrast.triton import shared_bank_contrast_triton
    if merge_steps == "several steps":
        monkeypatch.setattr(sbc_triton, "MERGE_STATS_BLOCK", 2)
        monkeypatch.setattr(sbc_triton, "MERGE_BLOCK_S", 2)
    q_s, q_t, queue = _far_apart_maxima_inputs(5, 64, 90, n_last=10)
    loss, dq = shared_bank_contrast_triton(q_s.detach(), q_t, queue, TAU_S, TAU_T, True, num_splits=splits)
    exp_loss, exp_grad = _expected(q_s, q_t, queue, torch.ones(5, device=DEVICE))
    assert_close("loss", loss, exp_loss, 5e-4, 1e-4)
    assert_close("dq_s", dq, exp_grad, 5e-4, 1e-4)


def _triton_candidates():
    from rdkernels.ops.shared_bank_contrast.triton import CANDIDATES, _candidate_tag
    return [pytest.param(c, id=_candidate_tag(c)) for c in CANDIDATES]


@pytest.mark.parametrize("config", _triton_candidates())
@pytest.mark.parametrize("batch,dim,n_rows", [(20, 128, 200), (5, 48, 70)])
def test_triton_every_launch_candidate(config, batch, dim, n_rows):
    """Each configuration the GPU may pick by timing computes the same loss and
    gradient: tile shapes (row blocks wider than the batch included) and queue
    splits that do not fall on its tile boundaries."""
    from rdkernels.backend import triton_unavailable_reason
    if triton_unavailable_reason(DEVICE):
        pytest.skip(triton_unavailable_reason(DEVICE))
    from rdkernels.ops.shared_bank_contrast.triton import shared_bank_contrast_triton
    q_s, q_t, queue = _inputs(batch, dim, n_rows)
    grad = torch.ones(batch, device=DEVICE)
    exp_loss, exp_grad = _expected(q_s, q_t, queue, grad)
    for splits in (1, 3):
        loss, dq = shared_bank_contrast_triton(q_s.detach(), q_t, queue, TAU_S, TAU_T, True,
                                               num_splits=splits, config=config)
        assert_close("loss", loss, exp_loss, 5e-4, 1e-4)
        assert_close("dq_s", dq, exp_grad, 5e-4, 1e-4)
        fwd_only, _ = shared_bank_contrast_triton(q_s.detach(), q_t, queue, TAU_S, TAU_T, False,
                                                  num_splits=splits, config=config)
        assert_close("loss without gradient", fwd_only, exp_loss, 5e-4, 1e-4)


@pytest.mark.parametrize("backend", backends("shared_bank_contrast"))
def test_reductions_and_no_grad(backend):
    q_s, q_t, queue = _inputs(6, 64, 50)
    per_row = shared_bank_contrast(q_s, q_t, queue, tau_s=0.04, tau_t=0.1, backend=backend)
    mean = shared_bank_contrast(q_s, q_t, queue, tau_s=0.04, tau_t=0.1, reduction="mean", backend=backend)
    total = shared_bank_contrast(q_s, q_t, queue, tau_s=0.04, tau_t=0.1, reduction="sum", backend=backend)
    with torch.no_grad():
        no_grad = shared_bank_contrast(q_s, q_t, queue, tau_s=0.04, tau_t=0.1, backend=backend)
    assert mean.dim() == 0 and total.dim() == 0
    assert_close("mean", mean, per_row.mean(), 1e-6, 1e-6)
    assert_close("sum", total, per_row.sum(), 1e-5, 1e-6)
    assert_close("no_grad", no_grad, per_row, 1e-6, 1e-6)
    assert no_grad.grad_fn is None


@pytest.mark.parametrize("backend", backends("shared_bank_contrast"))
def test_backward_does_not_reread_queue(backend):
    """RRD may enqueue (overwrite queue rows) between forward and backward."""
    q_s, q_t, queue = _inputs(4, 64, 40)
    old = queue.clone()
    loss = shared_bank_contrast(q_s, q_t, queue, tau_s=TAU_S, tau_t=TAU_T, reduction="sum", backend=backend)
    queue[:4] = q_t  # enqueue-after
    loss.backward()
    _, exp_grad = _expected(q_s, q_t, old, torch.ones(4, device=DEVICE))
    assert_close("dq_s", q_s.grad, exp_grad, 5e-4, 1e-4)


@pytest.mark.parametrize("backend", backends("shared_bank_contrast"))
def test_teacher_and_queue_get_no_gradient(backend):
    q_s, q_t, queue = _inputs(3, 64, 20)
    q_t.requires_grad_()
    queue.requires_grad_()
    shared_bank_contrast(q_s, q_t, queue, tau_s=TAU_S, tau_t=TAU_T, reduction="mean", backend=backend).backward()
    assert q_s.grad is not None and q_t.grad is None and queue.grad is None


def test_loss_is_cross_entropy_at_equal_temperatures():
    """With q_s = q_t and tau_s = tau_t the loss is the entropy of p_t (a known value)."""
    q_s, _, queue = _inputs(4, 32, 30)
    loss = shared_bank_contrast(q_s, q_s.detach(), queue, tau_s=0.1, tau_t=0.1, backend="torch")
    p = torch.softmax(q_s.detach().double() @ queue.double().t() / 0.1, dim=1)
    assert_close("entropy", loss, -(p * p.log()).sum(1), 1e-5, 1e-5)
    loss.sum().backward()
    assert q_s.grad.abs().max() < 1e-4  # p_s = p_t: zero gradient


def test_reference_gradcheck():
    q_s = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    q_t = torch.randn(3, 8, dtype=torch.float64)
    queue = torch.randn(11, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q: shared_bank_contrast_reference(q, q_t, queue, 0.5, 0.7), (q_s,))


def test_opcheck_torch_backend():
    q_s, q_t, queue = _inputs(3, 16, 10)
    for need_grad in (True, False):
        torch.library.opcheck(_shared_bank_contrast_op,
                              (q_s.detach().requires_grad_(need_grad), q_t, queue, 0.1, 0.2, need_grad, "torch"),
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("bad,match", [
    (dict(q_s=torch.randn(4, 16, dtype=torch.float64)), "q_s must have dtype"),
    (dict(q_s=torch.randn(4, 16, 1)), "q_s must have 2 dimensions"),
    (dict(q_t=torch.randn(3, 16)), "q_t has size 3 in dimension 0"),
    (dict(q_t=torch.randn(4, 8)), "q_t has size 8 in dimension 1"),
    (dict(q_t=torch.randn(4, 16, dtype=torch.float16)), "q_t must have the same dtype"),
    (dict(queue=torch.randn(10, 8)), "q_s has size 16 in dimension 1 but must match the queue's row width \\(8\\)"),
    (dict(queue=torch.randn(16, 10).t()), "queue must be contiguous: it is state"),
    (dict(queue=torch.randn(0, 16)), "queue is empty"),
    (dict(q_s=torch.randn(0, 16), q_t=torch.randn(0, 16)), "q_s is empty"),
    (dict(tau_s=0.0), "tau_s must be a positive"),
    (dict(tau_t=float("nan")), "tau_t must be a positive"),
    (dict(tau_s=True), "tau_s must be a real number, got bool"),
    (dict(reduction="max"), "reduction must be one of"),
    (dict(q_s=[[1.0]]), "q_s must be a torch.Tensor"),
])
def test_bad_input_raises(bad, match):
    args = dict(q_s=torch.randn(4, 16), q_t=torch.randn(4, 16), queue=torch.randn(10, 16), tau_s=0.1, tau_t=0.2,
                reduction="none")
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        shared_bank_contrast(args.pop("q_s"), args.pop("q_t"), args.pop("queue"), **args)


def test_numpy_temperatures():
    q_s, q_t, queue = _inputs(3, 16, 10)
    expected = shared_bank_contrast(q_s, q_t, queue, tau_s=float(np.float32(0.1)), tau_t=0.2, backend="torch")
    got = shared_bank_contrast(q_s, q_t, queue, tau_s=np.float32(0.1), tau_t=np.float64(0.2), backend="torch")
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dim", [256, 520])
def test_wide_embeddings(dim):
    """auto falls back to torch past the fused kernels' widths; an explicit request says why."""
    q_s, q_t, queue = _inputs(2, dim, 20)
    loss = shared_bank_contrast(q_s, q_t, queue, tau_s=TAU_S, tau_t=TAU_T)
    exp_loss, _ = _expected(q_s, q_t, queue, torch.ones(2, device=DEVICE))
    assert_close("loss", loss, exp_loss, 5e-4, 1e-4)
    from rdkernels.backend import BackendUnavailable, available_backends
    if "triton" in available_backends(DEVICE, "shared_bank_contrast"):
        with pytest.raises(BackendUnavailable, match="embedding width"):
            shared_bank_contrast(q_s, q_t, queue, tau_s=TAU_S, tau_t=TAU_T, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("q_dtype,queue_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_gpu_rrd_default_shape(backend, q_dtype, queue_dtype):
    """RRD's CIFAR shape: B = 64, N = 16384, d = 128."""
    from rdkernels.backend import available_backends
    if backend not in available_backends(DEVICE, "shared_bank_contrast"):
        pytest.skip(f"{backend} unavailable")
    q_s, q_t, queue = _inputs(64, 128, 16384, q_dtype, queue_dtype)
    grad = torch.randn(64, device=DEVICE)
    loss = shared_bank_contrast(q_s, q_t, queue, tau_s=TAU_S, tau_t=TAU_T, backend=backend)
    (loss * grad).sum().backward()
    exp_loss, exp_grad = _expected(q_s, q_t, queue, grad)
    assert_close("loss", loss, exp_loss, 5e-4, 1e-4)
    atol, rtol = tolerance(q_dtype)
    assert_close("dq_s", q_s.grad, exp_grad, 50 * atol, max(rtol, 1e-4))


def test_auto_takes_triton_where_only_device_time_counts(monkeypatch):
    """auto on a GPU: the CUDA kernel eagerly (fewer launches), Triton's tensor-core kernel
    while a graph records the call or inside assume_graph_replay; an explicit backend,
    or a width Triton's kernel cannot take, keeps the CUDA kernel."""
    import importlib

    import rdkernels
    sbc = importlib.import_module("rdkernels.ops.shared_bank_contrast")
    monkeypatch.setattr(rdkernels.backend, "resolve", lambda device, op, requested=None: "cuda")
    monkeypatch.setattr(rdkernels.backend, "triton_unavailable_reason", lambda device: None)
    monkeypatch.setattr(sbc, "_shortfall", lambda name, q: "too wide" if name == "triton" and q.shape[1] > 128
                        else None)
    narrow, wide = torch.empty(4, 128), torch.empty(4, 256)
    for recording in (False, True):
        monkeypatch.setattr(sbc, "capturing", lambda t, recording=recording: recording)
        assert sbc._resolve(narrow, None) == ("triton" if recording else "cuda")
        assert sbc._resolve(narrow, "cuda") == "cuda"
        assert sbc._resolve(wide, None) == "cuda"
        with rdkernels.use_backend("cuda"):
            assert sbc._resolve(narrow, None) == "cuda"


def test_capturing_follows_assume_graph_replay_on_gpu_tensors_only():
    import types

    from rdkernels.ops import assume_graph_replay
    from rdkernels.ops._graph_replay import capturing
    on_gpu, on_cpu = types.SimpleNamespace(is_cuda=True), types.SimpleNamespace(is_cuda=False)
    assert not capturing(on_cpu)
    with assume_graph_replay():
        assert capturing(on_gpu) and not capturing(on_cpu)
