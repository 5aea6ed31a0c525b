"""A thin training harness: what the kernels buy in a real distillation run.

``python -m rdkernels.harness train-teacher|distill|compare ...``; the same from
Python through :class:`TrainConfig`, :class:`Trainer` and :func:`compare`.
Models are the CIFAR ResNets and WRNs of the reference code; data is a local
CIFAR-100 copy or a synthetic stand-in.
"""
from rdkernels.harness.distillers import DISTILLERS, IMPLS, LossOptions, build_distiller
from rdkernels.harness.models import MODELS, build_model
from rdkernels.harness.config import TrainConfig
from rdkernels.harness.train import Trainer


def compare(*args, **kwargs):
    """See :func:`rdkernels.harness.compare.compare` (imported lazily: matplotlib)."""
    from rdkernels.harness.compare import compare as _compare
    return _compare(*args, **kwargs)


__all__ = ["DISTILLERS", "IMPLS", "LossOptions", "MODELS", "Trainer", "TrainConfig", "build_distiller",
           "build_model", "compare"]
