"""The device's two ceilings, measured once per run: copy bandwidth and matmul rate.

A row's floor is max(bytes / bandwidth, flops / matmul rate): the time the op
would take if it moved only the bytes it must and did its arithmetic at the
rate of a large matmul (on tensor cores where the kernels use them: TF32 for
float32). Both ceilings are measured here, on this device, not
taken from a data sheet, so the ratio says how close a kernel is to what this
machine actually sustains.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from benchmarks.timing import Budget, time_fns


@dataclass
class Ceilings:
    bandwidth_gbps: float                      # GB/s (1e9), read + write bytes of a large copy
    matmul_tflops: dict = field(default_factory=dict)   # dtype name -> TFLOP/s (1e12)
    copy_bytes: int = 0
    matmul_size: int = 0

    def rate(self, dtype: torch.dtype | str) -> float:
        """FLOP/s for matmuls on ``dtype`` inputs: the faster of that dtype's
        rate and float32's (an implementation may always compute in float32),
        where float32 counts TF32 tensor cores: the fused kernels run their
        float32 dots there (3xTF32, fp32-accurate), so the floor must too, or a
        kernel could beat its floor."""
        name = str(dtype).replace("torch.", "")
        fp32 = max(self.matmul_tflops["float32"], self.matmul_tflops.get("tfloat32", 0.0))
        return max(self.matmul_tflops.get(name, fp32), fp32) * 1e12

    def floor_ms(self, nbytes: float, flops: float, dtype) -> float:
        return max(nbytes / (self.bandwidth_gbps * 1e9), flops / self.rate(dtype)) * 1e3

    def to_json(self) -> dict:
        return asdict(self)


def measure(device: torch.device, quick: bool = True) -> Ceilings:
    """Measure copy bandwidth and matmul rate on ``device``."""
    budget = Budget(warmup_ms=10, rep_ms=50 if quick else 200, min_reps=5, max_reps=200,
                    cpu_min_run_s=0.05 if quick else 0.3)
    if device.type == "cuda":
        copy_bytes = 1 << 30               # 1 GiB: far past any cache
        size = 8192
        dtypes = (torch.float32, torch.bfloat16, torch.float16)
    else:
        copy_bytes = (64 if quick else 256) << 20   # past the last-level cache
        size = 1024 if quick else 2048
        dtypes = (torch.float32, torch.bfloat16)

    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_fns([lambda: dst.copy_(src)], device, budget)
    bandwidth = 2 * copy_bytes / (t.median_ms * 1e-3) / 1e9
    del src, dst

    rates = {}
    for dtype in dtypes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        t = time_fns([lambda: torch.mm(a, b)], device, budget)
        rates[str(dtype).replace("torch.", "")] = 2 * size ** 3 / (t.median_ms * 1e-3) / 1e12
        if device.type == "cuda" and dtype == torch.float32:  # the same product on TF32 tensor cores
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                t = time_fns([lambda: torch.mm(a, b)], device, budget)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous
            rates["tfloat32"] = 2 * size ** 3 / (t.median_ms * 1e-3) / 1e12
    return Ceilings(bandwidth_gbps=bandwidth, matmul_tflops=rates, copy_bytes=copy_bytes, matmul_size=size)
