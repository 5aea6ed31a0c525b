"""Choose the execution strategy of bank contrast: ``gather`` or ``dense``.

Both strategies compute the same loss and gradient (to float rounding):

* gather streams the B*(K+1) sampled bank rows, so it moves
  ``B * (K+1) * d * e`` bytes (e = bytes per bank element), as random
  row-sized reads;
* dense multiplies the queries with the whole bank (tensor cores where there
  are some) and applies the sampled multiplicities in the epilogue, so it
  reads the bank ``ceil(B / rows_per_pass)`` times (``N * d * e`` bytes each,
  sequentially; rows_per_pass is the kernel's query block: 64 for CUDA, 16
  for Triton, all rows for torch), does ``4 * B * N * d`` flops (scores, then
  dq), and pays a per-sample index cost: the fused kernels count the B*K
  negatives into a zeroed [B, N] matrix of 16-bit counts (one atomic each,
  sample_counts.py) that they read back beside the bank, torch gathers the
  scalar scores and scatter-adds their gradients.

The model estimates both times from per-device constants and picks the
smaller::

    t_gather = B*(K+1)*d*e / bw_gather
    t_dense  = ceil(B / rows_per_pass) * N*d*e / bw_stream
               + 4*B*N*d / flops
               + B*K * t_index
               + extra_dense_bytes / bw_stream      # the [B, N] counts (fused), scores and coefficients (torch)
               + t_launch                          # t_graph inside a CUDA graph capture

The constants are coarse. By bytes, dense wins on CIFAR-100 (B=64, K=16384,
N=50 000: every bank row is sampled about 21 times a step): on an H100 its
kernels take 0.10 ms a call against gather's 0.33 ms. An eager call is
host-bound either way (0.5-1 ms of Python, dispatch and launches, dense's
~0.1-0.25 ms more: t_launch), so the pick shows only where the device time
does, and there dense's is lower: ``auto`` takes dense at CIFAR's B = 64 and
above, gather at K <= 4096 with small batches (where its device time is as low
and its host time lower) and on ImageNet banks with small batches (N=1.28 M,
B*K/N < ~4), where gathering wins outright. ``strategy="gather" | "dense"`` in
:func:`rdkernels.ops.bank_contrast` overrides the choice.

Inside a CUDA graph capture the host-side cost is gone: a replay launches the
recorded kernels with no Python, dispatcher or launch work, so a call costs its
GPU time alone and the fixed term is the extra kernels' device time (t_graph),
not the eager host time (t_launch): a captured step takes dense from smaller K
(K = 4096 at B = 64) than an eager one. The eager warm-up before a capture
should run the path the graph will record (its first call compiles and tunes
kernels, which a capture cannot): run it inside :func:`assume_graph_replay`, as
the harness does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rdkernels.ops._graph_replay import assume_graph_replay, graph_replay_assumed

__all__ = ["DeviceRates", "Work", "assume_graph_replay", "choose_strategy", "estimate_times", "graph_replay_assumed",
           "rates_for", "work"]


@dataclass(frozen=True)
class DeviceRates:
    bw_gather: float      # bytes/s of random bank-row reads (rows of 128-512 bytes)
    bw_stream: float      # bytes/s of sequential bank reads
    flops: float          # dense-matmul flop/s at the bank's precision (fp32 accumulate)
    t_index: float       # seconds per sampled index (the sample count, or gather + scatter-add)
    t_launch: float       # fixed host-side cost of the dense path's extra launches (eager)
    t_graph: float        # their device-side cost where a CUDA graph replays them


# H100/H200-class GPU. bw_gather is below HBM bandwidth: 512-byte rows scattered
# over the bank use sectors well but defeat prefetching; the dense kernel's
# 3xTF32 tensor-core rate, conservatively.
# t_index is measured on an H100 in eager mode (fwd + bwd, B=64, K=16384,
# N=50 000) with the CSR then built by a per-row sort (~115 us, 1.1e-10 s per id);
# the sample counts that replaced it cost less, so the term is conservative.
# t_launch, dense's host time over gather's in an eager call: 0.1-0.25 ms on an
# H100 (benchmarks.fit_cost_model, 2026-11-24: every shape of its grid, B 16-256,
# K <= 4096, was host-bound at 0.4-1.2 ms a call, and the fit put t_launch at
# 0.95e-4 s on CUDA and 1.1e-4 s on Triton). It was 1e-3 while the dense path
# sorted its negatives, which kept eager CIFAR calls on gather; at that shape
# (2026-11-24, benchmarks.overhead, fp32) the dense kernels take 0.096-0.099 ms
# against gather's 0.33-0.34 ms, and the whole eager CRD step (both directions,
# the bank update) took 2.5-2.9 ms dense against 3.4-6.1 ms gather, its kernels
# 0.23 ms against 0.72 ms. At 2e-4 eager CIFAR calls take dense; B = 256 at
# K = 4096 does too, 1.2-1.4x slower eagerly there (host-bound), for fewer bytes.
# t_graph: the count kernel and the merge, a few microseconds each on the device
# once their launches cost nothing.
_CUDA = DeviceRates(bw_gather=1.2e12, bw_stream=2.5e12, flops=2.5e14, t_index=1.1e-10, t_launch=2e-4,
                    t_graph=2e-5)
# A few CPU cores: gathering materialises [B, chunk, d] and runs batched
# matrix-vector products (memory bound); the dense path is an MKL/oneDNN GEMM.
# Fitted (least squares on relative error) to the torch backend's two strategies,
# NCE forward + backward, fp32, d = 128, on a 2-core Xeon: B in {16, 64, 256},
# K in {256, 1024, 4096}, N in {10k, 50k, 200k}. The model then picks the faster
# strategy in 26 of the 27 shapes and loses 4% in the other (the constants before
# this fit, with a GEMM rate 5x too low, lost up to 4.5x in 8 of them); the 2-core
# EPYC's committed sweep (B = 64, N = 50 000) agrees: dense from K = 1024 up.
# t_launch: dense's fixed cost over gather's.
_CPU = DeviceRates(bw_gather=2.6e9, bw_stream=2.7e10, flops=5.5e11, t_index=9.4e-9, t_launch=2.2e-4,
                   t_graph=2.2e-4)
# query rows that share one read of the bank (the dense kernels' BLOCK_M)
_ROWS_PER_PASS = {"cuda": 64, "triton": 16, "torch": 1 << 30}


def rates_for(device: torch.device) -> DeviceRates:
    """The constants the model uses on ``device``'s kind (a GPU's or a CPU's)."""
    return _CUDA if torch.device(device).type == "cuda" else _CPU


@dataclass(frozen=True)
class Work:
    """What each strategy of one call moves and computes: the model's terms, which
    :class:`DeviceRates` turn into times (and ``benchmarks.fit_cost_model`` fits)."""
    gather_bytes: float   # the sampled rows, read at random
    stream_bytes: float   # dense: the bank, once per pass, and the [B, N] side matrices
    flops: float          # dense: scores, then dq
    indices: float        # dense: sampled negatives, counted (fused) or gathered and scattered (torch)


def work(batch: int, n_cols: int, n_bank: int, dim: int, bank_dtype: torch.dtype, backend: str = "triton") -> Work:
    """The terms of the model above for one call. ``n_cols`` = K + 1."""
    e = bank_dtype.itemsize
    passes = math.ceil(batch / _ROWS_PER_PASS.get(backend, 64))
    # the torch formulation writes and re-reads fp32 scores and coefficients [B, N];
    # the fused kernels zero and read back 16-bit counts [B, N]
    extra = (4 * 4 if backend == "torch" else 2 * 2) * batch * n_bank
    return Work(gather_bytes=batch * n_cols * dim * e, stream_bytes=passes * n_bank * dim * e + extra,
                flops=4.0 * batch * n_bank * dim, indices=batch * max(n_cols - 1, 0))


def estimate_times(batch: int, n_cols: int, n_bank: int, dim: int, bank_dtype: torch.dtype,
                   device: torch.device, backend: str = "triton", captured: bool = False,
                   rates: DeviceRates | None = None) -> tuple[float, float]:
    """(t_gather, t_dense) in seconds, as modelled above. ``n_cols`` = K + 1;
    ``captured``: the call is being recorded into a CUDA graph; ``rates``: other
    constants than the device's (a fit's)."""
    r = rates or rates_for(device)
    w = work(batch, n_cols, n_bank, dim, bank_dtype, backend)
    t_gather = w.gather_bytes / r.bw_gather
    t_dense = (w.stream_bytes / r.bw_stream + w.flops / r.flops + w.indices * r.t_index
               + (r.t_graph if captured else r.t_launch))
    return t_gather, t_dense


def choose_strategy(batch: int, n_cols: int, n_bank: int, dim: int, bank_dtype: torch.dtype,
                    device: torch.device, backend: str = "triton", captured: bool = False) -> str:
    """``"dense"`` when the model says it is faster, else ``"gather"``."""
    return faster_strategy(*estimate_times(batch, n_cols, n_bank, dim, bank_dtype, device, backend, captured))


def faster_strategy(t_gather: float, t_dense: float) -> str:
    """The strategy of the lower modelled time (gather on a tie: it needs no bank-wide pass)."""
    return "dense" if t_dense < t_gather else "gather"
