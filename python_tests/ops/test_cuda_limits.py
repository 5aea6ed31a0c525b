"""Shapes the CUDA kernels take only on GPUs with enough shared memory.

The RRD (shared_bank_contrast) CUDA kernel keeps width-sized strips in shared
memory, and bank contrast's dense kernel 64-row tiles (84 992 B at d = 128; a
GPU that gives a block less runs torch's dense path); DCD's tiles are static and
small, so any shape runs anywhere. A block may opt in to 227 KB on an H100 and
163 KB on an A100, but only 99 KB on sm_86/sm_89 GPUs (RTX 30/40, A10, L4,
L40S), so a shape an H100 runs must move to the next backend there under
``auto``, and an explicit ``backend="cuda"`` must say why. The launchers also
refuse such a launch with the same message (csrc/common.cuh,
reserve_shared_memory).

The sizes come from the built extension (pure host functions, no GPU needed);
the device's limit is the stand-in here.
"""
import importlib
from types import SimpleNamespace

import pytest
import torch

from rdkernels import backend as _backend
from rdkernels.ops import _cuda_common
from python_tests.helpers import not_under_emulated_cuda

dcd_op = importlib.import_module("rdkernels.ops.dcd")
sbc_op = importlib.import_module("rdkernels.ops.shared_bank_contrast")  # the package exports a function of that name

_C = pytest.importorskip("rdkernels._C", reason="the CUDA extension is not built")

SM86, SM80, SM90 = 101376, 166912, 232448   # opt-in bytes per block
DENSE_128 = 84992                            # the dense kernel's block at d = 128


def test_sizes_follow_the_kernels_layouts():
    # dcd's scratch (no shared memory to opt in to): S and S^T [2, ld, ld] with ld = B rounded up to
    # its 64-row tiles, partials [4, tiles, ld], R and C [2, ld], six column sums [6, ld]
    assert _C.dcd_scratch_bytes(1024) == (2 * 1024 ** 2 + 4 * 16 * 1024 + 2 * 1024 + 6 * 1024) * 4
    assert _C.dcd_scratch_bytes(100) == (2 * 128 ** 2 + 4 * 2 * 128 + 2 * 128 + 6 * 128) * 4
    # shared_bank_contrast: a [32, d | 1] queue tile and two [16, d] query blocks
    assert _C.shared_bank_contrast_shared_memory_bytes(512) == (32 * 513 + 2 * 16 * 512) * 4 == 131200
    # ... whose rows are padded to an odd stride only where d is even (bank-conflict-free reads)
    assert _C.shared_bank_contrast_shared_memory_bytes(127) == (32 * 127 + 2 * 16 * 127) * 4
    # bank contrast, dense: [64, DP + 4] query and bank tiles, [64, 68] coefficients (counts live in registers)
    for dim, padded in ((1, 64), (64, 64), (65, 128), (128, 128)):
        assert _C.dense_shared_memory_bytes(dim) == (2 * 64 * (padded + 4) + 64 * 68) * 4
    assert _C.dense_shared_memory_bytes(128) == DENSE_128


@pytest.fixture
def on_gpu_with(monkeypatch):
    """A stand-in CUDA tensor on a device whose shared memory limit the test sets."""
    def make(limit, *shape):
        _cuda_common._shared_memory_limit.cache_clear()
        monkeypatch.setattr(_cuda_common, "_shared_memory_limit", lambda index: limit)
        monkeypatch.setattr(_backend, "resolve", lambda device, op, requested=None: requested or "cuda")
        monkeypatch.setattr(_backend, "triton_unavailable_reason", lambda device: None)
        return SimpleNamespace(shape=shape, device=torch.device("cuda", 0), is_cuda=True)
    return make


@pytest.mark.parametrize("batch,dim", [(1024, 128), (4096, 128), (1024, 512)])
@pytest.mark.parametrize("requested", [None, "cuda"])
def test_dcd_takes_every_shape_on_the_smallest_gpu(on_gpu_with, batch, dim, requested):
    assert dcd_op._resolve(on_gpu_with(SM86, batch, dim), requested) == "cuda"


@pytest.mark.parametrize("limit,dim,expected", [(SM86, 256, "cuda"), (SM86, 512, "torch"), (SM80, 512, "cuda")])
def test_shared_bank_contrast_auto_moves_past_what_the_gpu_holds(on_gpu_with, limit, dim, expected):
    assert sbc_op._resolve(on_gpu_with(limit, 64, dim), None) == expected


def test_shared_bank_contrast_explicit_cuda_says_why(on_gpu_with):
    q_s = on_gpu_with(SM86, 64, 512)
    with pytest.raises(_backend.BackendUnavailable, match="131200 bytes of shared memory.*allows 101376"):
        sbc_op._resolve(q_s, "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_limit_is_the_devices():
    """The opt-in limit (above the 48 KB every block gets), the known value where the
    architecture has one: a regression to the default attribute would read 48 KB."""
    limit = _cuda_common._shared_memory_limit(torch.cuda.current_device())
    capability = torch.cuda.get_device_capability()
    known = {(8, 0): SM80, (9, 0): SM90, (8, 6): SM86, (8, 9): SM86, (12, 0): SM86}
    if capability in known:
        assert limit == known[capability]
    assert limit > 48 * 1024 if capability >= (8, 0) else limit >= 48 * 1024


@not_under_emulated_cuda
@pytest.mark.parametrize("limit,dim,runs", [(SM86, 128, True), (DENSE_128, 128, True), (DENSE_128 - 1, 128, False),
                                            (DENSE_128 - 1, 64, True), (SM90, 129, False)])
def test_the_dense_kernel_leaves_what_the_gpu_cannot_hold_to_torch(on_gpu_with, limit, dim, runs):
    from rdkernels.ops.bank_contrast.cuda import dense_kernel_shortfall
    reason = dense_kernel_shortfall(on_gpu_with(limit, 64, dim).device, dim)
    assert (reason is None) == runs, reason


@pytest.mark.parametrize("limit,expected", [(SM90, 1.0), (SM86, 2.0)])
def test_the_shared_memory_check_traces_into_a_fullgraph_compile(on_gpu_with, limit, expected):
    """torch.compile(fullgraph=True) of a loss traces backend choice, which asks the
    extension and the driver for sizes and limits: host calls dynamo cannot trace
    (the DCD and RRD losses' fullgraph compiles failed on them, on an H100). The
    check runs once while tracing and its answer is a constant of the graph."""
    on_gpu_with(limit, 64, 512)
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="eager")
    def pick(x):
        fits = _cuda_common.kernel_shortfall(torch.device("cuda", 0), "shared_bank_contrast", 512) is None
        return x * (1.0 if fits else 2.0)

    assert pick(torch.ones(3)).tolist() == [expected] * 3
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_kernels_launch_on_the_callers_stream():
    t = torch.zeros(1, device="cuda")
    side = torch.cuda.Stream()
    assert _cuda_common.stream_of(t) == torch.cuda.current_stream().cuda_stream
    with torch.cuda.stream(side):
        assert _cuda_common.stream_of(t) == side.cuda_stream != torch.cuda.default_stream().cuda_stream


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_sm_count_is_the_devices():
    device = torch.device("cuda")
    assert _backend.multiprocessor_count(device) == torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
