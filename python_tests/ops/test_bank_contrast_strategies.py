"""bank_contrast: every backend x strategy (gather, dense) against the float64 reference.

The dense strategy scores the whole bank and applies the sampled multiplicities
in its epilogue; these tests pin that it counts repeated ids (and a positive
that also appears among the negatives) exactly as the gather strategy does.
On a CPU the Triton kernels run under the interpreter (fp32 dots only); the
CUDA cases skip without a GPU.
"""
import importlib
import math
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import DEVICE, backends
from rdkernels.backend import available_backends
from helpers import assert_close, unit_rows
import interpreter_bf16

from rdkernels.ops.bank_contrast import STRATEGIES, bank_contrast, bank_contrast_reference, estimate_nce_z
from rdkernels.ops.bank_contrast.cost_model import choose_strategy, estimate_times

TEMPERATURE = 0.07
triton_runs = "triton" in available_backends(DEVICE, "bank_contrast")
STRATEGY_PARAMS = ["gather", "dense"]
# (B, K, N, d): ragged K, B = 1, every d the brief names; N small for the interpreter
SHAPES = [(5, 37, 200, 64), (1, 20, 200, 128), (17, 50, 200, 96), (7, 30, 150, 256)]


def _inputs(batch, k, n, dim, q_dtype=torch.float32, bank_dtype=torch.float32, idx_dtype=torch.int64):
    query = unit_rows(batch, dim, device=DEVICE).to(q_dtype)
    bank = unit_rows(n, dim, device=DEVICE).to(bank_dtype)
    idx = torch.randint(0, n, (batch, k + 1), device=DEVICE).to(idx_dtype)
    return query, bank, idx


def _z(query, bank, idx, n_data):
    return estimate_nce_z(query.float(), bank.float(), idx, temperature=TEMPERATURE, n_data=n_data, backend="torch")


def _check(backend, strategy, epilogue, query, bank, idx, atol, rtol, grad_tol=None):
    n = bank.shape[0]
    z = _z(query, bank, idx, n) if epilogue == "nce" else None
    q64 = query.detach().to(torch.float64).requires_grad_()
    ref = bank_contrast_reference(q64, bank.to(torch.float64), idx, temperature=TEMPERATURE, epilogue=epilogue,
                                  z=None if z is None else z.to(torch.float64), n_data=n, reduction="none")
    weights = torch.rand(ref.shape, dtype=torch.float64, device=DEVICE) + 0.5
    (ref * weights).sum().backward()

    q = query.detach().clone().requires_grad_()
    out = bank_contrast(q, bank, idx, temperature=TEMPERATURE, epilogue=epilogue, z=z, n_data=n, reduction="none",
                        backend=backend, strategy=strategy)
    assert out.dtype == torch.float32
    # losses are sums of K+1 terms: scale the tolerance with the row's magnitude
    scale = 1.0 if epilogue == "scores" else ref.abs().max().item()
    assert_close(f"{epilogue} value", out, ref, atol * max(1.0, scale), rtol)
    (out * weights.float()).sum().backward()
    assert q.grad.dtype == query.dtype
    gscale = max(1.0, q64.grad.abs().max().item())
    g_atol, g_rtol = grad_tol or (atol, rtol)
    assert_close(f"{epilogue} grad", q.grad, q64.grad, g_atol * gscale, g_rtol)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_K{}_N{}_d{}".format(*s))
@pytest.mark.parametrize("epilogue", ["nce", "softmax", "scores"])
@pytest.mark.parametrize("strategy", STRATEGY_PARAMS)
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_matches_reference(backend, strategy, epilogue, shape):
    query, bank, idx = _inputs(*shape)
    _check(backend, strategy, epilogue, query, bank, idx, 1e-5, 1e-4)


@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.bfloat16, torch.int32),
                                    (torch.float16, torch.float32, torch.int64),
                                    (torch.float32, torch.bfloat16, torch.int32)],
                         ids=["bf16-bf16-i32", "fp16-fp32-i64", "fp32-bf16-i32"])
@pytest.mark.parametrize("epilogue", ["nce", "softmax", "scores"])
@pytest.mark.parametrize("strategy", STRATEGY_PARAMS)
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_dtypes(backend, strategy, epilogue, dtypes):
    q_dtype, bank_dtype, idx_dtype = dtypes
    query, bank, idx = _inputs(6, 41, 160, 128, q_dtype, bank_dtype, idx_dtype)
    # The reference scores the same rounded query and bank and accumulation is fp32,
    # so the values carry fp32 error only; the gradient is returned in the query's
    # dtype: one rounding (2^-8 relative in bf16, 2^-11 in fp16) on top.
    g_rtol = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 8e-3}[q_dtype]
    _check(backend, strategy, epilogue, query, bank, idx, 1e-4, 1e-4, grad_tol=(1e-5, g_rtol))


@pytest.mark.skipif(DEVICE.type == "cuda" or not triton_runs,
                    reason="on a GPU test_dtypes runs the native-bf16 variant itself")
@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
def test_triton_dense_native_bf16_variant_under_the_interpreter(monkeypatch, epilogue):
    """The dense kernel's BF16_DOT variant (bf16 query and bank at d = 128: the scores
    in one bf16 dot, the coefficients in two bf16 halves), which only a GPU picks,
    run by the interpreter given a GPU's bf16 dot and rounding (interpreter_bf16.py).
    Tolerances as test_dtypes' bf16 case: one bf16 rounding of the coefficients
    instead of two halves fails them."""
    interpreter_bf16.install(monkeypatch)
    dense_mod = importlib.import_module("rdkernels.ops.bank_contrast.triton_dense")
    monkeypatch.setattr(dense_mod, "_native_bf16_dots", lambda device: True)
    query, bank, idx = _inputs(6, 300, 160, 128, torch.bfloat16, torch.bfloat16, torch.int32)
    assert dense_mod._dot_flags(query, bank, 128)["BF16_DOT"]
    _check("triton", "dense", epilogue, query, bank, idx, 1e-4, 1e-4, grad_tol=(1e-5, 8e-3))


@pytest.mark.parametrize("strategy", STRATEGY_PARAMS)
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_nce_constant_terms(backend, strategy):
    """n_data >> K makes m*Pn comparable to eps, so log(m*Pn / c) is far from 0
    and every negative's constant term is checked, not only its slope."""
    query, bank, idx = _inputs(3, 30, 100, 64)
    n_data = 10**9
    z = torch.tensor([5.0], device=DEVICE)
    q64 = query.to(torch.float64).requires_grad_()
    ref = bank_contrast_reference(q64, bank.to(torch.float64), idx, temperature=TEMPERATURE, epilogue="nce",
                                  z=z.to(torch.float64), n_data=n_data, reduction="sum")
    ref.backward()
    q = query.clone().requires_grad_()
    out = bank_contrast(q, bank, idx, temperature=TEMPERATURE, epilogue="nce", z=z, n_data=n_data, reduction="sum",
                        backend=backend, strategy=strategy)
    out.backward()
    assert_close("loss", out, ref, 1e-5 * max(1.0, abs(ref.item())), 1e-4)
    assert_close("grad", q.grad, q64.grad, 1e-5 * max(1.0, q64.grad.abs().max().item()), 1e-4)


@pytest.mark.parametrize("strategy", STRATEGY_PARAMS)
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_nce_at_cifar_k_keeps_float64_accuracy(backend, strategy):
    """At CIFAR-100's K = 16384, N = 50 000 every row sums 16 384 log terms. The fused
    paths fold the constants (m*Pn + eps) in float64 and stay within float32
    rounding of the float64 loss. RepDistiller's formulation in float32 does not:
    (x + m*Pn) + 1e-7 rounds the eps to 3 ulps of m*Pn = 0.328 (8.94e-8), which
    shifts each negative's log term by 3.2e-8 and the loss by K times that,
    5.3e-4 per direction -- the constant offset between reference and fused
    training-loss curves at step 1."""
    batch, k, n = 4, 16384, 50_000
    query, bank, idx = _inputs(batch, k, 500, 128)  # n_data sets m*Pn; a small bank keeps the interpreter quick
    z = _z(query, bank, idx, n)
    common = dict(temperature=TEMPERATURE, epilogue="nce", z=z, n_data=n, reduction="none")
    ref64 = bank_contrast_reference(query.double(), bank.double(), idx, **dict(common, z=z.double()))
    out = bank_contrast(query, bank, idx, backend=backend, strategy=strategy, **common)
    assert_close("loss", out, ref64, 1e-5, 1e-6)
    ref32 = bank_contrast_reference(query, bank, idx, **common)
    m_pn = torch.tensor(k / n)
    eps32 = ((m_pn + 1e-7) - m_pn).item()
    predicted = k * math.log((k / n + 1e-7) / (k / n + eps32))  # each negative's log(m*Pn / c) shift
    assert_close("float32 reference's offset", (ref64 - ref32).mean(), torch.tensor(predicted, dtype=torch.float64),
                 0.1 * abs(predicted), 0)


def _duplicate_idx(batch, k, n):
    idx = torch.randint(0, n, (batch, k + 1), device=DEVICE)
    idx[0, 1:] = 17                    # one bank row drawn K times (K > 255: no 8-bit count can hold it)
    idx[0, 0] = 17                     # ... and it is the positive too
    idx[1, 5:40] = idx[1, 0]           # the positive repeated among the negatives
    idx[2, 1::2] = 3                   # half the negatives on one row, the rest random
    idx[3, :] = n - 1                  # last bank row (last, partial tile) everywhere
    return idx


@pytest.mark.parametrize("epilogue", ["nce", "softmax", "scores"])
@pytest.mark.parametrize("strategy", STRATEGY_PARAMS)
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_duplicates_count_with_multiplicity(backend, strategy, epilogue):
    batch, k, n, dim = 5, 300, 131, 64
    query, bank, _ = _inputs(batch, k, n, dim)
    _check(backend, strategy, epilogue, query, bank, _duplicate_idx(batch, k, n), 1e-5, 1e-4)


@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_strategies_agree(backend, epilogue):
    """gather and dense give the same loss and gradient on the same backend."""
    query, bank, idx = _inputs(9, 45, 180, 64)
    z = _z(query, bank, idx, 180)
    results = []
    for strategy in STRATEGY_PARAMS:
        q = query.clone().requires_grad_()
        loss = bank_contrast(q, bank, idx, temperature=TEMPERATURE, epilogue=epilogue, z=z, n_data=180,
                             backend=backend, strategy=strategy)
        loss.backward()
        results.append((loss.detach(), q.grad))
    assert_close("loss", results[1][0], results[0][0], 1e-5, 1e-5)
    assert_close("grad", results[1][1], results[0][1], 1e-6, 1e-4)


@pytest.mark.parametrize("strategy", STRATEGY_PARAMS)
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_softmax_positive_only(backend, strategy):
    """K = 0: the softmax loss is exactly 0 (one column), with zero gradient."""
    query, bank, idx = _inputs(4, 0, 100, 64)
    q = query.clone().requires_grad_()
    loss = bank_contrast(q, bank, idx, temperature=TEMPERATURE, epilogue="softmax", reduction="sum",
                         backend=backend, strategy=strategy)
    loss.backward()
    assert abs(loss.item()) < 1e-5
    assert q.grad.abs().max().item() < 1e-4


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_auto_strategy_runs_and_matches(backend):
    query, bank, idx = _inputs(8, 60, 120, 64)
    chosen = choose_strategy(8, 61, 120, 64, bank.dtype, DEVICE, backend)
    auto = bank_contrast(query, bank, idx, temperature=TEMPERATURE, backend=backend, strategy="auto")
    explicit = bank_contrast(query, bank, idx, temperature=TEMPERATURE, backend=backend, strategy=chosen)
    other = bank_contrast(query, bank, idx, temperature=TEMPERATURE, backend=backend,
                          strategy="gather" if chosen == "dense" else "dense")
    assert torch.equal(auto, explicit)
    assert_close("auto vs the other strategy", auto, other, 1e-5, 1e-5)


def test_cost_model_picks_by_workload():
    cuda = torch.device("cuda")
    # CIFAR-100: every bank row sampled ~21 times a step; dense moves 20x fewer bytes,
    # its kernels take a third of gather's device time, and its extra host work (~0.2 ms
    # on an H100) is less than that
    for backend in ("cuda", "triton"):
        assert choose_strategy(64, 16385, 50_000, 128, torch.float32, cuda, backend) == "dense"
    assert choose_strategy(512, 16385, 50_000, 128, torch.float32, cuda) == "dense"
    # K = 4096 at B = 64: gather's device time is as low, and its host time lower
    assert choose_strategy(64, 4097, 50_000, 128, torch.float32, cuda) == "gather"
    assert choose_strategy(2048, 16385, 50_000, 128, torch.bfloat16, cuda) == "dense"  # half the gather bytes
    # ImageNet bank, small batch: B*K/N < 1
    assert choose_strategy(32, 16385, 1_281_167, 128, torch.float32, cuda) == "gather"
    assert choose_strategy(8, 4097, 1_281_167, 128, torch.float32, cuda) == "gather"
    # CPU, the dense-target config of the benchmarks
    assert choose_strategy(64, 4097, 50_000, 128, torch.float32, torch.device("cpu"), "torch") == "dense"
    # a CPU's GEMM beats its gather from K ~ 1024 up at CIFAR's bank (README; both CPUs timed agree)
    assert choose_strategy(64, 1025, 50_000, 128, torch.float32, torch.device("cpu"), "torch") == "dense"
    assert choose_strategy(64, 257, 50_000, 128, torch.float32, torch.device("cpu"), "torch") == "gather"
    assert choose_strategy(4, 65, 1_000_000, 128, torch.float32, torch.device("cpu"), "torch") == "gather"
    t_gather, t_dense = estimate_times(1024, 16385, 50_000, 128, torch.float32, cuda, "cuda")
    assert t_gather > 2 * t_dense


def test_cost_model_inside_a_graph_capture_counts_device_time_only():
    """Replayed from a CUDA graph, a call pays no host cost: K = 4096 at CIFAR's bank
    and B = 64, which gathers eagerly, takes the dense path (~5x fewer bytes);
    ImageNet's small batches still gather."""
    cuda = torch.device("cuda")
    for backend in ("cuda", "triton"):
        assert choose_strategy(64, 4097, 50_000, 128, torch.float32, cuda, backend) == "gather"
        assert choose_strategy(64, 4097, 50_000, 128, torch.float32, cuda, backend, captured=True) == "dense"
    assert choose_strategy(256, 16385, 1_281_167, 128, torch.float32, cuda, "cuda", captured=True) == "gather"
    assert choose_strategy(8, 4097, 1_281_167, 128, torch.float32, cuda, "cuda", captured=True) == "gather"
    eager = estimate_times(64, 16385, 50_000, 128, torch.float32, cuda, "cuda")
    captured = estimate_times(64, 16385, 50_000, 128, torch.float32, cuda, "cuda", captured=True)
    assert captured[0] == eager[0] and captured[1] < eager[1]   # only the dense path's fixed cost changes


def test_auto_passes_the_capture_state_to_the_model(monkeypatch):
    """``auto`` asks the model with ``captured`` as the stream reports it (the capture
    itself needs a GPU: here the probe is replaced, and the model's answer recorded)."""
    bc = importlib.import_module("rdkernels.ops.bank_contrast")
    query, bank, idx = _inputs(4, 9, 40, 64)
    seen = []
    monkeypatch.setattr(bc, "choose_strategy", lambda *a, captured=False: seen.append(captured) or "gather")
    for state in (False, True):
        monkeypatch.setattr(bc, "_capturing", lambda q, state=state: state)
        bank_contrast(query, bank, idx, temperature=TEMPERATURE, backend="torch")
    assert seen == [False, True]


def test_assume_graph_replay_is_a_scoped_switch():
    from rdkernels.ops import assume_graph_replay
    from rdkernels.ops.bank_contrast.cost_model import graph_replay_assumed
    bc = importlib.import_module("rdkernels.ops.bank_contrast")
    cuda_query = types.SimpleNamespace(is_cuda=True)
    assert not graph_replay_assumed()
    with assume_graph_replay():
        assert graph_replay_assumed() and bc._capturing(cuda_query)
        assert not bc._capturing(types.SimpleNamespace(is_cuda=False))   # CPU tensors: never a graph
        with assume_graph_replay(False):
            assert not graph_replay_assumed()
        assert graph_replay_assumed()
    assert not graph_replay_assumed()


def test_strategy_is_validated():
    query, bank, idx = _inputs(2, 5, 20, 64)
    assert STRATEGIES == ("auto", "gather", "dense")
    with pytest.raises(ValueError, match="strategy"):
        bank_contrast(query, bank, idx, temperature=TEMPERATURE, strategy="sparse")


@pytest.mark.skipif(not triton_runs, reason="Triton cannot run here")
@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
@pytest.mark.parametrize("strategy", STRATEGY_PARAMS)
def test_triton_many_splits(monkeypatch, strategy, epilogue):
    """A GPU launch has dozens of splits, the interpreter's at most 3: force one
    split per tile so the merge walks several of its 16-split steps, and (dense,
    few negatives) merges splits that saw no negative (softmax max = -inf)."""
    gather_mod = importlib.import_module("rdkernels.ops.bank_contrast.triton")
    dense_mod = importlib.import_module("rdkernels.ops.bank_contrast.dense")
    monkeypatch.setattr(dense_mod, "dense_splits", lambda m_blocks, n_tiles, device: (n_tiles, 1))
    monkeypatch.setattr(gather_mod, "_splits", lambda batch, n_cols, block_k, device: (-(-n_cols // block_k), block_k))
    # gather: 701 columns in 32-column tiles = 22 splits; dense: 1400 rows in 32-row tiles = 44 splits
    shape = (5, 700, 1400, 128) if strategy == "gather" else (5, 20, 1400, 128)
    _check("triton", strategy, epilogue, *_inputs(*shape), 1e-5, 1e-4)


def _dense_candidates():
    from rdkernels.ops.bank_contrast.triton_dense import CANDIDATES
    return [pytest.param(c, id="tile-twice" if c.kwargs["TILE_TWICE"] else "tile-once") for c in CANDIDATES]


@pytest.mark.skipif(not triton_runs, reason="Triton cannot run here")
@pytest.mark.parametrize("one_tile_a_program", [False, True], ids=["tiles-a-program", "one-tile-a-program"])
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16], ids=["bank-fp32", "bank-bf16"])
@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
@pytest.mark.parametrize("candidate", _dense_candidates())
def test_triton_dense_candidates_match_float64(candidate, epilogue, bank_dtype, one_tile_a_program, monkeypatch):
    """Every launch candidate the autotuner may pick, forced, against the float64
    reference: row losses and dq, several tiles a split (or one, the unstaged launch),
    a ragged last tile, repeated ids. A 16-bit bank's tile is loaded once wherever the
    dispatcher chooses; forced here, the twice-loaded tile must still be right."""
    dense_mod = importlib.import_module("rdkernels.ops.bank_contrast.dense")
    from rdkernels.ops.bank_contrast.triton_dense import bank_contrast_loss_dense_triton
    if one_tile_a_program:
        monkeypatch.setattr(dense_mod, "dense_splits", lambda m_blocks, n_tiles, device: (n_tiles, 1))
    query, bank, idx = _inputs(19, 60, 300, 128, bank_dtype=bank_dtype)   # 10 tiles, the last 12 rows
    idx[:, 5] = idx[:, 4]
    n = bank.shape[0]
    z = _z(query, bank, idx, n) if epilogue == "nce" else None
    loss, dq = bank_contrast_loss_dense_triton(query, bank, idx, z, TEMPERATURE, epilogue, n, config=candidate)
    q64 = query.detach().to(torch.float64).requires_grad_()
    ref = bank_contrast_reference(q64, bank.to(torch.float64), idx, temperature=TEMPERATURE, epilogue=epilogue,
                                  z=None if z is None else z.to(torch.float64), n_data=n, reduction="none")
    ref.sum().backward()
    assert_close(f"{epilogue} rows", loss, ref, 1e-5 * max(1.0, ref.abs().max().item()), 1e-4)
    assert_close(f"{epilogue} dq", dq, q64.grad, 1e-5 * max(1.0, q64.grad.abs().max().item()), 1e-4)
    if DEVICE.type == "cpu":   # the interpreter: the candidates' arithmetic is the same, so are the bits
        other = next(c for c in _dense_candidates() if c.values[0] is not candidate).values[0]
        loss2, dq2 = bank_contrast_loss_dense_triton(query, bank, idx, z, TEMPERATURE, epilogue, n, config=other)
        assert torch.equal(loss, loss2) and torch.equal(dq, dq2)


def test_dense_candidates_by_bank_dtype():
    """An fp32 bank times both candidates, the shipped one (tile twice) first; a
    16-bit bank only the one loading its tile once."""
    from rdkernels.ops.bank_contrast import triton_dense as td
    tags = lambda dt: [c.kwargs["TILE_TWICE"] for c in td.dense_kernel.candidates(  # noqa: E731
        bank_ptr=torch.empty(0, dtype=dt))]
    assert tags(torch.float32) == [True, False]
    assert tags(torch.bfloat16) == tags(torch.float16) == [False]
    assert td._shipped(torch.empty(0, dtype=torch.bfloat16))["TILE_TWICE"] is False
    assert td._one_tile_a_program(td._shipped(torch.empty(0)))["num_stages"] == 1


def _bincounts(idx, n_bank):
    """counts[b, j]: how many of idx[b, 1:] are j (ids outside [0, n_bank) left out)."""
    neg = idx[:, 1:].long()
    valid = (neg >= 0) & (neg < n_bank)
    return torch.stack([torch.bincount(row[ok], minlength=n_bank) for row, ok in zip(neg, valid)]).to(torch.int32)


@pytest.mark.skipif(not triton_runs, reason="the sample counts are a Triton kernel")
def test_sample_counts_layout():
    """Two 16-bit counts a word, row j in the high half when j is odd; rows padded to 64-row tiles."""
    from rdkernels.ops.bank_contrast.sample_counts import count_samples
    idx = torch.tensor([[0, 5, 1, 5, 70, 64], [3, 63, 64, 0, 0, 127]], device=DEVICE)
    counts = count_samples(idx, 130)
    assert counts.dtype == torch.int32 and counts.shape == (2, 96)   # 130 rows -> 3 tiles of 64 -> 96 words
    expected = torch.zeros(2, 96, dtype=torch.int32)
    expected[0, 0] = 1 << 16        # row 1
    expected[0, 2] = 2 << 16        # row 5, twice
    expected[0, 32] = 1             # row 64
    expected[0, 35] = 1             # row 70
    expected[1, 31] = 1 << 16       # row 63
    expected[1, 32] = 1             # row 64
    expected[1, 0] = 2              # row 0, twice
    expected[1, 63] = 1 << 16       # row 127
    assert torch.equal(counts.cpu(), expected)


def _count_builders():
    """The sample-count kernels: Triton's (global atomics into a zeroed buffer) and the
    CUDA backend's (a shared-memory histogram a chunk; on a CPU its emulated run is
    in test_cuda_emulated.py)."""
    def cuda_counts(idx, n_bank):
        from rdkernels.ops.bank_contrast.cuda import count_samples_cuda
        return count_samples_cuda(idx, n_bank)
    cuda_runs = "cuda" in available_backends(DEVICE, "bank_contrast")
    return [pytest.param(None, id="triton", marks=pytest.mark.skipif(not triton_runs, reason="Triton cannot run")),
            pytest.param(cuda_counts, id="cuda", marks=pytest.mark.skipif(not cuda_runs, reason="no CUDA backend"))]


@pytest.mark.parametrize("build", _count_builders())
@pytest.mark.parametrize("batch,k,n_bank,idx_dtype", [
    (7, 3000, 500, torch.int32),       # ~6 a (query, bank row): atomics meet on one word
    (3, 1500, 100_000, torch.int64),   # most counts zero (CUDA: 5 chunks of a row, past 48 KB)
    (2, 2500, 33, torch.int64),        # ragged last tile
    (4, 1, 10, torch.int64),           # one negative a row
    (2, 65_535, 3, torch.int32),       # ~21 845 a count; row 1 below: 65 535, the 16-bit maximum
])
def test_sample_counts_match_bincount(batch, k, n_bank, idx_dtype, build):
    from rdkernels.ops.bank_contrast.sample_counts import count_samples, unpack_counts
    idx = torch.randint(0, n_bank, (batch, k + 1), device=DEVICE, dtype=idx_dtype)
    if k == 65_535:
        idx[1, 1:] = 1   # the high half of word 0 full: no carry may leave it
    counts = count_samples(idx, n_bank, build=build)
    assert torch.equal(unpack_counts(counts, n_bank), _bincounts(idx, n_bank))
    assert not unpack_counts(counts, counts.shape[1] * 2)[:, n_bank:].any(), "the tile padding stays zero"


@pytest.mark.parametrize("build", _count_builders())
def test_sample_counts_drop_out_of_range_ids(build):
    """With index checks off, a bad id is left out, never written out of bounds."""
    from rdkernels.ops.bank_contrast.sample_counts import count_samples, unpack_counts
    idx = torch.tensor([[0, 3, 50, -1, 7, 3]], device=DEVICE)
    counts = count_samples(idx, 10, build=build)
    assert unpack_counts(counts, 64).tolist() == [[0, 0, 0, 2, 0, 0, 0, 1] + [0] * 56]


def test_sample_counts_refuse_what_16_bits_cannot_hold():
    from rdkernels.ops.bank_contrast.sample_counts import MAX_NEGATIVES, count_samples
    with pytest.raises(ValueError, match="16-bit counts"):
        count_samples(torch.zeros(1, MAX_NEGATIVES + 2, dtype=torch.int64, device=DEVICE), 5)


@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_dense_beyond_16_bit_counts_runs_the_torch_formulation(backend):
    """K = 65 536 negatives, every one the same row of a row: a count 16 bits cannot
    hold. The fused backends hand such a call to the torch dense formulation, whose
    fp32 sum of 65 536 equal gradient terms (embedding_bag on a CPU) drifts by up to
    K * 2^-24 ~ 4e-3 relative: the gradient tolerance allows that."""
    query, bank, idx = _inputs(2, 65_536, 50, 16)
    idx[0, 1:] = 7
    _check(backend, "dense", "softmax", query, bank, idx, 1e-5, 1e-4, grad_tol=(1e-5, 5e-3))


@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
@pytest.mark.parametrize("backend", [b for b in backends("bank_contrast") if b.values[0] != "torch"])
def test_dense_in_chunks_of_query_rows(backend, epilogue, monkeypatch):
    """Counts past CHUNK_BYTES (ImageNet's N at B = 256) run in chunks of query rows,
    into one set of split buffers and one merge: forced here to 16-row chunks and a
    ragged last one."""
    from rdkernels.ops.bank_contrast import sample_counts
    monkeypatch.setattr(sample_counts, "CHUNK_BYTES", 4 * sample_counts.words_per_row(300) * 20)
    assert sample_counts.row_chunks(37, 300, 16) == [(0, 16), (16, 32), (32, 37)]
    _check(backend, "dense", epilogue, *_inputs(37, 60, 300, 64), 1e-5, 1e-4)


@pytest.mark.parametrize("backend", [b for b in backends("bank_contrast") if b.values[0] != "torch"])
def test_shared_sample_counts_count_an_idx_once(backend, monkeypatch):
    """CRD's two directions score one idx against two banks: inside
    shared_sample_counts() the counts are built once, and both losses and
    gradients are those of separate calls; an in-place write to idx recounts."""
    from rdkernels.ops.bank_contrast import cuda as bc_cuda, triton_counts
    from rdkernels.ops.bank_contrast.sample_counts import shared_sample_counts
    built = []
    for module, name in ((triton_counts, "count_samples_triton"), (bc_cuda, "count_samples_cuda")):  # each backend's
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda idx, n, real=real: built.append(idx.shape) or real(idx, n))
    query, bank, idx = _inputs(9, 40, 300, 64)
    other = unit_rows(300, 64, device=DEVICE)
    kw = dict(temperature=TEMPERATURE, epilogue="softmax", reduction="none", backend=backend, strategy="dense")

    def both():
        qs, qt = query.clone().requires_grad_(), query.flip(0).clone().requires_grad_()
        out = bank_contrast(qs, bank, idx, **kw), bank_contrast(qt, other, idx, **kw)
        (out[0].sum() + 2 * out[1].sum()).backward()
        return out + (qs.grad, qt.grad)

    separate = both()
    assert len(built) == 2
    with shared_sample_counts():
        shared = both()
        assert len(built) == 3
        idx[:, 1:] = idx[:, 1:].flip(1).roll(1, dims=0)   # same tensor, new contents
        changed = bank_contrast(query, bank, idx, **kw)
        assert len(built) == 4
    assert torch.equal(changed, bank_contrast(query, bank, idx, **kw))
    for a, b in zip(separate, shared):
        assert torch.equal(a, b)


def test_opcheck_dense_ops():
    """The dense strategy through the custom ops' schema, fake and autograd registrations."""
    from rdkernels.ops.bank_contrast import _loss_op, _scores_op
    query, bank, idx = _inputs(3, 9, 40, 32)
    values = dict(query=query.clone().requires_grad_(), bank=bank, idx=idx, z=torch.tensor([40.0], device=DEVICE),
                  temperature=TEMPERATURE, n_data=40, backend="torch", check_indices=True, strategy="dense")

    def opcheck(op, **extra):
        names = [a.name for a in op._opoverload._schema.arguments]
        torch.library.opcheck(op, tuple({**values, **extra}[n] for n in names))

    opcheck(_loss_op, epilogue="nce")
    opcheck(_loss_op, epilogue="softmax", z=None)   # softmax has no Z: the schema's z is optional
    opcheck(_scores_op)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the GPU's compiled kernels at a benchmark shape "
                    "(the interpreter takes minutes here and matched float64 to 2e-7)")
@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
@pytest.mark.parametrize("strategy", STRATEGY_PARAMS)
@pytest.mark.parametrize("backend", backends("bank_contrast"))
def test_benchmark_shape_matches_float64(backend, strategy, epilogue):
    """B = 64, K = 4096, N = 50 000: a row has ~3 negatives in each 32-row bank tile,
    the small shapes above fewer tiles and splits. The benchmark's check found the
    Triton dense kernel's gradient 3e-3 off here on an H100 before its counting
    loop's bound was kept inside the tile loop (see the IR test below)."""
    query, bank, idx = _inputs(64, 4096, 50_000, 128)
    _check(backend, strategy, epilogue, query, bank, idx, 1e-5, 1e-4, grad_tol=(1e-4, 1e-3))


def _sparse_first_tile_idx(batch, n_bank, block_n=32, dense_entries=3 * 8 + 5):
    """Negatives that put one entry of every row in bank tile 0 and ``dense_entries``
    in every later tile: a program that walks all tiles meets its densest tiles
    after its first. (The CSR-walking kernel this one replaced lost entries here
    under Triton 3.6, which sized every tile's counting loop by the first tile.)"""
    gen = torch.Generator().manual_seed(0)
    tiles = -(-n_bank // block_n)
    cols = [torch.randint(0, block_n, (batch, 1), generator=gen)]
    for t in range(1, tiles):
        width = min(block_n, n_bank - t * block_n)
        cols.append(t * block_n + torch.randint(0, width, (batch, dense_entries), generator=gen))
    negatives = torch.cat(cols, dim=1)
    negatives = negatives[:, torch.randperm(negatives.shape[1], generator=gen)]   # order must not matter
    positive = torch.randint(0, n_bank, (batch, 1), generator=gen)
    return torch.cat([positive, negatives], dim=1).to(DEVICE)


# The Triton dense kernel's tile loop driven hard: many 32-row bank tiles in one program,
# counts of many samples in a tile (atomics meeting on one word), nearly empty tiles,
# and a sparse first tile before dense ones.
DENSE_LOOP_CASES = {
    "many-entries-one-tile-a-program": ((32, 2048, 256, 128), None),   # ~8 samples a (row, bank row)
    "many-entries-all-tiles-in-one-program": ((32, 2048, 256, 128), 1),
    "few-entries-all-tiles-in-one-program": ((32, 256, 20_000, 128), 1),  # ~0.4 entries a tile
    "sparse-first-tile-all-tiles-in-one-program": ((20, None, 160, 128), 1),
}


@pytest.mark.skipif(not triton_runs, reason="Triton cannot run here")
@pytest.mark.parametrize("case", list(DENSE_LOOP_CASES))
@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
def test_triton_dense_loops_match_float64(case, epilogue, monkeypatch):
    """On a GPU the compiled kernel; under the interpreter (which runs the loops as
    written, so it always matched) the small cases only."""
    (batch, k, n, dim), splits = DENSE_LOOP_CASES[case]
    if DEVICE.type != "cuda" and batch * (k or 0) > 10_000:
        pytest.skip("minutes under the interpreter")
    if splits is not None:
        dense_mod = importlib.import_module("rdkernels.ops.bank_contrast.dense")
        monkeypatch.setattr(dense_mod, "dense_splits", lambda m_blocks, n_tiles, device: (1, n_tiles))
    if k is None:
        query, bank, _ = _inputs(batch, 1, n, dim)
        idx = _sparse_first_tile_idx(batch, n)
    else:
        query, bank, idx = _inputs(batch, k, n, dim)
    _check("triton", "dense", epilogue, query, bank, idx, 1e-5, 1e-4, grad_tol=(1e-4, 1e-3))


_COMPILE_DENSE_TTGIR = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("aot_check", sys.argv[1])
aot = importlib.util.module_from_spec(spec); spec.loader.exec_module(aot)
from rdkernels.ops.bank_contrast import triton_dense
variant = next(v for v in triton_dense.aot_variants() if v["name"] == sys.argv[2])
print(aot.compile_variant(variant, int(sys.argv[3])).asm["ttgir"])
"""


@pytest.mark.parametrize("arch", [80, 90])
def test_dense_tile_loop_is_pipelined(arch):
    """The tile loop is the kernel's only loop and, in the candidate loading an fp32
    tile twice, Triton software-pipelines its three loads (the bank tile as each
    dot's operand, and the counts): async copies issued stages ahead, so a tile's
    load latency overlaps earlier tiles' work. Compiled here (no GPU needed) with
    the installed Triton."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a real JIT function
    name = "bank_contrast_dense[nce,d128,q=fp32,bank=fp32,x2]"
    done = subprocess.run([sys.executable, "-c", _COMPILE_DENSE_TTGIR, str(root / "tools" / "aot_check.py"), name,
                           str(arch)], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ttgir = done.stdout
    assert ttgir.count("scf.for") == 1, "expected the tile loop alone"
    staged = set(re.findall(r"%([a-z_]+?)_\d+ = ttg\.async_copy_global_to_local", ttgir))
    assert staged == {"w", "w_t", "words"}, f"pipelined loads: {sorted(staged)}"


@pytest.mark.parametrize("arch", [80, 90])
def test_dense_tile_loaded_once_is_one_synchronous_load(arch):
    """A bf16 bank's tile load stays synchronous whatever the kernel does (its
    conversion), so the kernel loads it once and transposes it in registers: one
    synchronous load in the loop (where loading it as each dot's operand left two),
    the counts still staged. The fp32 candidate loading its tile once compiles to
    the same loop loads."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for name in ("bank_contrast_dense[nce,d128,q=fp32,bank=bf16]", "bank_contrast_dense[nce,d128,q=bf16,bank=bf16]",
                 "bank_contrast_dense[nce,d128,q=fp32,bank=fp32]"):
        done = subprocess.run([sys.executable, "-c", _COMPILE_DENSE_TTGIR, str(root / "tools" / "aot_check.py"),
                               name, str(arch)], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        staged = set(re.findall(r"%([a-z_]+?)_\d+ = ttg\.async_copy_global_to_local", done.stdout))
        assert staged == {"words"}, (name, sorted(staged))
        loop = done.stdout[done.stdout.index("scf.for"):]
        assert len(re.findall(r"= tt\.load .*: tensor<", loop)) == 1, name   # the tile, in the loop
