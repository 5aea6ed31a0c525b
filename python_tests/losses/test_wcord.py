"""WCoRDLoss against its plain-PyTorch formulation (rdkernels.losses.reference.wcord),
run in float64: loss, gradients and banks over consecutive steps, on every backend."""
import pytest
import torch

from conftest import DEVICE, backends
from helpers import assert_bank_loss_step_matches, assert_close, bank_loss_batch, bank_loss_step
import rdkernels
from rdkernels.losses.reference.wcord import WCoRDLoss as ReferenceWCoRDLoss, sinkhorn_cost

S_DIM, T_DIM, N_DATA, FEAT = 12, 20, 40, 16


def make_pair(backend, **kw):
    args = dict(feat_dim=FEAT, nce_k=9, nce_t=0.1, nce_m=0.5, eps=0.1, iters=30)
    args.update(kw)
    fused = rdkernels.WCoRDLoss(S_DIM, T_DIM, N_DATA, backend=backend, **args).to(DEVICE)
    reference = ReferenceWCoRDLoss(S_DIM, T_DIM, N_DATA, **args)
    reference.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})
    return fused, reference.double().to(DEVICE)


def batch(b, k):
    return bank_loss_batch(b, k, S_DIM, T_DIM, N_DATA, DEVICE)



@pytest.mark.parametrize("backend", backends("sinkhorn"))
@pytest.mark.parametrize("b,cost,gp_weight", [(6, "cosine", 0.0), (1, "cosine", 0.0), (5, "sqeuclidean", 0.5)])
def test_steps_match_reference(backend, b, cost, gp_weight):
    fused, reference = make_pair(backend, cost=cost, gp_weight=gp_weight, lambda_local=2.0)
    for step_no in range(2):
        assert_bank_loss_step_matches(fused, reference, batch(b, 9), f"step {step_no}")
        for bank in ("memory_s", "memory_t"):
            assert_close(f"step {step_no} {bank}", getattr(fused, bank).memory, getattr(reference, bank).memory,
                         atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", backends("sinkhorn"))
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
def test_early_stop_matches_reference(backend, cost):
    """With tol, the local part stops on the marginal error as the reference's loop does:
    loss and gradients over two steps (the local part alone, so the OT term is what is checked)."""
    fused, reference = make_pair(backend, cost=cost, lambda_global=0.0, eps=0.2, iters=200, tol=1e-3)
    for step_no in range(2):
        assert_bank_loss_step_matches(fused, reference, batch(6, 9), f"step {step_no}")


@pytest.mark.parametrize("part", ["global", "local"])
def test_parts_separately(part):
    """Each part alone matches the reference (so neither hides an error in the other)."""
    kw = dict(lambda_global=1.0, lambda_local=0.0) if part == "global" else dict(lambda_global=0.0, lambda_local=1.0)
    fused, reference = make_pair("torch", **kw)
    inputs = batch(7, 9)
    loss, gs, gt, _ = bank_loss_step(fused, *inputs, torch.float32)
    r_loss, r_gs, r_gt, _ = bank_loss_step(reference, *inputs, torch.float64)
    assert_close("loss", loss, r_loss, atol=1e-5, rtol=1e-5)
    assert_close("d f_s", gs, r_gs, atol=1e-6, rtol=1e-4)
    assert loss > 0


def test_local_part_is_entropic_ot_of_the_embeddings():
    fused, _ = make_pair("torch", lambda_global=0.0, eps=0.05, iters=200)
    f_s, f_t, idx, cidx = batch(8, 9)
    loss = fused(f_s, f_t, idx, cidx)
    v_s, v_t = fused.embed_s(f_s), fused.embed_t(f_t)
    C = (1.0 - v_s @ v_t.t()).double()
    # the plain Sinkhorn loop of the reference module, not the op the fused loss calls
    expected = sinkhorn_cost(C.detach(), 0.05, 200)
    assert_close("local", loss, expected, atol=1e-5, rtol=1e-5)
    # and it lies between the best assignment cost and the mean cost
    assert C.min(dim=1).values.mean() - 1e-6 <= loss <= C.mean() + 1e-6


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    n = 32
    x = torch.randn(n, T_DIM, device=DEVICE)
    teacher = torch.nn.Linear(T_DIM, T_DIM).to(DEVICE).requires_grad_(False)
    student = torch.nn.Linear(T_DIM, S_DIM).to(DEVICE)
    crit = rdkernels.WCoRDLoss(S_DIM, T_DIM, n, feat_dim=FEAT, nce_k=15, nce_t=0.1, eps=0.1, iters=30,
                               gp_weight=0.1).to(DEVICE)
    opt = torch.optim.Adam(list(student.parameters()) + list(crit.parameters()), lr=1e-2)
    idx = torch.arange(n, device=DEVICE)
    losses = []
    for _ in range(20):
        loss = crit(student(x), teacher(x), idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_state_dict_keys_match_reference():
    fused, reference = make_pair("torch")
    assert set(fused.state_dict()) == set(reference.state_dict()) == {
        "embed_s.linear.weight", "embed_s.linear.bias", "embed_t.linear.weight", "embed_t.linear.bias",
        "memory_s.memory", "memory_t.memory"}


def test_samples_negatives_when_not_given():
    fused = rdkernels.WCoRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=5).to(DEVICE)
    f_s, f_t, idx, _ = batch(4, 5)
    loss = fused(f_s.requires_grad_(), f_t, idx)
    loss.backward()
    assert torch.isfinite(loss) and f_s.grad is not None


@pytest.mark.parametrize("kw,match", [
    (dict(cost="l1"), "cost must be one of"),
    (dict(eps=0.0), "eps must be a positive"),
    (dict(iters=0), "iters must be a positive int"),
    (dict(gp_weight=-1.0), "gp_weight must be a finite number"),
    (dict(nce_m=2.0), "nce_m must lie in"),
    (dict(tol=-1.0), "tol must be None or a finite number >= 0"),
    (dict(tol=float("nan")), "tol must be None or a finite number >= 0"),
    (dict(bank_dtype=torch.float16), "bank_dtype must be torch.float32 or torch.bfloat16"),
    (dict(backend="gpu"), "backend must be None or one of"),
])
def test_bad_arguments(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rdkernels.WCoRDLoss(S_DIM, T_DIM, N_DATA, **kw)


@pytest.mark.parametrize("which,match", [
    ("f_s", "f_s must be"), ("idx_range", "idx holds values in"), ("idx_len", "idx has size"),
    ("cidx", "contrast_idx must have at least 2 columns"), ("nan", "f_s holds NaN or inf"),
    ("cidx_range", "contrast_idx holds values in")])
def test_bad_inputs_leave_banks_untouched(which, match):
    fused = rdkernels.WCoRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=5).to(DEVICE)
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    f_s, f_t, idx, cidx = batch(4, 5)
    if which == "f_s":
        f_s = torch.randn(4, S_DIM + 1, device=DEVICE)
    elif which == "idx_range":
        idx = idx.clone()
        idx[0] = N_DATA
    elif which == "idx_len":
        idx = idx[:3]
    elif which == "nan":  # refused with the indices' check, before the banks are read or written
        f_s = f_s.clone()
        f_s[1, 2] = float("nan")
    elif which == "cidx_range":
        cidx = cidx.clone()
        cidx[2, 3] = N_DATA
    else:
        cidx = cidx[:, :1].contiguous()
    with pytest.raises((ValueError, TypeError), match=match):
        fused(f_s, f_t, idx, cidx)
    for k, v in fused.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("index_checks", ["1", "0"])
def test_a_non_finite_ot_cost_is_refused_and_leaves_banks_untouched(index_checks, monkeypatch):
    """Finite features, a NaN projection weight: the OT cost is refused in the
    indices' host sync, or, with index checks off, by Sinkhorn's own check
    (check_costs), before either bank moves."""
    monkeypatch.setenv("RDKERNELS_CHECK_INDICES", index_checks)
    fused = rdkernels.WCoRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=5).to(DEVICE)
    with torch.no_grad():
        fused.embed_s.linear.weight[0, 0] = float("nan")
    banks = [fused.memory_s.memory.clone(), fused.memory_t.memory.clone()]
    match = "the batch's OT cost .* holds NaN or inf" if index_checks == "1" else "cost holds NaN or inf"
    with pytest.raises(ValueError, match=match):
        fused(*batch(4, 5))
    assert torch.equal(fused.memory_s.memory, banks[0]) and torch.equal(fused.memory_t.memory, banks[1])


def test_gradient_penalty_runs_in_a_bf16_module():
    """The penalty's features enter in the heads' dtype: a module cast to bf16 trains
    with it on, and its loss is the fp32 module's to bf16 rounding."""
    fused, _ = make_pair("torch", gp_weight=1.0)
    narrow_module, _ = make_pair("torch", gp_weight=1.0)
    narrow_module.load_state_dict(fused.state_dict())   # before the call that updates the banks
    narrow_module = narrow_module.to(torch.bfloat16)
    f_s, f_t, idx, cidx = batch(6, 9)
    wide = fused(f_s, f_t, idx, cidx)
    f_s16 = f_s.detach().to(torch.bfloat16).requires_grad_(True)
    narrow = narrow_module(f_s16, f_t.to(torch.bfloat16), idx, cidx)
    narrow.backward()
    assert torch.isfinite(f_s16.grad).all() and torch.isfinite(narrow_module.embed_s.linear.weight.grad).all()
    assert_close("bf16 loss", narrow.float(), wide.detach(), atol=0.02, rtol=0.01)


def test_gradient_penalty_is_finite_where_the_critic_gradient_vanishes():
    """v_s == v_t (self-distillation through identical heads): both input gradients are
    exactly 0, the penalty is 0, and so must its gradient be, not NaN."""
    fused = rdkernels.WCoRDLoss(S_DIM, S_DIM, N_DATA, feat_dim=FEAT, nce_k=9, gp_weight=1.0, lambda_global=0.0,
                                lambda_local=0.0, backend="torch").to(DEVICE)
    fused.embed_t.load_state_dict(fused.embed_s.state_dict())
    from rdkernels.losses.wcord import _embed_critic_grads

    def vanishing_rows(x):
        gs, gt = _embed_critic_grads(fused.embed_s, fused.embed_t, x, x)
        return int(((gs.pow(2).sum(1) + gt.pow(2).sum(1)) == 0).sum())

    # the case under test needs a row whose critic gradients round to exactly 0 (about
    # four rows in ten do): draw batches until one has such a row
    for _ in range(20):
        f_s, _, idx, cidx = batch(4, 9)
        f_s = f_s[:, :S_DIM].detach()
        if vanishing_rows(f_s):
            break
    assert vanishing_rows(f_s), "no batch with a vanishing critic gradient"
    f_s.requires_grad_(True)
    loss = fused(f_s, f_s.detach(), idx, cidx)
    loss.backward()
    assert loss.item() == 0.0
    for name, p in fused.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_gradient_norm_has_a_gradient_at_zero():
    """Where a row's critic gradients are exactly 0 (rounding gives that at v_s == v_t),
    the penalty's gradient is 0, not sqrt'(0) * 0 = NaN."""
    from rdkernels.losses.wcord import gradient_norm
    gs = torch.zeros(3, 5, dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.6, 0.8]], dtype=torch.float64, requires_grad=True)
    norm = gradient_norm(gs, gt)
    assert_close("norm", norm, torch.tensor([1e-6, 5.0, 1.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.relu(norm - 1.0).pow(2).mean().backward()
    assert torch.isfinite(gs.grad).all() and torch.isfinite(gt.grad).all()
    assert_close("d / d gt", gt.grad, torch.tensor([[0.0, 0.0], [1.6, 32 / 15], [0.0, 0.0]],
                                                   dtype=torch.float64), atol=1e-12, rtol=1e-12)


def test_ot_cost_is_float32_under_autocast():
    """Autocast would run the cost's product in bf16 (an error of ~4e-3 in C, ~0.08
    in C / eps): the cost is computed with autocast off."""
    from rdkernels.losses.wcord import pairwise_cost
    v_s = torch.nn.functional.normalize(torch.randn(16, 128, device=DEVICE), dim=1)
    v_t = torch.nn.functional.normalize(torch.randn(16, 128, device=DEVICE), dim=1)
    exact = 1.0 - v_s.double() @ v_t.double().t()
    with torch.autocast(v_s.device.type, dtype=torch.bfloat16):
        C = pairwise_cost(v_s, v_t, "cosine")
    assert C.dtype == torch.float32
    assert_close("cost under autocast", C.double(), exact, atol=1e-6, rtol=0)
