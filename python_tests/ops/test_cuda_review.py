"""The CUDA wrappers (rdkernels/ops/*/cuda.py) against the extension's interface.

Without a GPU the extension cannot run a kernel, so a stand-in takes its place
and checks every call against csrc: the argument count of the binding
(bindings.cpp), the Python type each C++ parameter takes (headers), that each
pointer is 0 or points into a tensor (its data_ptr, or an element of it: the
wrappers carve several buffers out of one allocation), and that the tensor has the dtype the
kernel reads it as: the one its dtype code names, int32 for the sample
counts, done flags and iteration counts, float32 for everything else. A
swapped or missing argument fails here, in CI, instead of as garbage on the
next GPU run.
"""
from __future__ import annotations

import importlib
import pathlib
import re

import pytest
import torch

from rdkernels.backend import triton_unavailable_reason
from rdkernels.ops._cuda_common import _DTYPE_CODES

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
PY_TYPES = {"uintptr_t": int, "int": int, "int64_t": int, "float": float, "bool": bool}
INT32_POINTERS = {"counts", "done", "n_iters"}
SHARED_CODES = {"q_t": "q_dtype", "q_s": "q_dtype", "z_s": "z_dtype", "z_t": "z_dtype"}  # else bank -> bank_dtype

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="the stand-in takes CPU tensors"),
    # the stand-in writes no partials, so the merge kernels after it read uninitialised buffers
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


def _signatures() -> dict:
    """{function: [(C++ type, name)]} from the headers and the bindings' argument names."""
    sigs = {}
    for header in CSRC.glob("*.h"):
        for name, params in re.findall(r"\b(?:void|int|int64_t|std::string|std::vector<int>)\s+(\w+)\(([^)]*)\);",
                                       header.read_text()):
            sigs[name] = [tuple(p.split()) for p in params.split(",") if p.strip()]
    bindings = (CSRC / "bindings.cpp").read_text()
    for name, body in re.findall(r'm\.def\("(\w+)",\s*&rdk::\w+,(.*?)\);', bindings, re.S):
        assert [n for _, n in sigs[name]] == re.findall(r'py::arg\("(\w+)"\)', body), name
    return sigs


class _StandIn:
    """Records the calls; each one checked as described in the module docstring."""

    def __init__(self, pointers: list):
        self.sigs, self.pointers, self.calls = _signatures(), pointers, []
        dense = (CSRC / "bank_contrast_dense.cu").read_text()
        self.consts = {f"dense_{k}": int(re.search(rf"constexpr int {c} = (\d+);", dense).group(1))
                       for k, c in (("block_m", "kBM"), ("block_n", "kBN"), ("max_dim", "kDenseMaxDim"))}
        header = (CSRC / "bank_contrast.h").read_text()
        self.consts["sample_count_max_chunk_words"] = int(
            re.search(r"kSampleCountMaxChunkWords = (\d+);", header).group(1))

    def _owner(self, ptr: int):
        """The dtype of the tensor ``ptr`` points into, at an element boundary, or None; the
        newest such tensor, since the allocator reuses the memory of freed ones."""
        for base, dtype, nbytes in reversed(self.pointers):
            if base <= ptr < base + max(nbytes, 1) and (ptr - base) % dtype.itemsize == 0:
                return dtype
        return None

    def __getattr__(self, name):
        if name in self.consts:
            return lambda: self.consts[name]
        if name.endswith("_shared_memory_bytes"):  # a host-side size, not a launch
            return lambda *args: 0
        if name.endswith("_scratch_bytes"):       # likewise: a buffer for the pointers to point into
            return lambda *args: 1024
        params = self.sigs[name]

        def call(*args):
            assert len(args) == len(params), f"{name}: {len(args)} arguments for {len(params)} parameters"
            values = {}
            for (ctype, pname), value in zip(params, args):
                assert type(value) is PY_TYPES[ctype], f"{name}({pname}): {type(value).__name__} for {ctype}"
                values[pname] = value
            for (ctype, pname), value in zip(params, args):
                if ctype != "uintptr_t" or pname == "stream" or value == 0:
                    continue
                owner = self._owner(value)
                assert owner is not None, f"{name}({pname}): not a pointer into a tensor"
                code = values.get(SHARED_CODES.get(pname, f"{pname}_dtype"))
                want = (code if code is not None else
                        _DTYPE_CODES[torch.int32 if pname in INT32_POINTERS else torch.float32])
                got = _DTYPE_CODES.get(owner)
                assert got == want, f"{name}({pname}): a {owner} tensor, dtype code {want} expected"
            self.calls.append((name, values))
        return call


@pytest.fixture
def ext(monkeypatch):
    pointers = []
    data_ptr = torch.Tensor.data_ptr

    def recording_data_ptr(t):
        ptr = data_ptr(t)
        pointers.append((ptr, t.dtype, t.numel() * t.element_size()))
        return ptr

    monkeypatch.setattr(torch.Tensor, "data_ptr", recording_data_ptr)
    stand_in = _StandIn(pointers)
    for op in ("bank_contrast", "bank_update", "dcd", "shared_bank_contrast", "sinkhorn"):
        module = importlib.import_module(f"rdkernels.ops.{op}.cuda")
        monkeypatch.setattr(module, "cuda_extension", lambda: stand_in)
        monkeypatch.setattr(module, "stream_of", lambda t: 0)
    bc = importlib.import_module("rdkernels.ops.bank_contrast.cuda")
    monkeypatch.setattr(bc, "kernel_shortfall", lambda device, kernel, *sizes: None)  # no GPU to ask
    monkeypatch.setattr(bc, "_gather_splits", lambda batch, n_cols, device: (2, -(-n_cols // 2)))
    dense = importlib.import_module("rdkernels.ops.bank_contrast.dense")
    monkeypatch.setattr(dense, "dense_splits", lambda m_blocks, n_tiles, device: (2, -(-n_tiles // 2)))
    sbc = importlib.import_module("rdkernels.ops.shared_bank_contrast.cuda")
    monkeypatch.setattr(sbc, "num_splits_cuda", lambda *args: (2, 32))
    return stand_in


@pytest.mark.parametrize("query_dtype,bank_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                    (torch.float16, torch.float32)])
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
def test_bank_contrast_calls(ext, query_dtype, bank_dtype, idx_dtype):
    reason = triton_unavailable_reason(torch.device("cpu"))
    if reason:  # its merges and the dense strategy's table are Triton kernels
        pytest.skip(reason)
    bc = importlib.import_module("rdkernels.ops.bank_contrast.cuda")
    B, K, N, d = 3, 5, 70, 64
    q = torch.randn(B, d).to(query_dtype)
    bank = torch.randn(N, d).to(bank_dtype)
    idx = torch.randint(0, N, (B, K + 1), dtype=idx_dtype)
    z = torch.full((1,), 5.0)
    for epilogue in ("nce", "softmax"):
        zz = z if epilogue == "nce" else None
        bc.bank_contrast_loss_cuda(q, bank, idx, zz, 0.1, epilogue, 100)
        bc.bank_contrast_loss_dense_cuda(q, bank, idx, zz, 0.1, epilogue, 100)
    bc.bank_scores_cuda(q, bank, idx, 0.1)
    bc.bank_scores_backward_cuda(torch.randn(B, K + 1), q, bank, idx, 0.1)
    assert [c[0] for c in ext.calls] == ["bank_contrast", "sample_counts", "bank_contrast_dense"] * 2 + \
        ["bank_contrast"] * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("need_grad", [True, False])
def test_dcd_and_shared_bank_calls(ext, dtype, need_grad):
    dcd = importlib.import_module("rdkernels.ops.dcd.cuda")
    sbc = importlib.import_module("rdkernels.ops.shared_bank_contrast.cuda")
    z_s, z_t = torch.randn(20, 48).to(dtype), torch.randn(20, 48).to(dtype)
    dcd.dcd_cuda(z_s, z_t, torch.tensor([1.0]), torch.tensor(0.0), 10.0, 0.5, need_grad)
    sbc.shared_bank_contrast_cuda(z_s, z_t, torch.randn(64, 48).to(torch.bfloat16), 0.02, 0.1, need_grad)
    (_, dcd_args), (_, sbc_args) = ext.calls
    assert (dcd_args["dzs"] != 0) == need_grad and (sbc_args["dq"] != 0) == need_grad


@pytest.mark.parametrize("n,m", [(10, 12), (300, 12)])  # one launch; the tiled path
@pytest.mark.parametrize("tol", [None, 1e-3])
def test_sinkhorn_and_bank_update_calls(ext, n, m, tol):
    sk = importlib.import_module("rdkernels.ops.sinkhorn.cuda")
    bu = importlib.import_module("rdkernels.ops.bank_update.cuda")
    cost = torch.rand(2, n, m).to(torch.bfloat16)
    sk.sinkhorn_cuda(cost, torch.full((2, n), 1 / n), torch.full((2, m), 1 / m), 0.1, 3, tol, 1, True)
    bu.bank_update_cuda_(torch.randn(30, 8), torch.arange(4, dtype=torch.int32), torch.randn(4, 8).half(), 0.5)
    names = [c[0] for c in ext.calls]
    assert names[0] == ("sinkhorn" if n <= sk.FUSED_MAX else "sinkhorn_rows") and names[-1] == "bank_update"
