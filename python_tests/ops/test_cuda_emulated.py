"""The CUDA extension's kernels (bank contrast, DCD, shared-bank contrast, bank
update, Sinkhorn) against the float64 references, run on the CPU through the
emulation of python_tests/cuda_emulation.py: every kernel path of the ops' CUDA
wrappers, with each block's threads scheduled in three orders, so that a
shared-memory race shows as a wrong value. The same wrappers run on a GPU in
the backend tests."""
from __future__ import annotations

import os

import pytest
import torch

from python_tests import cuda_emulation
from python_tests.helpers import assert_close, tolerance, unit_rows
from rdkernels.backend import triton_interpreter_enabled
from rdkernels.ops.bank_contrast.reference import bank_contrast_reference
from rdkernels.ops.bank_update.reference import bank_update_reference_
from rdkernels.ops.dcd.reference import dcd_reference
from rdkernels.ops.shared_bank_contrast.reference import shared_bank_contrast_reference
from rdkernels.ops.sinkhorn.reference import sinkhorn_reference


@pytest.fixture(scope="module")
def extension():
    try:
        return cuda_emulation.build()
    except cuda_emulation.EmulationUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=cuda_emulation.ORDERS)
def emulated(request, extension, monkeypatch):
    cuda_emulation.install(extension, monkeypatch, order=request.param)
    return extension


# ------------------------------------------------------------------- bank contrast

# The CUDA bank-contrast wrappers count samples and merge splits with Triton kernels,
# which take these CPU tensors only under Triton's interpreter (a GPU machine runs
# the real kernels in the backend tests instead).
needs_interpreter = pytest.mark.skipif(not triton_interpreter_enabled(),
                                       reason="the bank-contrast merges need Triton's interpreter on CPU tensors")

def _bank_case(batch, cols, n_bank, dim, bank_dtype, idx_dtype=torch.int64):
    query = torch.randn(batch, dim) * 0.5
    bank = unit_rows(n_bank, dim, bank_dtype)
    idx = torch.randint(0, n_bank, (batch, cols), dtype=idx_dtype)
    return query, bank, idx


def _bank_expected(query, bank, idx, epilogue, z, n_data):
    q64 = query.double().requires_grad_()
    rows = bank_contrast_reference(q64, bank.double(), idx, temperature=0.07, epilogue=epilogue, z=z.double(),
                                   n_data=n_data, reduction="none")
    rows.sum().backward()
    return rows, q64.grad


BANK_SHAPES = [(3, 17, 40, 32), (5, 70, 100, 128), (2, 9, 30, 48)]   # (B, K + 1, N, d)


@needs_interpreter
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
@pytest.mark.parametrize("batch,cols,n_bank,dim", BANK_SHAPES)
def test_bank_contrast_gather(emulated, batch, cols, n_bank, dim, epilogue, bank_dtype):
    from rdkernels.ops.bank_contrast.cuda import bank_contrast_loss_cuda
    query, bank, idx = _bank_case(batch, cols, n_bank, dim, bank_dtype, torch.int32 if dim == 48 else torch.int64)
    z = torch.tensor([3.0])
    loss, dq = bank_contrast_loss_cuda(query, bank, idx, z, 0.07, epilogue, n_bank)
    rows, grad = _bank_expected(query, bank, idx, epilogue, z, n_bank)
    assert_close("loss", loss, rows, 1e-5, 1e-4)
    assert_close("dq", dq, grad, 1e-5, 1e-4)


@needs_interpreter
@pytest.mark.parametrize("batch,cols,n_bank,dim", BANK_SHAPES)
def test_bank_scores_gather(emulated, batch, cols, n_bank, dim):
    from rdkernels.ops.bank_contrast.cuda import bank_scores_backward_cuda, bank_scores_cuda
    query, bank, idx = _bank_case(batch, cols, n_bank, dim, torch.float32)
    scores = bank_scores_cuda(query, bank, idx, 0.07)
    expected = bank_contrast_reference(query.double(), bank.double(), idx, temperature=0.07, epilogue="scores")
    assert_close("scores", scores, expected, 1e-5, 1e-5)
    grad_scores = torch.randn(batch, cols)
    dq = bank_scores_backward_cuda(grad_scores, query, bank, idx, 0.07)
    expected_dq = torch.einsum("bk,bkd->bd", grad_scores.double(), bank.double()[idx]) / 0.07
    assert_close("dq", dq, expected_dq, 1e-5, 1e-5)


@needs_interpreter
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("epilogue", ["nce", "softmax"])
@pytest.mark.parametrize("batch,cols,n_bank,dim", [(5, 33, 150, 128), (70, 9, 90, 64), (3, 200, 70, 32)])
def test_bank_contrast_dense(emulated, batch, cols, n_bank, dim, epilogue, bank_dtype):
    """The dense strategy: 3xTF32 tensor-core tiles over the whole bank, the sampled
    multiplicities from the packed counts, 64-row query blocks (B = 70 has two)."""
    from rdkernels.ops.bank_contrast.cuda import bank_contrast_loss_dense_cuda
    query, bank, idx = _bank_case(batch, cols, n_bank, dim, bank_dtype)
    idx[:, 3] = idx[:, 0]  # a positive that is also a negative counts once as each
    z = torch.tensor([3.0])
    loss, dq = bank_contrast_loss_dense_cuda(query, bank, idx, z, 0.07, epilogue, n_bank)
    rows, grad = _bank_expected(query, bank, idx, epilogue, z, n_bank)
    assert_close("loss", loss, rows, 1e-5, 1e-4)
    assert_close("dq", dq, grad, 1e-5, 1e-4)


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("batch,cols,n_bank", [(3, 200, 70), (2, 3000, 500), (4, 1, 64), (5, 40, 30_000)])
def test_sample_counts(emulated, batch, cols, n_bank, idx_dtype):
    """The CUDA backend's packed sample counts against bincount: rows cut into chunks
    (three on a CPU; at least two at N = 30 000, past one block's 48 KB), ids repeated
    within a word, ids outside the bank dropped, and every word written, padding
    included, into a buffer that was not zeroed."""
    from rdkernels.ops._cuda_common import dtype_code
    from rdkernels.ops.bank_contrast.cuda import _count_chunk_words, count_samples_cuda
    from rdkernels.ops.bank_contrast.sample_counts import unpack_counts, words_per_row
    idx = torch.randint(0, n_bank, (batch, cols), dtype=idx_dtype)
    if cols > 4:
        idx[:, 2], idx[:, 3], idx[:, 4] = -1, n_bank, idx[:, 5]   # two dropped ids, a repeated one
    neg = idx[:, 1:].long()
    expected = torch.stack([torch.bincount(r[(r >= 0) & (r < n_bank)], minlength=n_bank) for r in neg])
    counts = count_samples_cuda(idx, n_bank)
    assert counts.dtype == torch.int32 and counts.shape == (batch, words_per_row(n_bank))
    words = words_per_row(n_bank)
    every_row = unpack_counts(counts, 2 * words)   # the padding's rows too: none counted
    assert torch.equal(every_row[:, :n_bank], expected.to(torch.int32)) and not every_row[:, n_bank:].any()
    poisoned = torch.full((batch, words), -1, dtype=torch.int32)
    chunk = _count_chunk_words(batch, words, idx.device, emulated.sample_count_max_chunk_words())
    assert -(-words // chunk) >= (3 if words >= 3 * 256 else 1)
    emulated.sample_counts(idx.data_ptr(), dtype_code(idx), poisoned.data_ptr(), batch, cols - 1, n_bank,
                           idx.stride(0), poisoned.stride(0), words, chunk, 0)
    assert torch.equal(poisoned, counts)   # padding words (rows past n_bank) are zero too


@needs_interpreter
def test_sample_counts_of_a_large_bank_go_to_the_triton_kernel(emulated, monkeypatch):
    """Past MAX_COUNT_CHUNKS histograms a row, the rows' negatives would be read once a
    chunk: the Triton kernel (one global atomic a negative) builds those counts."""
    from rdkernels.ops.bank_contrast import cuda as bc_cuda, triton_counts
    from rdkernels.ops.bank_contrast.sample_counts import unpack_counts
    built = []
    real = triton_counts.count_samples_triton
    monkeypatch.setattr(triton_counts, "count_samples_triton", lambda idx, n: built.append(n) or real(idx, n))
    n_bank = 2 * bc_cuda.MAX_COUNT_CHUNKS * emulated.sample_count_max_chunk_words() + 64
    idx = torch.randint(0, n_bank, (2, 30))
    counts = bc_cuda.count_samples_cuda(idx, n_bank)
    assert built == [n_bank]
    expected = torch.stack([torch.bincount(r, minlength=n_bank) for r in idx[:, 1:]]).to(torch.int32)
    assert torch.equal(unpack_counts(counts, n_bank), expected)
    assert bc_cuda.count_samples_cuda(idx % 1000, 1000) is not None and built == [n_bank]   # a small bank: CUDA


@pytest.mark.skipif(bool(os.environ.get("RDKERNELS_EMULATION_SANITIZE")),
                    reason="a C++ exception aborts the process under the AddressSanitizer preload")
def test_sample_counts_refuse_a_chunk_past_shared_memory(emulated):
    most = emulated.sample_count_max_chunk_words()
    counts = torch.zeros(1, 2 * most, dtype=torch.int32)
    idx = torch.zeros(1, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="chunk_words"):
        emulated.sample_counts(idx.data_ptr(), 4, counts.data_ptr(), 1, 2, 4 * most, 3, 2 * most, 2 * most, most + 1,
                               0)


# ---------------------------------------------------------------------------- DCD

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("batch,dim", [(1, 16), (5, 16), (40, 64), (100, 256), (130, 40)])  # 1 to 3 tiles
@pytest.mark.parametrize("need_grad", [True, False], ids=["grad", "nograd"])
def test_dcd(emulated, batch, dim, dtype, need_grad):
    from rdkernels.ops.dcd.cuda import dcd_cuda
    z_s, z_t = unit_rows(batch, dim, dtype), unit_rows(batch, dim, dtype)
    tau, bias = torch.tensor([0.7]), torch.tensor([-0.3])
    loss, grads = dcd_cuda(z_s, z_t, tau, bias, 10.0, 0.5, need_grad)
    inputs = [z_s.double().requires_grad_(), z_t.double().requires_grad_(),
              tau.double().reshape(()).requires_grad_(), bias.double().reshape(()).requires_grad_()]
    expected = dcd_reference(*inputs, alpha=0.5, max_scale=10.0)
    expected.backward()
    atol, rtol = tolerance(torch.float32)  # the inputs are rounded alike: fp32 arithmetic on both sides
    assert_close("loss", loss.reshape(()), expected, atol, rtol)
    if not need_grad:
        assert grads.numel() == 0
        return
    bd = batch * dim
    for name, got, x in (("dz_s", grads[:bd], inputs[0]), ("dz_t", grads[bd:2 * bd], inputs[1]),
                         ("dtau", grads[2 * bd], inputs[2]), ("dbias", grads[2 * bd + 1], inputs[3])):
        assert_close(name, got.reshape(x.shape), x.grad, atol, rtol)


# ------------------------------------------------------------- shared-bank contrast

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch,rows,dim", [(1, 7, 16), (5, 70, 32), (33, 300, 128), (4, 90, 512)])
def test_shared_bank_contrast(emulated, batch, rows, dim, dtype):
    from rdkernels.ops.shared_bank_contrast.cuda import shared_bank_contrast_cuda
    q_s, q_t, queue = unit_rows(batch, dim, dtype), unit_rows(batch, dim, dtype), unit_rows(rows, dim, dtype)
    loss, dq = shared_bank_contrast_cuda(q_s, q_t, queue, 0.1, 0.05, True)
    q64 = q_s.double().requires_grad_()
    expected = shared_bank_contrast_reference(q64, q_t.double(), queue.double(), 0.1, 0.05)
    expected.sum().backward()
    atol, rtol = tolerance(torch.float32)
    assert_close("loss", loss, expected, atol, rtol)
    assert_close("dq_s", dq, q64.grad, atol, rtol)
    loss_only, _ = shared_bank_contrast_cuda(q_s, q_t, queue, 0.1, 0.05, False)
    assert torch.equal(loss_only, loss)


# --------------------------------------------------------------------- bank update

@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("values_dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("dim", [16, 128, 300])
def test_bank_update(emulated, dim, bank_dtype, values_dtype, index_dtype):
    from rdkernels.ops.bank_update.cuda import bank_update_cuda_
    bank = unit_rows(50, dim, bank_dtype)
    index = torch.tensor([3, 17, 3, 49, 0, 17, 17], dtype=index_dtype)  # duplicates: the last one wins
    values = torch.randn(index.numel(), dim).to(values_dtype)
    expected = bank_update_reference_(bank.double(), index, values.double(), 0.5)
    bank_update_cuda_(bank, index, values, 0.5)
    atol, rtol = tolerance(bank_dtype)
    assert_close("bank", bank, expected, atol, rtol)


# ------------------------------------------------------------------------ Sinkhorn

@pytest.mark.parametrize("problems,n,m", [(1, 1, 3), (3, 20, 33), (2, 100, 64), (2, 130, 256), (2, 300, 40)])
@pytest.mark.parametrize("registers", [False, True], ids=["shared", "registers"])
def test_sinkhorn(emulated, monkeypatch, problems, n, m, registers):
    from rdkernels.ops.sinkhorn import cuda as sinkhorn_cuda_module
    monkeypatch.setenv(sinkhorn_cuda_module.REGISTERS_ENV, "1" if registers else "0")
    cost = torch.rand(problems, n, m)
    a = torch.softmax(torch.randn(problems, n), dim=1)
    b = torch.softmax(torch.randn(problems, m), dim=1)
    got = sinkhorn_cuda_module.sinkhorn_cuda(cost, a, b, 0.1, 30, tol=None, return_plan=True)
    want = sinkhorn_reference(cost.double(), a.double(), b.double(), 0.1, 30, return_plan=True)
    atol, rtol = 1e-4, 1e-4  # 30 iterations of fp32 log-sum-exps against float64
    for name, x, y in zip(("f", "g", "cost", "plan"), got[:4], want[:4]):
        assert_close(name, x, y, atol, rtol)
    assert torch.equal(got[4].long(), want[4].long())


def test_sinkhorn_stops_on_tolerance(emulated):
    from rdkernels.ops.sinkhorn.cuda import sinkhorn_cuda
    cost = torch.rand(3, 24, 17)
    a, b = torch.full((3, 24), 1 / 24), torch.full((3, 17), 1 / 17)
    got = sinkhorn_cuda(cost, a, b, 0.5, 200, tol=1e-6)
    want = sinkhorn_reference(cost.double(), a.double(), b.double(), 0.5, 200, tol=1e-6)
    assert (got[4] < 200).all()
    assert (got[4].long() - want[4].long()).abs().max() <= 1  # fp32 vs fp64 may cross tol one step apart
