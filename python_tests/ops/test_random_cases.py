"""Randomly drawn cases of every op against its float64 reference, on every backend.

The op suites sweep chosen grids of shapes and dtypes; these tests draw the
combinations instead (batch, width, bank or queue size, columns, epilogue,
strategy, query / bank / index dtypes, temperatures, Sinkhorn sizes across
the register, shared-memory and tiled kernels, marginals, eps, iterations),
including the degenerate sizes (one row, one column, width 1), so pairings no
grid names are tested too. Each case checks the value and the gradient on
fresh random inputs; its id is its seed, and a failure names the drawn case.

RDKERNELS_TEST_RANDOM_CASES sets the number of cases per op and backend
(default 12): ``RDKERNELS_TEST_RANDOM_CASES=400`` is a long sweep.
"""
import os
import random

import pytest
import torch

from conftest import DEVICE, backends
from helpers import assert_close, tolerance, unit_rows
from rdkernels.ops import bank_contrast, bank_update_, dcd_loss, shared_bank_contrast, sinkhorn
from rdkernels.ops.bank_contrast.reference import bank_contrast_reference
from rdkernels.ops.bank_update.reference import bank_update_reference_
from rdkernels.ops.dcd.reference import dcd_reference
from rdkernels.ops.shared_bank_contrast.reference import shared_bank_contrast_reference

SEEDS = range(int(os.environ.get("RDKERNELS_TEST_RANDOM_CASES", "12")))
FLOATS = (torch.float32, torch.bfloat16, torch.float16)
BANKS = (torch.float32, torch.bfloat16)
INDICES = (torch.int32, torch.int64)


def _check_value_and_grad(case: str, out, ref, grads, gen: torch.Generator, atol: float, rtol: float) -> None:
    """``out`` and ``ref`` contracted with one random weight, both backwarded;
    ``grads`` = [(name, fast leaf, float64 leaf)]."""
    weight = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    (out.double() * weight).sum().backward()
    (ref * weight).sum().backward()
    assert_close(f"value ({case})", out, ref.detach(), atol, rtol)
    for name, fast, exact in grads:
        assert_close(f"d/d{name} ({case})", fast.grad, exact.grad, atol, rtol)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_bank_contrast(backend, seed):
    r, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    epilogue = r.choice(["nce", "softmax", "scores"])
    batch, dim, n_bank = r.choice([1, 2, 3, 5, 17, 33]), r.choice([1, 2, 3, 8, 31, 64, 100, 128]), r.choice([1, 2, 7, 300])
    cols = r.choice([2, 3, 9, 40]) if epilogue == "nce" else r.choice([1, 2, 5, 40])
    strategy, temperature = r.choice(["gather", "dense"]), r.choice([0.07, 0.5, 1.0])
    q_dtype, bank_dtype, idx_dtype = r.choice(FLOATS), r.choice(BANKS), r.choice(INDICES)
    case = (f"{epilogue} {strategy} B={batch} d={dim} N={n_bank} K+1={cols} T={temperature} "
            f"q={q_dtype} bank={bank_dtype} idx={idx_dtype}")

    query = unit_rows(batch, dim, q_dtype, DEVICE, gen).requires_grad_()
    bank = unit_rows(n_bank, dim, bank_dtype, DEVICE, gen)
    idx = torch.randint(0, n_bank, (batch, cols), generator=gen).to(idx_dtype).to(DEVICE)
    kw = dict(temperature=temperature, epilogue=epilogue)
    if epilogue == "nce":
        kw.update(z=torch.tensor([r.choice([0.5, 3.0, 100.0])], device=DEVICE), n_data=r.choice([n_bank, 50_000]))
    if epilogue != "scores":
        kw.update(reduction="none")
    out = bank_contrast(query, bank, idx, backend=backend, strategy=strategy, **kw)
    q64 = query.detach().double().requires_grad_()
    ref = bank_contrast_reference(q64, bank.double(), idx, **kw)
    _check_value_and_grad(case, out, ref, [("query", query, q64)], gen, *tolerance(q_dtype, bank_dtype))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("backend", backends("shared_bank_contrast"))
def test_shared_bank_contrast(backend, seed):
    r, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    batch, dim, n_rows = r.choice([1, 2, 3, 17, 64]), r.choice([1, 2, 3, 16, 31, 64, 128]), r.choice([1, 2, 15, 1000])
    q_dtype, queue_dtype = r.choice(FLOATS), r.choice(FLOATS)
    tau_s, tau_t = r.choice([0.02, 0.1, 1.0]), r.choice([0.05, 0.1, 2.0])
    case = f"B={batch} d={dim} N={n_rows} tau_s={tau_s} tau_t={tau_t} q={q_dtype} queue={queue_dtype}"

    q_s = unit_rows(batch, dim, q_dtype, DEVICE, gen).requires_grad_()
    q_t = unit_rows(batch, dim, q_dtype, DEVICE, gen)
    queue = unit_rows(n_rows, dim, queue_dtype, DEVICE, gen)
    out = shared_bank_contrast(q_s, q_t, queue, tau_s=tau_s, tau_t=tau_t, backend=backend)
    q64 = q_s.detach().double().requires_grad_()
    ref = shared_bank_contrast_reference(q64, q_t.double(), queue.double(), tau_s=tau_s, tau_t=tau_t)
    atol, rtol = tolerance(q_dtype, queue_dtype)
    # The loss LSE(s) - p_t . s is a difference of terms up to 1 / tau_s (unit rows), which
    # cancel to 0 at N = 1; the fast paths' 3xTF32 logits carry ~2^-21 of that size (a
    # 400-case sweep drew B=17 d=2 N=1 tau_s=0.02: 1.3e-5 off, over the fp32 atol of 1e-5)
    atol = max(atol, 2.0 ** -20 / tau_s)
    _check_value_and_grad(case, out, ref, [("q_s", q_s, q64)], gen, atol, rtol)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("backend", backends("dcd_loss"))
def test_dcd_loss(backend, seed):
    r, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    batch, dim, dtype = r.choice([1, 2, 3, 17, 40, 65, 130]), r.choice([1, 2, 3, 16, 31, 64, 128, 200]), r.choice(FLOATS)
    tau_value, bias_value, alpha = r.choice([0.0, 1.0, 2.66, 3.0]), r.choice([0.0, -10.0, 1.5]), r.choice([0.0, 0.5, 1.0])
    case = f"B={batch} d={dim} {dtype} tau={tau_value} bias={bias_value} alpha={alpha}"

    z_s = unit_rows(batch, dim, dtype, DEVICE, gen).requires_grad_()
    z_t = unit_rows(batch, dim, dtype, DEVICE, gen).requires_grad_()
    tau = torch.tensor(tau_value, device=DEVICE, requires_grad=True)
    bias = torch.tensor(bias_value, device=DEVICE, requires_grad=True)
    out = dcd_loss(z_s, z_t, tau, bias, alpha=alpha, backend=backend)
    exact = [t.detach().double().requires_grad_() for t in (z_s, z_t, tau, bias)]
    ref = dcd_reference(*exact, alpha=alpha)
    grads = list(zip(("z_s", "z_t", "tau", "bias"), (z_s, z_t, tau, bias), exact))
    _check_value_and_grad(case, out, ref, grads, gen, *tolerance(dtype))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("backend", backends("sinkhorn"))
def test_sinkhorn(backend, seed):
    """Same iterations as the float64 torch run: the potentials, plan and cost agree
    to fp32 rounding (bf16 / fp16 costs are read exactly; the gradient comes back in
    the cost's dtype, hence its looser bound there)."""
    r, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    problems = r.choice([1, 2, 5])
    n, m = r.choice([1, 2, 3, 31, 64, 100, 129, 256, 300]), r.choice([1, 2, 5, 33, 64, 128, 200, 257])
    eps, iters, dtype, uniform = r.choice([1.0, 0.1, 0.05]), r.choice([1, 2, 10, 40]), r.choice(FLOATS), r.random() < 0.5
    case = f"P={problems} n={n} m={m} eps={eps} iters={iters} {dtype} uniform={uniform}"

    cost = (torch.rand(problems, n, m, generator=gen) * 4).to(dtype).to(DEVICE).requires_grad_()
    a = b = None
    if not uniform:
        a = torch.rand(problems, n, generator=gen, dtype=torch.float64) + 0.2
        b = torch.rand(problems, m, generator=gen, dtype=torch.float64) + 0.2
        a, b = (a / a.sum(1, keepdim=True)).to(DEVICE), (b / b.sum(1, keepdim=True)).to(DEVICE)
    res = sinkhorn(cost, None if a is None else a.float(), None if b is None else b.float(), eps=eps,
                   max_iters=iters, return_plan=True, backend=backend)
    c64 = cost.detach().double().requires_grad_()
    ref = sinkhorn(c64, a, b, eps=eps, max_iters=iters, return_plan=True, backend="torch")
    for name in ("f", "g"):
        assert_close(f"{name} ({case})", getattr(res, name), getattr(ref, name), 1e-4, 1e-3)
    assert_close(f"plan ({case})", res.plan, ref.plan, 1e-6, 1e-3)
    weight = torch.randn(problems, generator=gen, dtype=torch.float64).to(DEVICE)
    (res.cost.double() * weight).sum().backward()
    (ref.cost * weight).sum().backward()
    assert_close(f"cost ({case})", res.cost, ref.cost, 2e-5, 2e-4)
    grad_rtol = {torch.bfloat16: 1e-2, torch.float16: 2e-3}.get(dtype, 1e-3)
    assert_close(f"d/dcost ({case})", cost.grad, c64.grad, 1e-6, grad_rtol)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("backend", backends("bank_update"))
def test_bank_update(backend, seed):
    """Repeated ids included: the last occurrence wins, as in the reference."""
    r, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    n_bank, dim = r.choice([1, 2, 9, 300]), r.choice([1, 2, 3, 31, 128, 200])
    batch, momentum = r.choice([1, 2, 5, 64]), r.choice([0.0, 0.5, 0.9])
    bank_dtype, value_dtype, idx_dtype = r.choice(BANKS), r.choice(FLOATS), r.choice(INDICES)
    case = f"N={n_bank} d={dim} B={batch} m={momentum} bank={bank_dtype} values={value_dtype} idx={idx_dtype}"

    bank = unit_rows(n_bank, dim, bank_dtype, DEVICE, gen)
    index = torch.randint(0, n_bank, (batch,), generator=gen).to(idx_dtype).to(DEVICE)
    values = torch.randn(batch, dim, generator=gen).to(value_dtype).to(DEVICE)
    expected = bank_update_reference_(bank.double(), index, values.double(), momentum)
    bank_update_(bank, index, values, momentum, backend=backend)
    # fp32 arithmetic, one rounding to the bank's dtype
    atol = 1e-2 if bank_dtype == torch.bfloat16 else 1e-5
    assert_close(f"bank ({case})", bank, expected, atol, atol)
