"""Glue between torch tensors and the raw-pointer interface of rdkernels._C."""
from __future__ import annotations

import functools
import importlib
import sys

import torch

from rdkernels.backend import cuda_index

# Must match rdk::DType in csrc/common.cuh.
_DTYPE_CODES = {
    torch.float32: 0,
    torch.bfloat16: 1,
    torch.float16: 2,
    torch.int32: 3,
    torch.int64: 4,
}


def dtype_code(t: torch.Tensor) -> int:
    return _DTYPE_CODES[t.dtype]


# torch's own raw-stream query (what Triton's launcher calls): an int, where
# torch.cuda.current_stream builds a Stream object first. CPU builds lack it.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def stream_of(t: torch.Tensor) -> int:
    """The raw cudaStream_t of the current stream on ``t``'s device."""
    if _raw_stream is None:
        return torch.cuda.current_stream(t.device).cuda_stream
    return _raw_stream(cuda_index(t.device))


@functools.lru_cache(maxsize=None)
def _shared_memory_limit(device_index: int) -> int:
    from rdkernels.backend import cuda_extension
    with torch.cuda.device(device_index):
        return cuda_extension().max_shared_memory_per_block()


def shared_memory_shortfall(device: torch.device, needed: int) -> str | None:
    """Why a kernel needing ``needed`` bytes of shared memory per block cannot run on
    ``device``, or None if it can. The opt-in limit is 99 KB on sm_86/sm_89/sm_120
    (RTX 30/40, A10, L4, L40S), 163 KB on sm_80 and 227 KB on sm_90, so a shape an
    H100 takes may not fit on a workstation GPU; asked once per device."""
    limit = _shared_memory_limit(cuda_index(device))
    if needed <= limit:
        return None
    return f"it needs {needed} bytes of shared memory per block and this GPU allows {limit}"


@torch.compiler.assume_constant_result
def kernel_shortfall(device: torch.device, kernel: str, *sizes: int) -> str | None:
    """``shared_memory_shortfall`` of the extension's ``kernel`` at ``sizes`` (its
    ``<kernel>_shared_memory_bytes(*sizes)``) on ``device``. Backend choice asks this
    while torch.compile traces the loss: dynamo cannot trace the extension's or the
    driver's host calls (a fullgraph compile failed on them), and the answer is a
    constant of the kernel, the sizes and the GPU, so the trace runs it once and
    keeps the result. Eager calls ask once per extension, kernel and sizes."""
    from rdkernels.backend import cuda_extension
    module = cuda_extension()
    sizes = tuple(map(int, sizes))   # plain ints: a size may come in as a tensor's symbolic one
    key = (module, kernel, sizes)
    needed = _needed_bytes.get(key)
    if needed is None:
        needed = _needed_bytes[key] = getattr(module, f"{kernel}_shared_memory_bytes")(*sizes)
    return shared_memory_shortfall(device, needed)


_needed_bytes: dict = {}   # (extension, kernel, sizes) -> bytes; the module is the key, not its id


# The ops' CUDA wrappers: each imports cuda_extension and stream_of by name.
WRAPPERS = ("rdkernels.ops.bank_contrast.cuda", "rdkernels.ops.dcd.cuda", "rdkernels.ops.shared_bank_contrast.cuda",
            "rdkernels.ops.sinkhorn.cuda", "rdkernels.ops.bank_update.cuda")


def extension_patches(module) -> list[tuple[object, str, object]]:
    """(object, attribute, value) patches that point the ops' CUDA wrappers at ``module``
    in place of rdkernels._C, on CPU tensors and stream 0: the CPU emulation of the
    kernels in the tests, the stubbed launches of ``benchmarks.host``. The
    shared-memory checks ask ``module`` too, once per device as for the real one.
    Whoever applies them undoes them (pytest's monkeypatch, unittest.mock)."""
    from rdkernels import backend
    patches: list[tuple[object, str, object]] = []
    for name in WRAPPERS:
        wrapper = importlib.import_module(name)
        patches += [(wrapper, "cuda_extension", lambda: module), (wrapper, "stream_of", lambda tensor: 0)]
    this, device_index = sys.modules[__name__], cuda_index
    # cached, as the function it stands in for (tests clear that cache)
    limit = functools.lru_cache(maxsize=None)(lambda index: module.max_shared_memory_per_block())
    return patches + [
        (backend, "cuda_extension", lambda: module),
        (this, "cuda_index", lambda device: 0 if torch.device(device).type == "cpu" else device_index(device)),
        (this, "_shared_memory_limit", limit),
    ]
