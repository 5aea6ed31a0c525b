"""Timers: CUDA events on a GPU, torch.utils.benchmark on a CPU; medians.

Every timer takes a list of zero-argument callables, one per input set, and
cycles through them, so consecutive runs do not find the previous run's data
in cache. On a GPU the L2 cache is also flushed (a 256 MiB write) before each
timed run, outside the events, as triton.testing.do_bench does.

Warm-up calls (Triton JIT, autotuning, cuBLAS heuristics, allocator growth)
happen before anything is timed. The Triton interpreter is never timed: the
suite marks Triton rows unavailable on CPU tensors before they get here.
"""
from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass
class Budget:
    """How long to spend on one measurement."""
    warmup_ms: float = 25.0     # GPU: time spent warming up before timing
    rep_ms: float = 100.0       # GPU: target total timed time
    min_reps: int = 5
    max_reps: int = 1000
    cpu_min_run_s: float = 0.2  # CPU: blocked_autorange's min_run_time
    cpu_min_samples: int = 3    # CPU: timed samples however long one run takes


QUICK = Budget(warmup_ms=10.0, rep_ms=60.0, min_reps=5, max_reps=300, cpu_min_run_s=0.05)
FULL = Budget(warmup_ms=25.0, rep_ms=200.0, min_reps=10, max_reps=2000, cpu_min_run_s=0.5)
TINY = Budget(warmup_ms=1.0, rep_ms=5.0, min_reps=2, max_reps=20, cpu_min_run_s=0.002)


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


def _cycle(fns: Sequence[Callable[[], object]]) -> Callable[[], object]:
    it = itertools.cycle(fns)
    return lambda: next(it)()


def _quantile(sorted_vals: list[float], q: float) -> float:
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


_flush_buffer: torch.Tensor | None = None


def _l2_flush(device: torch.device) -> torch.Tensor:
    global _flush_buffer
    if _flush_buffer is None or _flush_buffer.device != device:
        _flush_buffer = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
    return _flush_buffer


def time_cuda(fns: Sequence[Callable[[], object]], device: torch.device, budget: Budget) -> Timing:
    """Median of per-run CUDA-event times, L2 flushed before each run."""
    step = _cycle(fns)
    flush = _l2_flush(device)
    for fn in fns:            # compile / autotune / allocate for every input set
        fn()
    torch.cuda.synchronize(device)
    # Estimate the time of one run to size warm-up and repetitions.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        step()
    end.record()
    torch.cuda.synchronize(device)
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    warmup = max(1, int(budget.warmup_ms / estimate))
    reps = int(min(budget.max_reps, max(budget.min_reps, budget.rep_ms / estimate)))
    for _ in range(warmup):
        step()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush.zero_()          # outside the events: evicts the previous run's lines
        # Wait for the flush: otherwise the host queues the timed call's kernels
        # while the flush runs, and a host-bound call's launch time goes uncounted.
        torch.cuda.synchronize(device)
        starts[i].record()
        step()
        ends[i].record()
    torch.cuda.synchronize(device)
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), reps)


def time_cpu(fns: Sequence[Callable[[], object]], budget: Budget) -> Timing:
    """torch.utils.benchmark's blocked_autorange: median over blocks of runs,
    with at least ``budget.cpu_min_samples`` samples however long one run takes."""
    from torch.utils import benchmark as tbench

    step = _cycle(fns)
    for fn in fns:             # warm up every input set (first-touch allocation, caches)
        fn()
    timer = tbench.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=budget.cpu_min_run_s)
    times = [t * 1e3 for t in m.times]
    # A run longer than the budget gets a single sample from blocked_autorange:
    # one noisy run is no median, so time more, one run per sample (not with
    # Timer.timeit, which adds its own warm-up runs).
    while len(times) < budget.cpu_min_samples:
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    reps = m.number_per_run * len(m.times) + len(times) - len(m.times)
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), reps)


def time_fns(fns: Sequence[Callable[[], object]], device: torch.device, budget: Budget) -> Timing:
    if device.type == "cuda":
        return time_cuda(fns, device, budget)
    return time_cpu(fns, budget)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak device memory one call allocates beyond what was live before it.

    Only on CUDA (the caching allocator's counters); None elsewhere."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return int(peak)
