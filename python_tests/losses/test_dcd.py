"""DCDLoss (fused) against the reference formulation."""
import pytest
import torch

import rdkernels
from conftest import DEVICE, backends
from helpers import assert_close
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
