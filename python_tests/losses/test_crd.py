"""CRDLoss against RepDistiller's formulation (rdkernels.losses.reference.crd),
run in float64: loss, gradients, banks and Z over consecutive steps."""
import types

import pytest
import torch

from conftest import DEVICE, backends
from helpers import assert_bank_loss_step_matches, assert_close, bank_loss_batch, bank_loss_step
import rdkernels
from rdkernels.losses.reference.crd import CRDLoss as ReferenceCRDLoss

S_DIM, T_DIM, N_DATA, FEAT = 24, 40, 60, 32


def make_pair(backend, nce_k=16, bank_dtype=torch.float32, feat=FEAT):
    fused = rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=feat, nce_k=nce_k, nce_t=0.07, nce_m=0.5,
                              backend=backend, bank_dtype=bank_dtype).to(DEVICE)
    reference = ReferenceCRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=feat, nce_k=nce_k, nce_t=0.07, nce_m=0.5)
    reference.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})
    return fused, reference.double().to(DEVICE)


def batch(b, k):
    return bank_loss_batch(b, k, S_DIM, T_DIM, N_DATA, DEVICE)



@pytest.mark.parametrize("backend", backends("bank_contrast"))
@pytest.mark.parametrize("b,k", [(1, 7), (8, 33), (13, 64)])
def test_steps_match_reference(backend, b, k):
    fused, reference = make_pair(backend)
    for step_no in range(3):
        assert_bank_loss_step_matches(fused, reference, batch(b, k), f"step {step_no}", loss_atol=1e-4)
        for buf in ("memory_v1", "memory_v2", "params"):
            assert_close(f"step {step_no} {buf}", getattr(fused.contrast, buf), getattr(reference.contrast, buf),
                         atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_in_place_edits_of_params_take_effect_at_the_next_call(backend):
    """A temperature or momentum schedule written into contrast.params applies from the
    next call, as in the reference, which reads params on every call."""
    fused, reference = make_pair(backend)
    assert_bank_loss_step_matches(fused, reference, batch(8, 33), "step 0", loss_atol=1e-4)
    for step_no, (temperature, momentum) in enumerate([(0.1, 0.9), (0.1, 0.9), (0.05, 0.2)], start=1):
        for module in (fused, reference):
            with torch.no_grad():
                module.contrast.params[1], module.contrast.params[4] = temperature, momentum
        assert_bank_loss_step_matches(fused, reference, batch(8, 33), f"step {step_no}", loss_atol=1e-4)
        for buf in ("memory_v1", "memory_v2", "params"):
            assert_close(f"step {step_no} {buf}", getattr(fused.contrast, buf), getattr(reference.contrast, buf),
                         atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_z_set_once_then_frozen(backend):
    fused, _ = make_pair(backend)
    assert (fused.contrast.params[2:4] == -1).all()
    bank_loss_step(fused, *batch(4, 16), torch.float32)
    z = fused.contrast.params[2:4].clone()
    assert (z > 0).all()
    bank_loss_step(fused, *batch(4, 16), torch.float32)
    assert torch.equal(fused.contrast.params[2:4], z)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_no_gradient_through_z(backend):
    """On the first step (the one that sets Z) the gradients equal those of a
    twin that was given the same Z as a constant beforehand."""
    fused, _ = make_pair(backend)
    initial = _state(fused)
    inputs = batch(6, 20)
    loss, gs, gt, grads = bank_loss_step(fused, *inputs, torch.float32)
    twin, _ = make_pair(backend)
    twin.load_state_dict(initial)
    with torch.no_grad():
        twin.contrast.params[2:4] = fused.contrast.params[2:4]
    twin.load_state_dict(twin.state_dict())  # re-read params on the host
    t_loss, t_gs, t_gt, t_grads = bank_loss_step(twin, *inputs, torch.float32)
    assert_close("loss", loss, t_loss, atol=1e-6, rtol=1e-6)
    assert_close("d f_s", gs, t_gs, atol=1e-7, rtol=1e-5)
    assert_close("d f_t", gt, t_gt, atol=1e-7, rtol=1e-5)
    for name in grads:
        assert_close(f"d {name}", grads[name], t_grads[name], atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_banks_updated_after_scoring(backend):
    """The positives' rows change only after they are scored: the loss equals
    the reference's, whose update follows the scores, and the rows move."""
    fused, reference = make_pair(backend)
    f_s, f_t, idx, cidx = batch(5, 10)
    before = fused.contrast.memory_v1[idx].clone()
    loss, *_ = bank_loss_step(fused, f_s, f_t, idx, cidx, torch.float32)
    r_loss, *_ = bank_loss_step(reference, f_s, f_t, idx, cidx, torch.float64)
    assert_close("loss", loss, r_loss, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(fused.contrast.memory_v1[idx], before)
    norms = fused.contrast.memory_v1[idx].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_sampling_on_device():
    """contrast_idx=None: the negatives are sample_uniform's draw on idx's device, and
    the loss and bank update are those of passing that draw explicitly."""
    fused = rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=50).to(DEVICE)
    twin = rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=50).to(DEVICE)
    twin.load_state_dict(fused.state_dict())
    f_s, f_t, idx, _ = batch(7, 50)
    torch.manual_seed(3)
    loss = fused(f_s, f_t, idx)
    from rdkernels.memory import sample_uniform
    torch.manual_seed(3)
    drawn = sample_uniform(idx, 50, N_DATA)
    assert drawn.shape == (7, 51) and drawn.device == idx.device and torch.equal(drawn[:, 0], idx)
    assert drawn.min() >= 0 and drawn.max() < N_DATA
    assert torch.equal(loss, twin(f_s, f_t, idx, drawn))
    assert torch.equal(fused.contrast.memory_v1, twin.contrast.memory_v1)
    assert torch.equal(fused.contrast.memory_v2, twin.contrast.memory_v2)


def test_accepts_repdistiller_opt():
    opt = types.SimpleNamespace(s_dim=S_DIM, t_dim=T_DIM, feat_dim=FEAT, nce_k=32, nce_t=0.1, nce_m=0.3,
                                n_data=N_DATA)
    crd = rdkernels.CRDLoss(opt)
    assert crd.nce_k == 32 and crd.contrast.params.tolist()[1] == pytest.approx(0.1)
    assert crd.contrast.params.tolist()[4] == pytest.approx(0.3)
    # RepDistiller sets n_data (and s_dim, t_dim) on opt by hand: one forgotten is named
    del opt.n_data, opt.t_dim
    with pytest.raises(TypeError, match=r"CRDLoss\(opt\): opt has no t_dim, n_data; it needs s_dim, t_dim, n_data"):
        rdkernels.CRDLoss(opt)


def test_state_dict_keys_match_repdistiller():
    keys = set(rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT).state_dict())
    assert keys == {"embed_s.linear.weight", "embed_s.linear.bias", "embed_t.linear.weight",
                    "embed_t.linear.bias", "contrast.params", "contrast.memory_v1", "contrast.memory_v2"}


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_resume_from_reference_checkpoint(backend):
    """A checkpoint of the reference module (Z already set) continues exactly."""
    fused, reference = make_pair(backend)
    bank_loss_step(reference, *batch(6, 12), torch.float64)
    fused.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    inputs = batch(6, 12)
    loss, *_ = bank_loss_step(fused, *inputs, torch.float32)
    r_loss, *_ = bank_loss_step(reference, *inputs, torch.float64)
    assert_close("loss after resume", loss, r_loss, atol=1e-4, rtol=1e-5)
    assert_close("Z", fused.contrast.params[2:4], reference.contrast.params[2:4], atol=0, rtol=1e-6)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_bf16_bank_close_to_fp32(backend):
    fused32, _ = make_pair(backend)
    fused16 = rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=16, backend=backend,
                                bank_dtype=torch.bfloat16).to(DEVICE)
    fused16.load_state_dict(fused32.state_dict())
    assert fused16.contrast.memory_v1.dtype == torch.bfloat16
    for _ in range(2):
        inputs = batch(8, 24)
        l32, g32, *_ = bank_loss_step(fused32, *inputs, torch.float32)
        l16, g16, *_ = bank_loss_step(fused16, *inputs, torch.float32)
        assert_close("bf16-bank loss", l16, l32, atol=0.05, rtol=0.02)
        assert_close("bf16-bank grad", g16, g32, atol=0.05 * g32.abs().max().item(), rtol=0.05)


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _with_entry(t, value):
    """A copy of ``t`` with one entry set to ``value``."""
    t = t.clone()
    t.view(-1)[3] = value
    return t


BAD = [
    (lambda f_s, f_t, idx, c: (f_s[:3], f_t, idx, c), ValueError, "f_t has size 5 in dimension 0"),
    (lambda f_s, f_t, idx, c: (f_s[:, :10], f_t, idx, c), ValueError, "f_s must be"),
    (lambda f_s, f_t, idx, c: (f_s, f_t.double(), idx, c), TypeError, "f_t must have dtype"),
    (lambda f_s, f_t, idx, c: (f_s, f_t, idx.float(), c), TypeError, "idx must have dtype"),
    (lambda f_s, f_t, idx, c: (f_s, f_t, idx[:4], c), ValueError, "idx has size 4"),
    (lambda f_s, f_t, idx, c: (f_s, f_t, idx + N_DATA, c), ValueError, "idx holds values in"),
    (lambda f_s, f_t, idx, c: (f_s, f_t, idx, c + N_DATA), ValueError, "contrast_idx holds values in"),
    (lambda f_s, f_t, idx, c: (f_s, f_t, idx, c[:, :1].contiguous()), ValueError, "at least 2 columns"),
    (lambda f_s, f_t, idx, c: (_with_entry(f_s, float("nan")), f_t, idx, c), ValueError, "f_s holds NaN or inf"),
    (lambda f_s, f_t, idx, c: (f_s, _with_entry(f_t, float("inf")), idx, c), ValueError, "f_t holds NaN or inf"),
    (lambda f_s, f_t, idx, c: (f_s.half(), f_t.half(), idx, c), TypeError, "f_s is torch.float16 but the loss's"),
    (lambda f_s, f_t, idx, c: (f_s, f_t, idx, c[:4]), ValueError, "contrast_idx has size 4"),
    (lambda f_s, f_t, idx, c: (f_s, f_t, idx, c.unsqueeze(0)), ValueError, "contrast_idx must have 2 dimensions"),
]


@pytest.mark.parametrize("already_stepped", [False, True])
@pytest.mark.parametrize("mutate,error,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_leaves_banks_and_z(mutate, error, match, already_stepped):
    crd = rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=8).to(DEVICE)
    if already_stepped:
        bank_loss_step(crd, *batch(5, 8), torch.float32)
    before = _state(crd)
    with pytest.raises(error, match=match):
        crd(*mutate(*batch(5, 8)))
    after = crd.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(strategy="Dense"), ValueError, "strategy must be one of"),
    (dict(bank_dtype=torch.float16), TypeError, "bank_dtype must be torch.float32 or torch.bfloat16"),
    (dict(backend="gpu"), ValueError, "backend must be None or one of"),
])
def test_constructor_rejects_options_the_ops_reject(kwargs, error, match):
    with pytest.raises(error, match=match):
        rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, **kwargs)


def test_failing_first_call_leaves_z_unset():
    """Z is committed only once both losses were computed: an op error on the first
    call (here a strategy set after construction) leaves Z, the banks and the host
    cache untouched, and the next call sets Z as a fresh module would."""
    crd = rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=8).to(DEVICE)
    twin = rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=8).to(DEVICE)
    twin.load_state_dict(crd.state_dict())
    before = _state(crd)
    inputs = batch(5, 8)
    crd.strategy = "Dense"
    with pytest.raises(ValueError, match="strategy must be one of"):
        crd(*inputs)
    for key, value in crd.state_dict().items():
        assert torch.equal(value, before[key]), key
    crd.strategy = "auto"
    loss, *_ = bank_loss_step(crd, *inputs, torch.float32)
    expected, *_ = bank_loss_step(twin, *inputs, torch.float32)
    assert_close("loss", loss, expected, 0, 0)
    assert torch.equal(crd.contrast.params, twin.contrast.params) and (crd.contrast.params[2:4] > 0).all()


def test_module_cast_to_bf16_runs():
    """crd.to(bfloat16) makes params bf16 too; Z still reaches the op as fp32."""
    fused32 = rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=16).to(DEVICE)
    fused16 = rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=16).to(DEVICE)
    fused16.load_state_dict(fused32.state_dict())
    fused16.to(torch.bfloat16)
    assert fused16.contrast.params.dtype == torch.bfloat16
    for step_no in range(2):
        inputs = batch(8, 16)
        l32, g32, *_ = bank_loss_step(fused32, *inputs, torch.float32)
        l16, g16, *_ = bank_loss_step(fused16, *inputs, torch.bfloat16)
        assert_close(f"step {step_no} loss", l16, l32, atol=0.1, rtol=0.02)
    z32, z16 = fused32.contrast.params[2:4], fused16.contrast.params[2:4]
    assert_close("Z", z16, z32, atol=0, rtol=5e-2)  # exp(s / T) amplifies bf16 rounding of s and T


@pytest.mark.parametrize("which", ["f_s", "f_t"])
def test_non_finite_first_z_raises_and_stays_unset(which, monkeypatch):
    # without the features' own finiteness check (it shares the index checks' switch),
    # a NaN feature reaches the Z estimate, which refuses it in turn
    crd = rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=8).to(DEVICE)
    before = _state(crd)
    f_s, f_t, idx, cidx = batch(5, 8)
    (f_s if which == "f_s" else f_t)[2, 0] = float("nan")
    with monkeypatch.context() as env:
        env.setenv("RDKERNELS_CHECK_INDICES", "0")
        with pytest.raises(ValueError, match=f"Z_v{1 if which == 'f_s' else 2} once.*got nan: {which}"):
            crd(f_s, f_t, idx, cidx)
    for key, value in crd.state_dict().items():
        assert torch.equal(value, before[key]), key
    bank_loss_step(crd, *batch(5, 8), torch.float32)  # a finite batch then sets Z
    assert torch.isfinite(crd.contrast.params).all() and (crd.contrast.params[2:4] > 0).all()


@pytest.mark.parametrize("strategy", ["gather", "dense"])
def test_strategy_reaches_every_bank_pass(strategy, monkeypatch):
    """CRDLoss(strategy=...) runs both directions and the Z estimates (the first
    step's, and the EMA's every step) with the strategy asked for."""
    import importlib
    module = importlib.import_module("rdkernels.ops.bank_contrast")   # the package, not the op
    ran = []
    real_loss = module._loss
    monkeypatch.setattr(module, "_loss", lambda *args: ran.append(args[-1]) or real_loss(*args))
    crd = rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=8, strategy=strategy,
                            z_momentum=0.9).to(DEVICE)
    for _ in range(2):
        bank_loss_step(crd, *batch(4, 8), torch.float32)
    # per step: two estimates (the first step's Z), two losses, two estimates for the EMA
    assert len(ran) == 10 and set(ran) == {strategy}, ran
