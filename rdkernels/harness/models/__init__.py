"""CIFAR model zoo: every model's forward returns ``(pooled_feature, logits)``."""
from __future__ import annotations

from torch import nn

from rdkernels.harness.models import resnet, wrn

MODELS = {
    name: getattr(resnet, name)
    for name in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                 "resnet110", "resnet8x4", "resnet32x4", "resnet8_tiny")
}
MODELS.update({name: getattr(wrn, name) for name in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")})


def build_model(name: str, num_classes: int = 100) -> nn.Module:
    """The model ``name`` (see ``MODELS``) with ``num_classes`` outputs."""
    if name not in MODELS:
        raise ValueError(f"arch must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](num_classes=num_classes)


__all__ = ["MODELS", "build_model"]
