"""Production concerns: torch.compile, AMP, multi-process bank sync,
determinism, EMA of Z, checkpoints."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import DEVICE, backends
from helpers import assert_close, unit_rows
import rdkernels
from rdkernels.ops import bank_contrast, estimate_nce_z

S_DIM, T_DIM, N_DATA, FEAT, K = 24, 40, 60, 32, 16


def make_crd(backend="torch", **kw):
    torch.manual_seed(1)
    return rdkernels.CRDLoss(S_DIM, T_DIM, N_DATA, feat_dim=FEAT, nce_k=K, backend=backend, **kw).to(DEVICE)


def make_batch(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    f_s, f_t = torch.randn(b, S_DIM, generator=g), torch.randn(b, T_DIM, generator=g)
    idx = torch.randperm(N_DATA, generator=g)[:b]
    cidx = torch.randint(0, N_DATA, (b, K + 1), generator=g)
    cidx[:, 0] = idx
    return [t.to(DEVICE) for t in (f_s, f_t, idx, cidx)]


def train_step(crd, batch, fn=None):
    f_s, f_t, idx, cidx = batch
    f_s = f_s.clone().requires_grad_()
    crd.zero_grad()
    loss = (crd if fn is None else fn)(f_s, f_t, idx, cidx)
    loss.backward()
    return loss.detach(), f_s.grad, {n: p.grad.clone() for n, p in crd.named_parameters()}


# ---------------------------------------------------------------- torch.compile

# (torch.compile options, tolerance, the banks' tolerance): aot_eager runs eager's
# kernels, so the banks come out bit for bit; inductor fuses the Embed heads around
# the opaque ops, so results agree to float rounding; on a GPU also its CUDA-graph mode
COMPILE_SETTINGS = [
    pytest.param(dict(backend="aot_eager"), 1e-6, 0.0, id="aot_eager"),
    pytest.param(dict(), 1e-5, 1e-6, id="inductor"),
    pytest.param(dict(mode="reduce-overhead"), 1e-5, 1e-6, id="inductor-reduce-overhead", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("options,tol,bank_tol", COMPILE_SETTINGS)
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_compile_fullgraph_matches_eager(backend, options, tol, bank_tol):
    """The ops are custom ops (opaque to the compiler), so every backend compiles,
    the Triton kernels under the interpreter included."""
    eager, compiled_module = make_crd(backend), make_crd(backend)
    train_step(eager, make_batch(seed=0))
    train_step(compiled_module, make_batch(seed=0))  # Z is set eagerly on the first step
    compiled = torch.compile(compiled_module, fullgraph=True, **options)
    for seed in (1, 2, 3):
        if options.get("mode") == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        e_loss, e_grad, e_params = train_step(eager, make_batch(seed=seed))
        c_loss, c_grad, c_params = train_step(compiled_module, make_batch(seed=seed), fn=compiled)
        assert_close("loss", c_loss, e_loss, atol=tol, rtol=tol)
        assert_close("d f_s", c_grad, e_grad, atol=tol / 10, rtol=10 * tol)
        for name in e_params:
            assert_close(name, c_params[name], e_params[name], atol=tol / 10, rtol=10 * tol)
    for bank in ("memory_v1", "memory_v2"):
        assert_close(bank, getattr(compiled_module.contrast, bank), getattr(eager.contrast, bank), atol=bank_tol,
                     rtol=bank_tol)


def test_compiled_op_still_checks_indices():
    crd = make_crd()
    train_step(crd, make_batch())
    compiled = torch.compile(crd, fullgraph=True, backend="aot_eager")
    f_s, f_t, idx, cidx = make_batch(seed=3)
    with pytest.raises(ValueError, match="holds values in"):
        compiled(f_s, f_t, idx, cidx + N_DATA)


def _opcheck(op, **values):
    """opcheck with arguments given by name (the schemas grow options)."""
    names = [a.name for a in op._opoverload._schema.arguments]
    defaults = dict(backend="torch", check_indices=True, strategy="gather")
    missing = [n for n in names if n not in values and n not in defaults]
    assert not missing, f"test does not know arguments {missing}"
    torch.library.opcheck(op, tuple(values[n] if n in values else defaults[n] for n in names))


def test_opcheck_custom_ops():
    from rdkernels.ops.bank_contrast import _loss_op, _scores_op
    from rdkernels.ops.bank_update import _bank_update_op
    q = unit_rows(4, 16).requires_grad_()
    bank = unit_rows(20, 16)
    idx = torch.randint(0, 20, (4, 6))
    z = torch.tensor([30.0])
    for epilogue in ("nce", "softmax"):
        _opcheck(_loss_op, query=q, bank=bank, idx=idx, z=z, temperature=0.1, epilogue=epilogue, n_data=20)
    _opcheck(_scores_op, query=q, bank=bank, idx=idx, temperature=0.1)
    _opcheck(_bank_update_op, bank=bank.clone(), index=idx[:, 0].clone(), values=torch.randn(4, 16),
             momentum=0.5)


# -------------------------------------------------------------------------- AMP

def test_autocast_bf16_close_to_fp32():
    fp32, amp = make_crd(), make_crd()
    for seed in range(2):
        batch = make_batch(seed=seed)
        l32, g32, _ = train_step(fp32, batch)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            l16, g16, _ = train_step(amp, batch)
        assert l16.dtype == torch.float32 and torch.isfinite(l16)
        assert_close("autocast loss", l16, l32, atol=0.05, rtol=0.02)
        assert_close("autocast grad", g16, g32, atol=0.05 * g32.abs().max().item(), rtol=0.1)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
@pytest.mark.parametrize("q_dtype", [torch.float16, torch.bfloat16])
def test_nce_does_not_overflow_at_t007(backend, q_dtype):
    """exp(1/0.07) = 1.6e6 is beyond fp16; scores stay in fp32 / log space."""
    bank = unit_rows(30, 64)
    idx = torch.randint(0, 30, (4, 9))
    query = bank[idx[:, 0]].to(q_dtype)  # cos = 1 with the positive
    z = torch.tensor([1.0])  # x0 = exp(14.3), no rescue from Z
    q = query.clone().requires_grad_()
    loss = bank_contrast(q.to(DEVICE), bank.to(DEVICE), idx.to(DEVICE), temperature=0.07, epilogue="nce",
                         z=z.to(DEVICE), n_data=30, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all()


# ------------------------------------------------------------------ determinism

@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_bit_identical_reruns(backend):
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            crd = make_crd(backend)
            out = [train_step(crd, make_batch(seed=s)) for s in range(3)]
            runs.append((out, {k: v.clone() for k, v in crd.state_dict().items()}))
    finally:
        torch.use_deterministic_algorithms(False)
    (a, sa), (b, sb) = runs
    for (la, ga, pa), (lb, gb, pb) in zip(a, b):
        assert torch.equal(la, lb) and torch.equal(ga, gb)
        assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------- Z

def test_z_ema():
    crd = make_crd(z_momentum=0.9)
    ref = make_crd()  # same init, the reference's one-time Z
    batch = make_batch(seed=0)
    train_step(crd, batch)
    train_step(ref, batch)
    # first step: Z set from the batch, then the EMA with the same batch estimate leaves it
    assert_close("first Z", crd.contrast.params[2:4], ref.contrast.params[2:4], atol=0, rtol=1e-5)
    batch = make_batch(seed=1)
    z_before = crd.contrast.params[2:4].clone()
    with torch.no_grad():
        v_s, v_t = crd.embed_s(batch[0]), crd.embed_t(batch[1])
        kw = dict(temperature=0.07, n_data=N_DATA)
        z_batch = torch.cat([estimate_nce_z(v_s, crd.contrast.memory_v2, batch[3], **kw),
                             estimate_nce_z(v_t, crd.contrast.memory_v1, batch[3], **kw)])
    train_step(crd, batch)
    assert_close("EMA Z", crd.contrast.params[2:4], 0.9 * z_before + 0.1 * z_batch, atol=0, rtol=1e-5)


# ------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_checkpoint_round_trip_continues_exactly(backend, tmp_path):
    crd = make_crd(backend)
    train_step(crd, make_batch(seed=0))
    torch.save(crd.state_dict(), tmp_path / "crd.pt")
    expected = train_step(crd, make_batch(seed=1))
    restored = make_crd(backend)
    restored.load_state_dict(torch.load(tmp_path / "crd.pt"))
    got = train_step(restored, make_batch(seed=1))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), crd.state_dict().values()))


# ------------------------------------------------------- multi-process (gloo)

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, out_dir, own_banks=False):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        crd = make_crd()
        if own_banks and rank:  # as if each rank were seeded differently: its banks start as its own
            with torch.no_grad():
                for bank in (crd.contrast.memory_v1, crd.contrast.memory_v2):
                    bank.copy_(torch.nn.functional.normalize(torch.randn(bank.shape), dim=1))
        results = []
        for seed in range(3):
            f_s, f_t, idx, cidx = make_batch(b=8, seed=seed)
            part = slice(4 * rank, 4 * rank + 4)  # this rank's half of the global batch
            loss, _, grads = train_step(crd, (f_s[part], f_t[part], idx[part], cidx[part]))
            for g in grads.values():  # what DDP does to the gradients
                dist.all_reduce(g)
                g /= world
            total = loss.clone()
            dist.all_reduce(total)
            results.append((total / world, grads))
        torch.save({"results": results, "state": crd.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("own_banks", [False, True], ids=["same-seed", "own-banks"])
def test_two_process_gloo_matches_single_process(tmp_path, own_banks):
    """Two ranks with half the batch each train as one process with all of it; also
    when rank 1 starts from banks of its own (the first rank's are broadcast)."""
    mp.start_processes(_rank_main, args=(2, _free_port(), str(tmp_path), own_banks), nprocs=2, join=True,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key in ranks[0]["state"]:
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), f"{key} differs between ranks"
    single = make_crd()
    for seed, (loss, grads) in enumerate(ranks[0]["results"]):
        s_loss, _, s_grads = train_step(single, make_batch(b=8, seed=seed))
        assert_close(f"step {seed} loss", loss, s_loss, atol=1e-5, rtol=1e-5)
        for name in grads:
            assert_close(f"step {seed} {name}", grads[name], s_grads[name], atol=1e-6, rtol=1e-4)
    for key, value in single.state_dict().items():
        assert_close(key, ranks[0]["state"][key], value, atol=1e-6, rtol=1e-5)
