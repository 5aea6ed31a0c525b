"""Input makers and size tables shared by the op benchmarks."""
from __future__ import annotations

import torch

# The CRD configurations of the reference code (RepDistiller defaults).
PRESETS = {
    "cifar": dict(N=50_000, K=16_384, B=64, d=128, s_dim=256, t_dim=256),      # resnet32x4 -> resnet8x4
    "imagenet": dict(N=1_281_167, K=16_384, B=256, d=128, s_dim=512, t_dim=512),  # ResNet34 -> ResNet18
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    return DTYPES[name]


def generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def unit_rows(n: int, d: int, dtype: torch.dtype, device, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, d, device=device, generator=gen)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def bank_init(n: int, d: int, dtype: torch.dtype, device, gen: torch.Generator) -> torch.Tensor:
    """RepDistiller's bank initialisation: U(-s, s), s = 1/sqrt(d/3)."""
    s = 1.0 / (d / 3) ** 0.5
    return (torch.rand(n, d, device=device, generator=gen) * 2 * s - s).to(dtype)


def sample_idx(index: torch.Tensor, n: int, k: int, gen: torch.Generator, dtype=torch.int64) -> torch.Tensor:
    """[B, K+1]: column 0 the positive, K uniform negatives in [0, n)."""
    neg = torch.randint(0, n, (index.shape[0], k), device=index.device, generator=gen)
    return torch.cat([index.view(-1, 1), neg], dim=1).to(dtype)


def elt(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
