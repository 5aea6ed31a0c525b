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
    ones that cannot appear as skips, so a run shows what it did not test."""
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
