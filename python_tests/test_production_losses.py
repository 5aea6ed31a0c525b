"""Production concerns for the losses other than CRD (test_production.py):
torch.compile(fullgraph=True), autocast, determinism, checkpoints, and opcheck
of every custom op on every backend that runs here."""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from conftest import DEVICE, backends
from helpers import assert_close, unit_rows
import rdkernels

S_DIM, T_DIM, N_DATA, FEAT, K, QUEUE, CLASSES = 12, 20, 40, 16, 8, 24, 10


# ------------------------------------------------------------------ the losses

def _bank_batch(b, seed):
    g = torch.Generator().manual_seed(seed)
    f_s, f_t = torch.randn(b, S_DIM, generator=g), torch.randn(b, T_DIM, generator=g)
    idx = torch.randperm(N_DATA, generator=g)[:b]
    cidx = torch.randint(0, N_DATA, (b, K + 1), generator=g)
    cidx[:, 0] = idx
    return f_s, f_t, idx, cidx


def _small_bank_batch(b, seed):
    """Features scaled so the gradient-penalty term is active (||grad critic|| > 1)."""
    f_s, f_t, idx, cidx = _bank_batch(b, seed)
    return 0.1 * f_s, 0.1 * f_t, idx, cidx


def _pair_batch(b, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, S_DIM, generator=g), torch.randn(b, T_DIM, generator=g)


def _logit_batch(b, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, CLASSES, generator=g), torch.randn(b, CLASSES, generator=g)


# name: (constructor, batch maker, the CUDA op name the loss's backends are listed by)
LOSSES = {
    "wcord": (lambda: rdkernels.WCoRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=K, iters=10),
              _bank_batch, "bank_contrast"),
    "wcord_gp": (lambda: rdkernels.WCoRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=K, iters=10, gp_weight=1.0),
                 _small_bank_batch, "bank_contrast"),
    "dcd": (lambda: rdkernels.DCDLoss(S_DIM, T_DIM, feat_dim=FEAT), _pair_batch, "dcd_loss"),
    "rrd_before": (lambda: rdkernels.RRDLoss(S_DIM, T_DIM, feat_dim=FEAT, queue_size=QUEUE, tau_s=0.1),
                   _pair_batch, "shared_bank_contrast"),
    "rrd_after": (lambda: rdkernels.RRDLoss(S_DIM, T_DIM, feat_dim=FEAT, queue_size=QUEUE, tau_s=0.1,
                                            enqueue="after"), _pair_batch, "shared_bank_contrast"),
    "rrd_momentum": (lambda: rdkernels.RRDMomentumLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=K, tau_s=0.5,
                                                       tau_t=1.0), _bank_batch, "bank_contrast"),
    "kd": (lambda: rdkernels.KDLoss(T=4.0), _logit_batch, None),
}
STATEFUL = [name for name in LOSSES if name != "kd"]  # KD has no parameters or buffers


def make(name):
    torch.manual_seed(1)
    return LOSSES[name][0]().to(DEVICE)


def batch(name, seed, b=4):
    return [t.to(DEVICE) for t in LOSSES[name][1](b, seed)]


def loss_backend_params(names):
    """(loss, backend) pairs: each loss over the backends of the op it is built on."""
    params = []
    for name in names:
        op = LOSSES[name][2]
        for p in (backends(op) if op else [pytest.param("torch", id="torch")]):
            params.append(pytest.param(name, *p.values, marks=p.marks, id=f"{name}-{p.id}"))
    return params


def step(module, inputs, fn=None):
    """One training step: (loss, d first input, parameter grads, state after the step)."""
    first = inputs[0].clone().requires_grad_()
    module.zero_grad()
    loss = (module if fn is None else fn)(first, *inputs[1:])
    loss.backward()
    params = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    state = {k: v.clone() for k, v in module.state_dict().items()}
    return loss.detach(), first.grad, params, state


def assert_steps_equal(a, b):
    (la, ga, pa, sa), (lb, gb, pb, sb) = a, b
    assert torch.equal(la, lb), f"loss {la.item()} != {lb.item()}"
    assert torch.equal(ga, gb), "input gradient differs"
    assert pa.keys() == pb.keys() and all(torch.equal(pa[n], pb[n]) for n in pa), "parameter gradient differs"
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"state {key} differs"


# ---------------------------------------------------------------- torch.compile

@pytest.mark.parametrize("name,backend", loss_backend_params(LOSSES))
def test_compile_fullgraph_matches_eager(name, backend):
    """fullgraph=True: a graph break raises. One frame compiled, no recompile on step 2."""
    torch._dynamo.reset()
    rdkernels.set_backend(backend)
    eager, compiled_module = make(name), make(name)
    step(eager, batch(name, 0))
    step(compiled_module, batch(name, 0))  # RRDMomentum sets Z eagerly on the first step
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_module, fullgraph=True, backend=counter)
    for seed in (1, 2):
        e_loss, e_grad, e_params, e_state = step(eager, batch(name, seed))
        c_loss, c_grad, c_params, c_state = step(compiled_module, batch(name, seed), fn=compiled)
        assert_close("loss", c_loss, e_loss, atol=1e-6, rtol=1e-6)
        assert_close("d input", c_grad, e_grad, atol=1e-7, rtol=1e-5)
        assert c_params.keys() == e_params.keys()
        for key in e_params:
            assert_close(key, c_params[key], e_params[key], atol=1e-7, rtol=1e-5)
        for key in e_state:
            assert_close(key, c_state[key], e_state[key], atol=1e-7, rtol=1e-5)
    assert counter.frame_count == 1


# the losses that keep RepDistiller's params = [K, T, Z_s, Z_t, momentum] buffer, by
# how to reach it
WITH_PARAMS = {
    "crd": (lambda **kw: rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=K, **kw),
            lambda module: module.contrast),
    "rrd_momentum": (lambda **kw: rdkernels.RRDMomentumLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=K, **kw),
                     lambda module: module),
}


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_compiled_loss_takes_reread_params_and_loaded_checkpoints(name):
    """A compiled call cannot see an in-place write to params (eager calls see its
    version counter): reread_params() hands a schedule's T and momentum to it, and
    load_state_dict a checkpoint's, each with one recompile."""
    torch._dynamo.reset()
    build, owner = WITH_PARAMS[name]

    def make_one(**kw):
        torch.manual_seed(1)
        return build(**kw).to(DEVICE)
    eager, module = make_one(), make_one()
    for m in (eager, module):
        step(m, _to_device(_bank_batch(4, 0)))
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    other = make_one(nce_t=0.2, nce_m=0.8)   # a checkpoint with other T and momentum
    step(other, _to_device(_bank_batch(4, 9)))
    checkpoint = other.state_dict()

    def both(seed):
        expected = step(eager, _to_device(_bank_batch(4, seed)))
        assert_steps_equal(step(module, _to_device(_bank_batch(4, seed)), fn=compiled), expected)
    both(1)
    for m in (eager, module):   # a schedule, written into params in place
        with torch.no_grad():
            owner(m).params[1], owner(m).params[4] = 0.1, 0.9
    module.reread_params()
    both(2)
    for m in (eager, module):
        m.load_state_dict(checkpoint)
    both(3)


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_compiled_loss_takes_a_cast_modules_params(name):
    """.to(bfloat16) rounds params (T = 0.07 becomes 0.0698...), which an eager call
    reads; the cast re-reads them (nn.Module._apply), so a compiled call takes the
    rounded T as well, without reread_params()."""
    torch._dynamo.reset()
    build = WITH_PARAMS[name][0]

    def make_one():
        torch.manual_seed(1)
        return build().to(DEVICE)
    eager, module = make_one(), make_one()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for m, fn in ((eager, None), (module, compiled)):
        step(m, _to_device(_bank_batch(4, 0)), fn=fn)
        m.to(torch.bfloat16)
    inputs = [t.to(torch.bfloat16) if t.is_floating_point() else t for t in _to_device(_bank_batch(4, 1))]
    assert_steps_equal(step(module, inputs, fn=compiled), step(eager, inputs))


def test_crd_compiled_from_an_earlier_versions_pickle():
    """A whole-module pickle of a version without the traced first call's (T, momentum)
    takes them from params when it loads."""
    import io
    torch._dynamo.reset()
    torch.manual_seed(1)
    eager = WITH_PARAMS["crd"][0](nce_t=0.13).to(DEVICE)
    old = WITH_PARAMS["crd"][0]().to(DEVICE)
    old.load_state_dict(eager.state_dict())
    del old.contrast.__dict__["_traced_first_params"]
    buffer = io.BytesIO()
    torch.save(old, buffer)
    buffer.seek(0)
    module = torch.load(buffer, weights_only=False)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    inputs = _to_device(_bank_batch(4, 0))
    assert_steps_equal(step(module, inputs, fn=compiled), step(eager, inputs))


def test_crd_compiled_first_call_that_fails_leaves_z_unset():
    """Under inductor the Z write may be ordered before the loss op that refuses a NaN
    Z raises; a non-finite estimate is not written, so the next batch sets Z. (The
    features' own finiteness check is eager only: under compile the NaN reaches Z.)"""
    torch._dynamo.reset()
    crd = WITH_PARAMS["crd"][0]().to(DEVICE)
    compiled = torch.compile(crd, fullgraph=True)
    f_s, f_t, idx, cidx = _to_device(_bank_batch(4, 0))
    f_s[1, 0] = float("nan")
    with pytest.raises(ValueError, match="z must be positive and finite"):
        compiled(f_s, f_t, idx, cidx)
    assert (crd.contrast.params[2:4] == -1).all()
    compiled(*_to_device(_bank_batch(4, 1)))
    assert torch.isfinite(crd.contrast.params).all() and (crd.contrast.params[2:4] > 0).all()


def test_a_capture_after_compiled_calls_takes_the_values_they_kept(monkeypatch):
    """A compiled call keeps (T, momentum) without a version stamp, so an eager call
    re-reads them; inside a CUDA graph capture, which cannot read, it takes the kept ones."""
    from rdkernels.losses import _host_copy
    torch._dynamo.reset()
    crd = WITH_PARAMS["crd"][0]().to(DEVICE)
    compiled = torch.compile(crd, fullgraph=True, backend="aot_eager")
    for seed in range(2):
        compiled(*_to_device(_bank_batch(4, seed)))
    params = crd.contrast.params
    assert crd.contrast._host_params.get(params) is None   # eagerly: read again
    monkeypatch.setattr(_host_copy, "_capturing", lambda tensor: True)
    assert crd.contrast._host_params.get(params) == tuple(params[[1, 4]].tolist())


def _to_device(tensors):
    return [t.to(DEVICE) for t in tensors]


def test_rrd_momentum_runs_on_meta_tensors():
    """Shape inference on the meta device: no value can be read there, so the
    constructor's T and momentum stand in (params holds them)."""
    with torch.device("meta"):
        module = WITH_PARAMS["rrd_momentum"][0]()
        loss = module(*_bank_batch(4, 0)[:3])
    assert loss.shape == () and loss.device.type == "meta"


def test_whole_module_pickles_of_the_earlier_hook_name_still_load():
    """torch.save(module) pickles the load_state_dict post-hook by its qualified name;
    pickles made before the hook's rename name it _forget_host_state."""
    from rdkernels.losses.crd import ContrastMemory
    from rdkernels.losses.rrd import RRDMomentumLoss
    for cls in (ContrastMemory, RRDMomentumLoss):
        assert cls._forget_host_state is cls._after_load


@pytest.mark.parametrize("hyper", [{}, dict(nce_t=0.13, nce_m=0.9)], ids=["default", "t-inexact-in-fp32"])
@pytest.mark.parametrize("checkpoint", [False, True], ids=["fresh", "loaded-before-first-step"])
@pytest.mark.parametrize("name", WITH_PARAMS)
def test_compiled_from_the_first_call_matches_eager(name, checkpoint, hyper):
    """Compiled before any eager step (fullgraph=True), the loss sets Z on the device
    from its first batch, as the eager first call does on the host. CRD's next call
    recompiles once without that estimate (two gather passes); RRD-momentum's estimate
    is a mean of the scores it computes anyway, so it keeps one graph. A checkpoint saved before its first step
    (Z unset) with other T and momentum hands them to the first traced call. T and
    momentum as params holds them (0.13 is 0.12999999523 in float32), as eager reads them."""
    torch._dynamo.reset()
    build = WITH_PARAMS[name][0]

    def make_one():
        torch.manual_seed(1)
        with torch.device(DEVICE):   # no .to(), whose cast re-reads params (see the test below)
            module = build(**hyper)
        if checkpoint:
            torch.manual_seed(2)
            module.load_state_dict(build(nce_t=0.2, nce_m=0.8).to(DEVICE).state_dict())
        return module
    eager, module = make_one(), make_one()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, fullgraph=True, backend=counter)
    for seed in range(3):
        expected = step(eager, _to_device(_bank_batch(4, seed)))
        assert_steps_equal(step(module, _to_device(_bank_batch(4, seed)), fn=compiled), expected)
    assert counter.frame_count == {"crd": 2, "rrd_momentum": 1}[name]
    assert step(module, _to_device(_bank_batch(4, 3)))[0] == step(eager, _to_device(_bank_batch(4, 3)))[0]


@pytest.mark.parametrize("name", ["wcord", "rrd_momentum"])
def test_compile_samples_negatives_in_graph(name):
    """contrast_idx=None: the negatives are drawn inside the compiled graph, from
    the same generator and in the same order as eagerly."""
    torch._dynamo.reset()
    eager, compiled_module = make(name), make(name)
    f_s, f_t, idx, _ = batch(name, 0)
    for module in (eager, compiled_module):
        torch.manual_seed(4)  # the same negatives for both, so the same Z
        step(module, (f_s, f_t, idx))
    compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
    f_s, f_t, idx, _ = batch(name, 1)
    torch.manual_seed(5)
    expected = step(eager, (f_s, f_t, idx))
    torch.manual_seed(5)
    got = step(compiled_module, (f_s, f_t, idx), fn=compiled)
    assert_close("loss", got[0], expected[0], atol=1e-6, rtol=1e-6)
    for key in expected[3]:
        assert_close(key, got[3][key], expected[3][key], atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", ["wcord", "rrd_momentum"])
def test_compiled_loss_still_checks_indices(name):
    """Under torch.compile the module's range check is skipped; the ops check inside
    their opaque bodies, before any bank changes."""
    torch._dynamo.reset()
    module = make(name)
    step(module, batch(name, 0))
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    f_s, f_t, idx, cidx = batch(name, 1)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match="holds values in"):
        compiled(f_s, f_t, idx, cidx + N_DATA)
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())


def test_compiled_wcord_still_checks_costs():
    """The Sinkhorn finiteness check moves into the op's body under torch.compile."""
    torch._dynamo.reset()
    module = rdkernels.WCoRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=K, iters=10,
                                 lambda_global=0.0).to(DEVICE)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    f_s, f_t, idx, cidx = batch("wcord", 0)
    f_s[0, 0] = float("nan")
    with pytest.raises(ValueError, match="cost holds NaN"):
        compiled(f_s, f_t, idx, cidx)


# -------------------------------------------------------------------------- AMP

@pytest.mark.parametrize("name", list(LOSSES))
def test_autocast_bf16_close_to_fp32(name):
    """bf16 activations under autocast (the heads' matmuls; KD, which has none, gets the
    bf16 logits an autocast network gives); the losses come back fp32, finite, close to fp32."""
    fp32, amp = make(name), make(name)
    for seed in range(2):
        inputs = batch(name, seed)
        l32, g32, _, _ = step(fp32, inputs)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            l16, g16, p16, _ = step(amp, [t.bfloat16() for t in inputs] if name == "kd" else inputs)
        assert l16.dtype == torch.float32 and torch.isfinite(l16)
        assert (len(p16) > 0) == (name != "kd") and all(torch.isfinite(g).all() for g in p16.values())
        if name == "kd":
            assert g16.dtype == torch.bfloat16 and not torch.equal(l16, l32)
        assert_close("autocast loss", l16, l32, atol=0.05, rtol=0.02)
        assert_close("autocast grad", g16, g32, atol=0.05 * g32.abs().max().item(), rtol=0.1)


# ------------------------------------------------------------------ determinism

@pytest.mark.parametrize("name,backend", loss_backend_params(LOSSES))
def test_bit_identical_reruns(name, backend):
    rdkernels.set_backend(backend)
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            module = make(name)
            runs.append([step(module, batch(name, seed)) for seed in range(2)])
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(*runs):
        assert_steps_equal(a, b)


# ------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("name", STATEFUL)
def test_checkpoint_round_trip_continues_exactly(name, tmp_path):
    """Banks, queue and pointer, Z and parameters round-trip; the next step is bit-identical."""
    module = make(name)
    step(module, batch(name, 0))
    torch.save(module.state_dict(), tmp_path / "loss.pt")
    expected = step(module, batch(name, 1))
    torch.manual_seed(123)  # a different initialisation, replaced by the checkpoint
    restored = LOSSES[name][0]().to(DEVICE)
    restored.load_state_dict(torch.load(tmp_path / "loss.pt"))
    assert_steps_equal(step(restored, batch(name, 1)), expected)


# ---------------------------------------------------------------------- opcheck
# test_production.py checks the gather ops on the torch backend, the op files the
# others on the torch backend; here every op runs every check on every backend.

OPCHECK_BACKENDS = {
    "bank_contrast_loss": "bank_contrast", "bank_scores": "bank_contrast", "bank_scores_backward": "bank_contrast",
    "bank_update_": "bank_update", "sinkhorn": "sinkhorn", "shared_bank_contrast": "shared_bank_contrast",
    "dcd_loss": "dcd_loss", "l2_normalize": "l2_normalize", "l2_normalize_backward": "l2_normalize",
    "sinkhorn_cost_grad": "sinkhorn", "fifo_enqueue_": "fifo_enqueue_", "kd_loss": "kd_loss",
}


def test_opcheck_covers_every_custom_op():
    """A new rdkernels:: op must join OPCHECK_BACKENDS (and _opcheck_args)."""
    import rdkernels.ops  # noqa: F401 (registers every op)
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("rdkernels::")}
    assert registered == set(OPCHECK_BACKENDS) == set(_opcheck_args())


def _opcheck_args():
    from rdkernels.ops.bank_contrast import _loss_op, _scores_backward_op, _scores_op
    from rdkernels.ops.bank_update import _bank_update_op
    from rdkernels.ops.dcd import _dcd_op
    from rdkernels.ops.shared_bank_contrast import _shared_bank_contrast_op
    from rdkernels.ops.l2_normalize import _l2_normalize_backward_op, _l2_normalize_op
    from rdkernels.ops.sinkhorn import _cost_grad_op, _sinkhorn_op
    from rdkernels.ops.fifo_enqueue import _fifo_enqueue_op
    from rdkernels.ops.kd_loss import _kd_loss_op

    q = unit_rows(4, 16, device=DEVICE).requires_grad_()
    bank, idx = unit_rows(20, 16, device=DEVICE), torch.randint(0, 20, (4, 6), device=DEVICE)
    z = torch.tensor([30.0], device=DEVICE)
    cost = torch.rand(2, 3, 4, device=DEVICE, requires_grad=True)
    a = torch.full((2, 3), 1 / 3, device=DEVICE)
    b = torch.full((2, 4), 1 / 4, device=DEVICE)
    tau = torch.tensor(0.5, device=DEVICE, requires_grad=True)
    bias = torch.tensor(0.1, device=DEVICE, requires_grad=True)
    return {
        "bank_contrast_loss": [(_loss_op, (q, bank, idx, z, 0.1, ep, 20, strategy))
                               for ep in ("nce", "softmax") for strategy in ("gather", "dense")],
        "bank_scores": [(_scores_op, (q, bank, idx, 0.1, strategy)) for strategy in ("gather", "dense")],
        "bank_scores_backward": [(_scores_backward_op, (torch.randn(4, 6, device=DEVICE), q.detach(), bank, idx,
                                                        0.1, strategy)) for strategy in ("gather", "dense")],
        "bank_update_": [(_bank_update_op, (bank.clone(), idx[:, 0].clone(), torch.randn(4, 16, device=DEVICE), 0.5))],
        "sinkhorn": [(_sinkhorn_op, (cost, a, b, 0.1, 5, -1.0, 10, False)),
                     (_sinkhorn_op, (cost, a, b, 0.1, 5, 1e-3, 2, True, 2))],  # + early stop, checks
        "shared_bank_contrast": [(_shared_bank_contrast_op, (q.detach().requires_grad_(g),
                                                             unit_rows(4, 16, device=DEVICE), bank, 0.1, 0.2, g))
                                 for g in (True, False)],
        "dcd_loss": [(_dcd_op, (q, unit_rows(4, 16, device=DEVICE), tau, bias, 0.5, 10.0, True))],
        "l2_normalize": [(_l2_normalize_op, (q, eps, False)) for eps in (0.0, 1e-12)],
        "l2_normalize_backward": [(_l2_normalize_backward_op, (torch.randn(4, 16, device=DEVICE), q.detach(),
                                                               q.detach().norm(dim=1), 1e-12))],
        "sinkhorn_cost_grad": [(_cost_grad_op, (cost.detach(), a, b, 0.1 * torch.randn(2, 3, device=DEVICE),
                                                0.1 * torch.randn(2, 4, device=DEVICE), 0.1,
                                                torch.rand(2, device=DEVICE)))],
        "fifo_enqueue_": [(_fifo_enqueue_op, (unit_rows(10, 16, device=DEVICE), torch.tensor([7], device=DEVICE),
                                              unit_rows(5, 16, device=DEVICE)))],
        "kd_loss": [(_kd_loss_op, (torch.randn(4, 10, device=DEVICE, requires_grad=g_s),
                                   torch.randn(4, 10, device=DEVICE, requires_grad=g_t), 4.0, g_s or g_t, g_t))
                    for g_s, g_t in ((True, False), (True, True), (False, False))],
    }


def _with_backend(op, args, backend):
    """Insert the backend (and, where the schema has them, check flags) at their schema positions."""
    names = [arg.name for arg in op._opoverload._schema.arguments]
    values = list(args)
    for i, n in enumerate(names):
        if n == "backend":
            values.insert(i, backend)
        elif n == "check_indices":
            values.insert(i, True)
    unset = [arg.name for arg in op._opoverload._schema.arguments[len(values):] if not arg.has_default_value()]
    assert not unset, f"this test does not know arguments {unset}"
    return tuple(values)


@pytest.mark.parametrize("op_name,backend", [
    pytest.param(op, *p.values, marks=p.marks, id=f"{op}-{p.id}")
    for op, cuda_name in OPCHECK_BACKENDS.items() for p in backends(cuda_name)])
def test_opcheck_every_op(op_name, backend):
    for op, args in _opcheck_args()[op_name]:
        torch.library.opcheck(op, _with_backend(op, args, backend))


def test_wcord_closed_form_critic_gradient_matches_autograd():
    """The gradient penalty's closed-form input gradient (what lets it compile) is
    autograd's, and so is its second-order gradient to the heads."""
    from rdkernels.losses._embed import Embed
    from rdkernels.losses.wcord import _embed_critic_grads, critic_gradient_penalty

    torch.manual_seed(0)
    es, et = Embed(S_DIM, FEAT).double(), Embed(T_DIM, FEAT).double()
    xs, xt = 0.1 * torch.randn(5, S_DIM, dtype=torch.float64), 0.1 * torch.randn(5, T_DIM, dtype=torch.float64)
    gs, gt = _embed_critic_grads(es, et, xs, xt)
    x1, x2 = xs.clone().requires_grad_(), xt.clone().requires_grad_()
    critic = (es(x1) * et(x2)).sum()
    a1, a2 = torch.autograd.grad(critic, (x1, x2), create_graph=True)
    assert_close("d critic / d f_s", gs, a1, atol=1e-14, rtol=1e-12)
    assert_close("d critic / d f_t", gt, a2, atol=1e-14, rtol=1e-12)
    norm = (a1.pow(2).sum(1) + a2.pow(2).sum(1)).sqrt()
    expected = torch.autograd.grad(torch.relu(norm - 1).pow(2).mean(), es.linear.weight)[0]
    penalty = critic_gradient_penalty(es.float(), et.float(), xs, xt)
    assert penalty > 0  # the test is only meaningful with the penalty active
    got = torch.autograd.grad(penalty, es.linear.weight)[0]
    assert_close("d penalty / d W_s", got, expected, atol=1e-6, rtol=1e-4)
