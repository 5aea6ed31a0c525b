"""Host reads of device values per call: what the README promises (one sync for an op's
value checks, none with them off). On a GPU each read stalls the step's pipeline, so a
check that grows a second read should fail here, on any machine."""
import pytest
import torch

import rdkernels
from conftest import DEVICE
from rdkernels import ops

# the ways a tensor's value reaches the host
READS = ("tolist", "item", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


@pytest.fixture
def host_reads(monkeypatch):
    """A counter of host reads of device values; ``host_reads(fn)`` calls ``fn`` twice
    (the first call makes what a call keeps: Z, cached marginals) and counts the second."""
    count = [0]
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            count[0] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads(fn):
        fn()
        count[0] = 0
        fn()
        return count[0]
    return reads


def _marginals(P, n, m):
    a, b = torch.rand(P, n, device=DEVICE) + 0.1, torch.rand(P, m, device=DEVICE) + 0.1
    return a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)


def test_sinkhorn_checks_cost_and_marginals_in_one_read(host_reads):
    cost = torch.rand(3, 6, 9, device=DEVICE)
    a, b = _marginals(3, 6, 9)
    assert host_reads(lambda: ops.sinkhorn(cost)) == 1
    assert host_reads(lambda: ops.sinkhorn(cost, a, b)) == 1
    assert host_reads(lambda: ops.sinkhorn(cost, a, b, check_inputs=False)) == 0


@pytest.mark.parametrize("bad,match", [
    ("cost_nan", "cost holds NaN"), ("a_inf", "a holds NaN or inf"), ("b_negative", "b holds negative"),
    ("a_zero", "a has a problem with zero total mass"), ("mass", "equal total mass"),
])
def test_sinkhorn_one_read_still_names_the_first_failed_check(bad, match):
    cost = torch.rand(2, 4, 5, device=DEVICE)
    a, b = _marginals(2, 4, 5)
    if bad == "cost_nan":
        cost[1, 2, 3] = float("nan")
        b[0, 0] = -1.0   # a later check fails too: the first one is reported
    elif bad == "a_inf":
        a[1, 0] = float("inf")
    elif bad == "b_negative":
        b[0, 1] = -0.5
    elif bad == "a_zero":
        a[1] = 0.0
    else:
        b = b * 1.5
    with pytest.raises(ValueError, match=match):
        ops.sinkhorn(cost, a, b)


def test_bank_ops_check_indices_in_one_read(host_reads, monkeypatch):
    q, bank = torch.randn(4, 8, device=DEVICE), torch.randn(20, 8, device=DEVICE)
    idx, z = torch.randint(0, 20, (4, 5), device=DEVICE), torch.tensor([10.0], device=DEVICE)
    for epilogue, kw in (("softmax", {}), ("nce", dict(z=z, n_data=20)), ("scores", {})):
        assert host_reads(lambda: ops.bank_contrast(q, bank, idx, temperature=0.1, epilogue=epilogue, **kw)) == 1
    assert host_reads(lambda: ops.bank_update_(bank, idx[:, 0], q, 0.5)) == 1
    monkeypatch.setenv("RDKERNELS_CHECK_INDICES", "0")
    assert host_reads(lambda: ops.bank_contrast(q, bank, idx, temperature=0.1)) == 0
    assert host_reads(lambda: ops.bank_update_(bank, idx[:, 0], q, 0.5)) == 0


def test_loss_steps(host_reads, monkeypatch):
    f_s, f_t, index = torch.randn(4, 8, device=DEVICE), torch.randn(4, 6, device=DEVICE), torch.arange(4, device=DEVICE)
    crd = rdkernels.CRDLoss(8, 6, 20, feat_dim=4, nce_k=3).to(DEVICE)
    wcord = rdkernels.WCoRDLoss(8, 6, 20, feat_dim=4, nce_k=3).to(DEVICE)
    rrd = rdkernels.RRDLoss(8, 6, feat_dim=4, queue_size=8).to(DEVICE)
    rrd_momentum = rdkernels.RRDMomentumLoss(8, 6, 20, feat_dim=4, nce_k=3).to(DEVICE)
    steps = {
        "crd": (lambda: crd(f_s, f_t, index), 1),          # indices, Z and features in one read
        "wcord": (lambda: wcord(f_s, f_t, index), 1),      # the same read, Sinkhorn's finite cost in it
        "rrd": (lambda: rrd(f_s, f_t), 1),                 # finite embeddings before the queue moves
        "rrd_momentum": (lambda: rrd_momentum(f_s, f_t, index), 1),
        "dcd": (lambda: rdkernels.DCDLoss(8, 6, feat_dim=4).to(DEVICE)(f_s, f_t), 0),
        "kd": (lambda: rdkernels.KDLoss(T=4.0)(f_s, f_s.flip(0)), 0),
    }
    for name, (step, expected) in steps.items():
        assert host_reads(step) == expected, name
    monkeypatch.setenv("RDKERNELS_CHECK_INDICES", "0")
    for name in ("crd", "rrd", "rrd_momentum"):
        assert host_reads(steps[name][0]) == 0, name
    assert host_reads(steps["wcord"][0]) == 1   # Sinkhorn's own cost check, switched by check_costs
    wcord.check_costs = False
    assert host_reads(steps["wcord"][0]) == 0
