"""CUDA graph capture: every op's forward and backward records into a graph and
replays on new values exactly as an eager call computes them.

While a graph is captured an op must not read values on the host: the index
range checks, Sinkhorn's value checks and the tiled Sinkhorn's early-exit poll
step aside (rdkernels._validation.host_reads_allowed). The CPU tests check that
wiring and that Sinkhorn without the poll computes what it computes with it; the
GPU tests capture each op on each fast backend.
"""
import sys

import pytest
import torch

import rdkernels
from conftest import DEVICE, backends
from rdkernels import _validation
from rdkernels.ops import bank_contrast, bank_update_, dcd_loss, shared_bank_contrast, sinkhorn
from rdkernels.ops.sinkhorn import reference as sinkhorn_reference_module


def _unit(*shape, requires_grad=False):
    x = torch.nn.functional.normalize(torch.randn(*shape, device=DEVICE, dtype=torch.float64), dim=-1).float()
    return x.requires_grad_(requires_grad)


# ----------------------------------------------------------------- without a GPU
def test_sinkhorn_without_the_early_exit_poll_matches_the_polled_run(monkeypatch):
    """Captured, the loop runs every iteration and masks finished problems; the
    result must be the one the polled loop stops with."""
    cost = torch.rand(5, 7, 9, dtype=torch.float64)
    polled = sinkhorn(cost, eps=0.1, max_iters=300, tol=1e-9, check_every=5, backend="torch")
    monkeypatch.setattr(sinkhorn_reference_module, "host_reads_allowed", lambda t: False)
    masked = sinkhorn(cost, eps=0.1, max_iters=300, tol=1e-9, check_every=5, backend="torch")
    assert int(polled.n_iters.max()) < 300, "the case must stop early to test anything"
    assert torch.equal(polled.n_iters, masked.n_iters)
    for a, b in ((polled.f, masked.f), (polled.g, masked.g), (polled.cost, masked.cost)):
        assert torch.equal(a, b)


def test_checks_step_aside_when_host_reads_are_not_allowed(monkeypatch):
    """The checks that read values on the host skip themselves during capture."""
    bank = _unit(10, 8)
    bad_idx = torch.tensor([[0, 99]], device=DEVICE)
    with pytest.raises(ValueError, match="idx"):
        _validation.check_index_range("idx", bad_idx, 10)
    nan_cost = torch.full((1, 3, 3), float("nan"), device=DEVICE)
    with pytest.raises(ValueError, match="cost"):
        sinkhorn(nan_cost, backend="torch", max_iters=2)

    monkeypatch.setattr(_validation, "host_reads_allowed", lambda t: False)
    monkeypatch.setattr(sys.modules["rdkernels.ops.sinkhorn"], "host_reads_allowed", lambda t: False)
    _validation.check_index_range("idx", bad_idx, bank.shape[0])  # no host read, no error
    sinkhorn(nan_cost, backend="torch", max_iters=2)


def test_host_reads_are_allowed_on_cpu_outside_compile():
    assert _validation.host_reads_allowed(torch.zeros(1))


# ----------------------------------------------------------------- on a GPU
def _capture_and_compare(make_inputs, fn, atol=1e-6, rtol=1e-5):
    """Capture ``fn(*static)`` (after a side-stream warm-up, as torch's docs
    prescribe), then for fresh inputs: copy them into the static tensors, replay,
    and compare every output with an eager ``fn(*fresh)``."""
    static = make_inputs()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fn(*static)
    for _ in range(2):
        fresh = make_inputs()
        with torch.no_grad():
            for s, f in zip(static, fresh):
                s.copy_(f)
        graph.replay()
        expected = fn(*fresh)
        for i, (got, want) in enumerate(zip(captured, expected)):
            torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"output {i}: {m}")


def _grad_of(loss, leaf):
    return torch.autograd.grad(loss, [leaf])[0]


gpu = pytest.mark.gpu
FAST = [p for p in backends("bank_contrast") if p.id != "torch"]


@gpu
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("strategy", ["gather", "dense"])
@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
def test_bank_contrast_captures(backend, strategy, epilogue):
    B, K, N, d = 16, 256, 2048, 64

    def make():
        return (_unit(B, d, requires_grad=True), _unit(N, d),
                torch.randint(0, N, (B, K + 1), device=DEVICE), torch.tensor([float(N)], device=DEVICE))

    def step(q, bank, idx, z):
        loss = bank_contrast(q, bank, idx, temperature=0.07, epilogue=epilogue, z=z if epilogue == "nce" else None,
                             n_data=N, backend=backend, strategy=strategy)
        return loss.detach(), _grad_of(loss, q)

    _capture_and_compare(make, step)


@gpu
@pytest.mark.parametrize("backend", FAST)
def test_auto_strategy_inside_a_capture_prices_device_time(backend, monkeypatch):
    """At CIFAR's ratios (every bank row sampled ~20 times) eager ``auto`` gathers and
    a capture records dense (a replay pays no host cost); under assume_graph_replay
    the eager calls choose as the capture does. Replays match eager calls."""
    import importlib
    bc = importlib.import_module("rdkernels.ops.bank_contrast")
    chosen = []
    real_choose = bc._choose
    monkeypatch.setattr(bc, "_choose", lambda *a: chosen.append(real_choose(*a)) or chosen[-1])
    B, K, N, d = 64, 16384, 50_000, 128

    def make():
        return (_unit(B, d, requires_grad=True), _unit(N, d),
                torch.randint(0, N, (B, K + 1), device=DEVICE), torch.tensor([float(N)], device=DEVICE))

    def step(q, bank, idx, z):
        loss = bank_contrast(q, bank, idx, temperature=0.07, epilogue="nce", z=z, n_data=N, backend=backend)
        return loss.detach(), _grad_of(loss, q)

    _capture_and_compare(make, step, atol=1e-5)   # 2 warm-ups, the capture, 2 eager checks
    assert chosen == ["gather", "gather", "dense", "gather", "gather"]
    chosen.clear()
    with rdkernels.ops.assume_graph_replay():
        _capture_and_compare(make, step, atol=1e-5)
    assert chosen == ["dense"] * 5


@gpu
@pytest.mark.parametrize("backend", [p for p in backends("bank_update") if p.id != "torch"])
def test_bank_update_captures(backend):
    N, d, B = 512, 32, 24

    def make():
        return _unit(N, d), torch.randperm(N, device=DEVICE)[:B], _unit(B, d)

    def step(bank, index, values):
        bank_update_(bank, index, values, 0.5, backend=backend)
        return (bank,)

    _capture_and_compare(make, step)


@gpu
@pytest.mark.parametrize("backend", [p for p in backends("sinkhorn") if p.id != "torch"])
@pytest.mark.parametrize("n,m,tol", [(64, 48, None), (64, 64, 1e-5), (300, 260, 1e-5)], ids=str)
def test_sinkhorn_captures_including_the_tiled_early_stop(backend, n, m, tol):
    """(300, 260) takes the tiled path, whose eager run polls for convergence and
    whose captured run cannot: both must end at the same potentials."""
    def make():
        return (torch.rand(3, n, m, device=DEVICE, requires_grad=True),)

    def step(cost):
        res = sinkhorn(cost, eps=0.1, max_iters=60, tol=tol, backend=backend)
        return res.f, res.g, res.cost.detach(), res.n_iters, _grad_of(res.cost.sum(), cost)

    _capture_and_compare(make, step, atol=1e-5, rtol=1e-4)


@gpu
@pytest.mark.parametrize("backend", [p for p in backends("shared_bank_contrast") if p.id != "torch"])
def test_shared_bank_contrast_captures(backend):
    B, N, d = 32, 4096, 128

    def make():
        return _unit(B, d, requires_grad=True), _unit(B, d), _unit(N, d)

    def step(q_s, q_t, queue):
        loss = shared_bank_contrast(q_s, q_t, queue, tau_s=0.05, tau_t=0.1, reduction="mean", backend=backend)
        return loss.detach(), _grad_of(loss, q_s)

    _capture_and_compare(make, step)


def _auto_records_triton_after_a_replay_warm_up(monkeypatch, op, module, make, step, atol=1e-6):
    """With the extension built, auto runs ``op``'s CUDA kernel eagerly and Triton's where
    a replay is priced (assume_graph_replay, a capture): warmed up under the switch, the
    capture records the kernels the warm-up compiled and tuned. Replays match eager calls."""
    import importlib
    if rdkernels.backend.cuda_unavailable_reason(DEVICE, op) is not None:
        pytest.skip("auto takes Triton's kernel everywhere without the CUDA extension")
    mod = importlib.import_module(module)
    chosen = []
    real_resolve = mod._resolve
    monkeypatch.setattr(mod, "_resolve", lambda *a: chosen.append(real_resolve(*a)) or chosen[-1])
    step(*make())
    assert chosen == ["cuda"]
    chosen.clear()
    with rdkernels.ops.assume_graph_replay():
        _capture_and_compare(make, step, atol=atol)   # 2 warm-ups, the capture, 2 eager checks
    assert chosen == ["triton"] * 5


@gpu
def test_shared_bank_contrast_auto_records_triton_after_a_replay_warm_up(monkeypatch):
    B, N, d = 64, 16384, 128

    def make():
        return _unit(B, d, requires_grad=True), _unit(B, d), _unit(N, d)

    def step(q_s, q_t, queue):
        loss = shared_bank_contrast(q_s, q_t, queue, tau_s=0.02, tau_t=0.1, reduction="mean")
        return loss.detach(), _grad_of(loss, q_s)

    _auto_records_triton_after_a_replay_warm_up(monkeypatch, "shared_bank_contrast",
                                                "rdkernels.ops.shared_bank_contrast", make, step, atol=1e-5)


def _dcd_inputs(B: int = 64, d: int = 128):
    tau = torch.tensor([0.7], device=DEVICE, requires_grad=True)
    return _unit(B, d, requires_grad=True), _unit(B, d), tau, torch.tensor([0.1], device=DEVICE)


def _dcd_step(backend=None):
    def step(z_s, z_t, tau, bias):
        loss = dcd_loss(z_s, z_t, tau, bias, backend=backend)
        g_z, g_tau = torch.autograd.grad(loss, [z_s, tau])
        return loss.detach(), g_z, g_tau
    return step


@gpu
def test_dcd_auto_records_triton_after_a_replay_warm_up(monkeypatch):
    _auto_records_triton_after_a_replay_warm_up(monkeypatch, "dcd_loss", "rdkernels.ops.dcd", _dcd_inputs,
                                                _dcd_step())


@gpu
@pytest.mark.parametrize("backend", [p for p in backends("dcd_loss") if p.id != "torch"])
def test_dcd_captures(backend):
    _capture_and_compare(_dcd_inputs, _dcd_step(backend))


@gpu
def test_crd_loss_step_captures_after_one_eager_step():
    """A whole CRDLoss step (two directions, bank updates) replays like eager steps;
    capturing before the first eager call fails with a clear message."""
    B, N, K, s_dim, t_dim = 16, 1024, 128, 32, 48
    torch.manual_seed(3)
    eager = rdkernels.CRDLoss(s_dim, t_dim, N, feat_dim=32, nce_k=K).to(DEVICE)
    captured = rdkernels.CRDLoss(s_dim, t_dim, N, feat_dim=32, nce_k=K).to(DEVICE)
    captured.load_state_dict(eager.state_dict())

    fresh = rdkernels.CRDLoss(s_dim, t_dim, N, feat_dim=32, nce_k=K).to(DEVICE)
    args = (torch.randn(B, s_dim, device=DEVICE), torch.randn(B, t_dim, device=DEVICE),
            torch.arange(B, device=DEVICE), torch.randint(0, N, (B, K + 1), device=DEVICE))
    with pytest.raises(RuntimeError, match="outside CUDA graph capture"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            fresh(*args)

    def batch():
        return (torch.randn(B, s_dim, device=DEVICE), torch.randn(B, t_dim, device=DEVICE),
                torch.randperm(N, device=DEVICE)[:B], torch.randint(0, N, (B, K + 1), device=DEVICE))

    def step(module, f_s, f_t, idx, cidx):
        loss = module(f_s, f_t, idx, cidx)
        grads = torch.autograd.grad(loss, [module.embed_s.linear.weight])
        return loss.detach(), grads[0]

    first = batch()
    step(eager, *first)
    step(captured, *first)
    static = [t.clone() for t in batch()]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(captured, *static)
    for _ in range(3):
        fresh = batch()
        for s, f in zip(static, fresh):
            s.copy_(f)
        graph.replay()
        want = step(eager, *fresh)
        for got, exp in zip(out, want):
            torch.testing.assert_close(got, exp, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(captured.contrast.memory_v1, eager.contrast.memory_v1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(captured.contrast.memory_v2, eager.contrast.memory_v2, atol=1e-6, rtol=1e-5)
