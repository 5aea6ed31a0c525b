"""Shared test setup.

Without a GPU the Triton kernels run under Triton's interpreter; the variable
must be set before any kernel module is imported, so it is set here, first.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import rdkernels  # noqa: E402
from rdkernels.backend import available_backends  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _emulate_cuda_backend() -> None:
    """RDKERNELS_TEST_EMULATED_CUDA=1 on a machine without a GPU: the cuda backend runs
    on CPU tensors through the CPU emulation of the extension's kernels
    (python_tests/cuda_emulation.py), so every test parametrised over backends runs
    its cuda case too."""
    from python_tests import cuda_emulation
    from rdkernels import backend as _backend
    extension = cuda_emulation.build()
    patch = pytest.MonkeyPatch()  # for the whole session
    cuda_emulation.install(extension, patch)
    reason, device_reason = _backend.cuda_unavailable_reason, _backend.cuda_device_reason

    def emulated_reason(device, op):
        if torch.device(device).type != "cpu":
            return reason(device, op)
        return None if hasattr(extension, op) else f"the CUDA emulation has no kernel for {op!r}"
    patch.setattr(_backend, "cuda_unavailable_reason", emulated_reason)
    # the ops with no CUDA kernel take torch's formulation under the emulated cuda backend
    patch.setattr(_backend, "cuda_device_reason",
                  lambda device: None if torch.device(device).type == "cpu" else device_reason(device))


from python_tests.helpers import EMULATED_CUDA  # noqa: E402

if EMULATED_CUDA:
    _emulate_cuda_backend()


@pytest.fixture(autouse=True)
def _seed_and_reset_backend():
    torch.manual_seed(0)
    rdkernels.set_backend("auto")
    yield
    rdkernels.set_backend("auto")


@pytest.fixture
def device():
    return DEVICE


def backends(op: str) -> list:
    """pytest params for every concrete backend that can run ``op`` here; the
    ones that cannot appear as skips, so a run shows what it did not test. ``op``
    is a name ``python -m rdkernels`` reports: a misspelt one would make the cuda
    case a skip on every machine (the extension has no kernel of that name)."""
    from rdkernels.__main__ import OPS, TRITON_ONLY_OPS
    if op not in OPS + TRITON_ONLY_OPS:
        raise ValueError(f"unknown op {op!r}: one of {OPS + TRITON_ONLY_OPS}")
    here = available_backends(DEVICE, op)
    params = []
    for name in ("torch", "triton", "cuda"):
        marks = [] if name in here else [pytest.mark.skip(reason=f"backend {name} unavailable on {DEVICE.type}")]
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
