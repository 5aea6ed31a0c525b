"""Tiny runs for the harness tests: 2 classes x 16 images of 16x16, a 4-channel
resnet8, batch 4, K = 16, so a training step costs milliseconds on a CPU."""
from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from rdkernels.harness.distillers import LossOptions
from rdkernels.harness.config import TrainConfig

TINY_LOSS = LossOptions(feat_dim=16, nce_k=16, wcord_iters=20)


def tiny_config(**overrides) -> TrainConfig:
    cfg = TrainConfig(arch="resnet8_tiny", teacher_arch="resnet8_tiny", synthetic_n=32, synthetic_test_n=8,
                      num_classes=2, image_size=16, batch_size=4, epochs=2, workers=0, progress=False,
                      eval_every_epoch=False, device="cpu", loss=TINY_LOSS, log_every=5)
    return dataclasses.replace(cfg, **overrides)


_CLASS = {"kd": "KDLoss", "crd": "CRDLoss", "wcord": "WCoRDLoss", "dcd": "DCDLoss", "rrd": "RRDLoss"}


def require_loss(name: str, impl: str) -> None:
    """Skip (with the reason) when a loss module is not in this tree."""
    if impl == "fused":
        if not hasattr(importlib.import_module("rdkernels"), _CLASS[name]):
            pytest.skip(f"rdkernels.{_CLASS[name]} is not available")
    else:
        try:
            mod = importlib.import_module(f"rdkernels.losses.reference.{name}")
        except ImportError:
            pytest.skip(f"rdkernels.losses.reference.{name} is not available")
        if not hasattr(mod, _CLASS[name]):
            pytest.skip(f"rdkernels.losses.reference.{name}.{_CLASS[name]} is not available")


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: these models are tiny, and on a busy CPU several
    OpenMP threads spin against each other and run many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
