"""Where device time goes: one torch.profiler pass over some repeated work.

Shared by ``harness compare --profile-steps`` (per training step) and
``benchmarks.overhead`` (per op call), so both count the same things: on a
GPU every kernel, copy and memset by its own device time; on a CPU, where
there is no device timeline, the ops' own CPU time.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch


class Entry(NamedTuple):
    name: str
    ms: float      # per unit of work (a step, a call)
    calls: float   # launches (or op calls on a CPU) per unit


def device_profile(work: Callable[[], None], units: int, device: torch.device) -> tuple[str, float, list[Entry]]:
    """Run ``work()`` (``units`` steps or calls of it) under the profiler:
    (what was counted, total ms per unit, every entry per unit, costliest first)."""
    from torch.profiler import ProfilerActivity, profile
    on_gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        work()
        if on_gpu:
            torch.cuda.synchronize(device)
    own_us = (lambda e: e.self_device_time_total) if on_gpu else (lambda e: e.self_cpu_time_total)
    entries = sorted((Entry(e.key[:160], own_us(e) / 1e3 / units, e.count / units)
                      for e in prof.key_averages() if own_us(e) > 0), key=lambda e: -e.ms)
    what = "device time (kernels, copies, memsets)" if on_gpu else "CPU time of the ops themselves"
    return what, sum(e.ms for e in entries), entries
