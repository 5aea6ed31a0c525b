"""CIFAR ResNets (He et al. 2016, the 6n+2 family) in the layout RepDistiller uses.

Three stages of basic blocks at 32x32, 16x16 and 8x8, global average pooling,
one linear classifier. ``resnet8x4`` and ``resnet32x4`` are the 4x-wide variants
used as the standard CIFAR-100 distillation pair. ``forward`` returns
``(feature, logits)`` where ``feature`` is the pooled penultimate vector that the
representation losses consume (RepDistiller's ``feat[-1]``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus shortcut, then relu (post-activation)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            # projection shortcut (1x1 conv + BN) whenever the shape changes
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 with stem width ``widths[0]`` and stage widths ``widths[1:]``."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (8, 14, 20, 32, 56, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        stages = []
        for i, (width, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            layers = []
            for j in range(blocks):
                layers.append(BasicBlock(c, width, stride if j == 0 else 1))
                c = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.feat_dim = c
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        # adaptive pooling equals AvgPool2d(8) on 32x32 inputs and also accepts smaller images
        feat = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return feat, self.fc(feat)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def resnet8(num_classes: int = 100) -> ResNet:
    return ResNet(8, _NARROW, num_classes)


def resnet14(num_classes: int = 100) -> ResNet:
    return ResNet(14, _NARROW, num_classes)


def resnet20(num_classes: int = 100) -> ResNet:
    return ResNet(20, _NARROW, num_classes)


def resnet32(num_classes: int = 100) -> ResNet:
    return ResNet(32, _NARROW, num_classes)


def resnet44(num_classes: int = 100) -> ResNet:
    return ResNet(44, _NARROW, num_classes)


def resnet56(num_classes: int = 100) -> ResNet:
    return ResNet(56, _NARROW, num_classes)


def resnet110(num_classes: int = 100) -> ResNet:
    return ResNet(110, _NARROW, num_classes)


def resnet8x4(num_classes: int = 100) -> ResNet:
    return ResNet(8, _WIDE, num_classes)


def resnet32x4(num_classes: int = 100) -> ResNet:
    return ResNet(32, _WIDE, num_classes)


def resnet8_tiny(num_classes: int = 100) -> ResNet:
    """A 4-channel resnet8 for smoke tests and CPU examples (not a benchmark model)."""
    return ResNet(8, (4, 4, 8, 8), num_classes)
