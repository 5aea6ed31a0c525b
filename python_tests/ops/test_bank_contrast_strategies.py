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
    # CIFAR-100: every bank row sampled ~21 times a step
    # CIFAR at B=64: dense moves 20x fewer bytes, but its host-side work (measured on
    # an H100, eager) costs more than gather's whole call; at larger batches dense wins.
    assert choose_strategy(64, 16385, 50_000, 128, torch.float32, cuda) == "gather"
    assert choose_strategy(512, 16385, 50_000, 128, torch.float32, cuda) == "dense"
    assert choose_strategy(2048, 16385, 50_000, 128, torch.bfloat16, cuda) == "dense"  # half the gather bytes
    # ImageNet bank, small batch: B*K/N < 1
    assert choose_strategy(32, 16385, 1_281_167, 128, torch.float32, cuda) == "gather"
    assert choose_strategy(8, 4097, 1_281_167, 128, torch.float32, cuda) == "gather"
    # CPU, the dense-target config of the benchmarks
    assert choose_strategy(64, 4097, 50_000, 128, torch.float32, torch.device("cpu"), "torch") == "dense"
    assert choose_strategy(4, 65, 1_000_000, 128, torch.float32, torch.device("cpu"), "torch") == "gather"
    t_gather, t_dense = estimate_times(1024, 16385, 50_000, 128, torch.float32, cuda, "cuda")
    assert t_gather > 2 * t_dense


def test_cost_model_inside_a_graph_capture_counts_device_time_only():
    """Replayed from a CUDA graph, a call pays no host cost: CIFAR's B = 64 takes the
    dense path, whose bytes are ~20x fewer; ImageNet's small batches still gather."""
    cuda = torch.device("cuda")
    for backend in ("cuda", "triton"):
        assert choose_strategy(64, 16385, 50_000, 128, torch.float32, cuda, backend) == "gather"
        assert choose_strategy(64, 16385, 50_000, 128, torch.float32, cuda, backend, captured=True) == "dense"
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
    dense_mod = importlib.import_module("rdkernels.ops.bank_contrast.triton_dense")
    monkeypatch.setattr(dense_mod, "dense_splits", lambda m_blocks, n_tiles, device: (n_tiles, 1))
    monkeypatch.setattr(gather_mod, "_splits", lambda batch, n_cols, block_k, device: (-(-n_cols // block_k), block_k))
    # gather: 701 columns in 32-column tiles = 22 splits; dense: 1400 rows in 32-row tiles = 44 splits
    shape = (5, 700, 1400, 128) if strategy == "gather" else (5, 20, 1400, 128)
    _check("triton", strategy, epilogue, *_inputs(*shape), 1e-5, 1e-4)


def _csr_by_sorting(idx, n_bank, block_n):
    """The CSR as a full per-row sort gives it (each segment ascending)."""
    ids = torch.sort(idx[:, 1:].to(torch.int32), dim=1).values
    bounds = torch.arange(0, -(-n_bank // block_n) + 1, device=idx.device, dtype=torch.int32) * block_n
    return ids, torch.searchsorted(ids, bounds.expand(idx.shape[0], -1).contiguous(), out_int32=True)


@pytest.mark.skipif(not triton_runs, reason="the CSR builder is a Triton kernel")
def test_csr_layout():
    from rdkernels.ops.bank_contrast.csr import build_csr
    idx = torch.tensor([[0, 5, 1, 5, 70, 64], [3, 63, 64, 0, 0, 127]], device=DEVICE)
    ids, offsets = build_csr(idx, 130, 64)
    assert ids.dtype == torch.int32 and offsets.dtype == torch.int32
    assert torch.sort(ids, dim=1).values.tolist() == [[1, 5, 5, 64, 70], [0, 0, 63, 64, 127]]
    assert offsets.tolist() == [[0, 3, 5, 5], [0, 3, 5, 5]]


@pytest.mark.skipif(not triton_runs, reason="the CSR builder is a Triton kernel")
@pytest.mark.parametrize("batch,k,n_bank,block_n,idx_dtype", [
    (7, 3000, 500, 32, torch.int32),     # ~190 entries per (row, tile): many atomics on one counter
    (3, 1500, 100_000, 64, torch.int64),  # most tiles empty
    (2, 2500, 33, 16, torch.int64),       # ragged last tile
    (4, 1, 10, 64, torch.int64),          # one negative per row
])
def test_csr_matches_a_full_sort(batch, k, n_bank, block_n, idx_dtype):
    """Same offsets as a full sort; each (row, tile) segment the same multiset of ids."""
    from rdkernels.ops.bank_contrast.csr import build_csr
    idx = torch.randint(0, n_bank, (batch, k + 1), device=DEVICE, dtype=idx_dtype)
    ids, offsets = build_csr(idx, n_bank, block_n)
    want_ids, want_offsets = _csr_by_sorting(idx, n_bank, block_n)
    assert torch.equal(offsets, want_offsets)
    assert torch.equal(torch.sort(ids, dim=1).values, want_ids)
    tile_of = ids.long() // block_n   # every entry sits in its own tile's segment
    pos = torch.arange(k, device=DEVICE).expand(batch, -1)
    assert torch.equal(offsets.long().gather(1, tile_of) <= pos, torch.ones_like(pos, dtype=torch.bool))
    assert torch.equal(pos < offsets.long().gather(1, tile_of + 1), torch.ones_like(pos, dtype=torch.bool))


@pytest.mark.skipif(not triton_runs, reason="the CSR builder is a Triton kernel")
def test_csr_drops_out_of_range_ids():
    """With index checks off, a bad id is left out, never written out of bounds."""
    from rdkernels.ops.bank_contrast.csr import build_csr
    idx = torch.tensor([[0, 3, 50, -1, 7, 3]], device=DEVICE)
    ids, offsets = build_csr(idx, 10, 4)
    assert offsets.tolist() == [[0, 2, 3, 3]]
    assert sorted(ids[0, :3].tolist()) == [3, 3, 7]


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
    (more than the counting loop's ENTRY_CHUNK = 8, three steps and a bit) in
    every later tile: a program that walks all tiles meets its widest segments
    after its first tile. With the counting loop's trip count computed from the
    first tile (what Triton 3.6 compiled), every later tile would count 8 of them."""
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


# The Triton dense kernel's two loops, each driven hard on its own and together: many
# 32-row bank tiles in one program (the tile loop) and more than ENTRY_CHUNK = 8 entries
# of a row in one tile (the counting loop runs twice or more). The last case is the
# one Triton 3.6's hoisted trip count got wrong; the first two were wrong with it too
# whenever a later tile outgrew a program's first one.
DENSE_LOOP_CASES = {
    "many-entries-one-tile-a-program": ((32, 2048, 256, 128), None),   # ~256 entries a tile
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
        triton_dense = importlib.import_module("rdkernels.ops.bank_contrast.triton_dense")
        monkeypatch.setattr(triton_dense, "dense_splits", lambda m_blocks, n_tiles, device: (1, n_tiles))
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


def _defining_line(lines, name):
    pattern = re.compile(r"^\s*" + re.escape(name) + r"(:\d+)? = ")
    return next(i for i, line in enumerate(lines) if pattern.match(line))


@pytest.mark.parametrize("arch", [80, 90])
def test_dense_count_loop_bound_stays_in_the_tile_loop(arch):
    """Triton 3.6 computed the counting loop's trip count (a max over the rows' segment
    lengths) once, before the tile loop, from the first tile's CSR bounds, when those
    bounds were carried from tile to tile: on a GPU every later tile then counted at
    most that many entries a row. Compiled here (no GPU needed) with the installed
    Triton, the bound must be defined inside the tile loop, before the counting loop."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a real JIT function
    name = "bank_contrast_dense[nce,d128,q=fp32,bank=fp32]"
    done = subprocess.run([sys.executable, "-c", _COMPILE_DENSE_TTGIR, str(root / "tools" / "aot_check.py"), name,
                           str(arch)], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    loops = [i for i, line in enumerate(lines) if "scf.for" in line]
    assert len(loops) >= 2, "expected the tile loop and the counting loop inside it"
    tile_loop, count_loop = loops[0], loops[1]
    bound = re.search(r"scf\.for %\S+ = %\S+ to (%[\w#.]+) step", lines[count_loop]).group(1)
    assert tile_loop < _defining_line(lines, bound) < count_loop, (
        f"the counting loop's bound {bound} is computed outside the tile loop:\n"
        + "\n".join(lines[max(0, tile_loop - 20):count_loop + 1]))
