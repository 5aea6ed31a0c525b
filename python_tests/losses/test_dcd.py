"""DCDLoss (fused) against the reference formulation."""
import pytest
import torch

import rdkernels
from conftest import DEVICE, backends
from helpers import assert_close, tolerance
from rdkernels.losses import DCDLoss
from rdkernels.losses.reference.dcd import DCDLoss as ReferenceDCD


@pytest.mark.parametrize("backend", backends("dcd_loss"))
@pytest.mark.parametrize("batch", [1, 6, 33])
def test_matches_reference_over_steps(backend, batch):
    fused = DCDLoss(24, 40, feat_dim=32).to(DEVICE)
    ref = ReferenceDCD(24, 40, feat_dim=32)
    ref.load_state_dict(fused.state_dict())
    ref = ref.double().to(DEVICE)
    opt_f = torch.optim.SGD(fused.parameters(), lr=0.5)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.5)
    with rdkernels.use_backend(backend):
        for step in range(3):
            f_s, f_t = torch.randn(batch, 24, device=DEVICE), torch.randn(batch, 40, device=DEVICE)
            loss, expected = fused(f_s, f_t), ref(f_s.double(), f_t.double())
            opt_f.zero_grad()
            opt_r.zero_grad()
            loss.backward()
            expected.backward()
            assert_close(f"loss step {step}", loss, expected, 1e-5, 1e-5)
            for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
                assert_close(f"{name}.grad step {step}", p.grad, q.grad, 1e-5, 1e-4)
            opt_f.step()
            opt_r.step()


def test_state_dict_keys_and_reference_checkpoint_load():
    loss = DCDLoss(8, 12, feat_dim=16, init_tau=0.5, init_bias=0.25)
    assert set(loss.state_dict()) == {"embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias",
                                      "tau", "bias"}
    assert loss.tau.item() == 0.5 and loss.bias.item() == 0.25
    checkpoint = {k: v for k, v in DCDLoss(8, 12, feat_dim=16).state_dict().items() if k not in ("tau", "bias")}
    checkpoint["params.tau"] = torch.tensor(1.7)
    checkpoint["params.b"] = torch.tensor(-0.3)
    loss.load_state_dict(checkpoint)
    assert loss.tau.item() == pytest.approx(1.7) and loss.bias.item() == pytest.approx(-0.3)


@pytest.mark.parametrize("call,match", [
    (lambda m: m(torch.randn(4, 7), torch.randn(4, 12)), "f_s has 7 features"),
    (lambda m: m(torch.randn(4, 8), torch.randn(5, 12)), "f_t has size 5 in dimension 0"),
    (lambda m: m(torch.randn(0, 8), torch.randn(0, 12)), "empty"),
])
def test_bad_input(call, match):
    loss = DCDLoss(8, 12, feat_dim=16)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    with pytest.raises((ValueError, TypeError), match=match):
        call(loss)
    assert all(torch.equal(v, before[k]) for k, v in loss.state_dict().items())


def test_autocast_dtypes():
    """Under CPU autocast the projections give bf16 embeddings; the loss stays fp32."""
    loss = DCDLoss(8, 12, feat_dim=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(torch.randn(5, 8), torch.randn(5, 12))
    out.backward()
    assert out.dtype == torch.float32 and loss.tau.grad is not None and loss.embed_t.weight.grad is not None


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=-1.0), "alpha must be a finite number >= 0"),
    (dict(alpha=float("inf")), "alpha must be a finite number >= 0"),
    (dict(max_scale=0.0), "max_scale must be a positive number"),
    (dict(max_scale=float("nan")), "max_scale must be a positive number"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DCDLoss(8, 12, feat_dim=16, **kwargs)


@pytest.mark.parametrize("backend", backends("dcd_loss"))
def test_module_cast_to_bf16_matches_reference(backend):
    """.to(bfloat16) makes tau and bias bf16; they reach the op as fp32 and get gradients."""
    fused = DCDLoss(24, 40, feat_dim=32).to(DEVICE).to(torch.bfloat16)
    ref = ReferenceDCD(24, 40, feat_dim=32)
    ref.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})
    ref = ref.double().to(DEVICE)
    f_s, f_t = torch.randn(6, 24, device=DEVICE), torch.randn(6, 40, device=DEVICE)
    with rdkernels.use_backend(backend):
        loss = fused(f_s.bfloat16(), f_t.bfloat16())
    expected = ref(f_s.bfloat16().double(), f_t.bfloat16().double())
    loss.backward()
    expected.backward()
    atol, rtol = tolerance(torch.bfloat16)
    assert_close("loss", loss, expected, atol, rtol)
    for name in ("tau", "bias"):
        grad = getattr(fused, name).grad
        assert grad is not None and grad.dtype == torch.bfloat16
        assert_close(f"{name}.grad", grad, getattr(ref, name).grad, atol, 4 * rtol)


def _reference_fixed_mode_loss(dcd, f_s, f_t, multiplier, alpha=0.5):
    """The reference's trainable=False forward: the logits' scale is params.tau itself."""
    z_s = torch.nn.functional.normalize(dcd.embed_s(f_s), dim=1)
    z_t = torch.nn.functional.normalize(dcd.embed_t(f_t), dim=1)
    logits = z_s @ z_t.t() * multiplier
    labels = torch.arange(f_s.shape[0], device=f_s.device)
    kl = torch.nn.functional.kl_div(logits.log_softmax(1), logits.softmax(0).t(), reduction="batchmean")
    return torch.nn.functional.cross_entropy(logits, labels) + alpha * kl


def test_fixed_mode_reference_checkpoint_conversion():
    """The docstring's recipe for a reference checkpoint saved with trainable=False
    (params.tau = nce_t used as the scale) reproduces that mode's loss."""
    source = DCDLoss(8, 12, feat_dim=16)
    state = {k: v for k, v in source.state_dict().items() if k not in ("tau", "bias")}
    state["params.tau"], state["params.b"] = torch.tensor(0.07), torch.tensor(0.0)
    dcd = DCDLoss(8, 12, feat_dim=16)
    state["params.tau"] = state["params.tau"].log()
    dcd.load_state_dict(state)
    dcd.tau.requires_grad_(False)
    dcd.bias.requires_grad_(False)
    f_s, f_t = torch.randn(5, 8), torch.randn(5, 12)
    expected = _reference_fixed_mode_loss(source, f_s, f_t, 0.07)
    assert_close("loss", dcd(f_s, f_t), expected, 1e-5, 1e-5)
