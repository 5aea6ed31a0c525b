"""Triton kernel for the shared-bank contrast: flash-style, no [B, N] matrix.

One program per (block of BLOCK_B query rows, split of the queue). It stacks
its student and teacher queries into one [2 * BLOCK_B, d] block, pre-scaled by
log2(e) / tau_s and log2(e) / tau_t, and streams its part of the queue Q in
tiles of BLOCK_N rows; per tile

* ``x = q @ tile^T``: the student and teacher logits (base 2) in one dot,
* per stacked row the running max m and sum l of exp2(x), rescaled when the
  max moves, exactly as flash attention does,
* ``acc = acc * alpha + exp2(x - m) @ tile``: sum_k exp2(x_k - m) Q_k, the
  second dot; so a tile costs two dots, each over both query kinds.

After the last split a second kernel, one program per query row, merges the
splits (a log-sum-exp merge, flash-decoding style) into

    P_s = sum_k p_s,k Q_k,  P_t = sum_k p_t,k Q_k     (the normalised acc rows)
    loss = LSE(s) - sum_k p_t,k s_k = LSE(s) - scale_s q_s . P_t
    dq_s = (P_s - P_t) / tau_s = sum_k (p_s,k - p_t,k) Q_k / tau_s

The teacher-weighted student logit sum_k p_t,k s_k is linear in q_s, so it is
taken from the merged teacher accumulator instead of being accumulated per
tile: that is what lets the student and teacher rows share every dot. The
accumulators are therefore computed with or without a gradient.
Because dq_s is complete after the forward, backward never re-reads the queue
(which RRD overwrites right after scoring when it enqueues after).

Narrow types are loaded and converted to fp32 before any arithmetic. Both dots
run in 3xTF32 (fp32-accurate; see CANDIDATES), their operands split by
ops/_tf32.py, one split of each queue tile serving both; the interpreter runs
the same split (its dots are exact fp32 products of the TF32 parts).
"""
from __future__ import annotations

import contextvars
from typing import Callable

import torch
import triton
import triton.language as tl

from rdkernels.backend import triton_runs_compiled
from rdkernels.ops._aot_types import FLOAT_TYPES
from rdkernels.ops._autotune import TunedKernel
from rdkernels.ops._blocks import block_width, cdiv
from rdkernels.ops._compile_options import COMPILE_OPTIONS
from rdkernels.ops._tf32 import dot_split, split_tf32
from rdkernels.ops._splits import SplitSweep, splits_wanted
from rdkernels.ops.shared_bank_contrast.splits import LN2, LOG2E, split_buffers, split_queue

_LN2 = tl.constexpr(LN2)  # kernel-visible (compiled code reads only constexpr globals)
MAX_DIM = 128  # wider embeddings: the CUDA kernel (d <= 512) or torch


@triton.jit
def shared_bank_contrast_kernel(
    qs_ptr, qt_ptr, queue_ptr, stats_ptr, acc_ptr,
    batch, n_rows, dim,
    stride_qs, stride_qt, stride_queue,
    scale_s, scale_t,
    SPLIT_ALIGN: tl.constexpr, TILE_TWICE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    # The program's 2 * BLOCK_B stacked queries: r < BLOCK_B is student row
    # pid_b * BLOCK_B + r, the rest the same rows' teacher queries. From here on
    # the two halves are treated alike: one online softmax per stacked row.
    r = tl.arange(0, 2 * BLOCK_B)
    is_s = r < BLOCK_B
    rows = pid_b * BLOCK_B + tl.where(is_s, r, r - BLOCK_B)
    row_mask = rows < batch
    d = tl.arange(0, BLOCK_D)
    d_mask = d < dim
    rows64 = rows.to(tl.int64)
    qmask = row_mask[:, None] & d_mask[None, :]
    q_at = tl.where(is_s[:, None], qs_ptr + rows64[:, None] * stride_qs + d[None, :],
                    qt_ptr + rows64[:, None] * stride_qt + d[None, :])
    # Queries pre-scaled so that the dots give base-2 logits.
    q = tl.load(q_at, mask=qmask, other=0.0).to(tl.float32) * tl.where(is_s, scale_s, scale_t)[:, None]
    q_hi, q_lo = split_tf32(q)  # once, for every queue tile

    m = tl.full([2 * BLOCK_B], -float("inf"), tl.float32)
    l = tl.zeros([2 * BLOCK_B], tl.float32)
    acc = tl.zeros([2 * BLOCK_B, BLOCK_D], tl.float32)

    # the splits are whole SPLIT_ALIGN-row tiles, as many as the grid has (splits_for)
    rows_per_split = tl.cdiv(tl.cdiv(n_rows, SPLIT_ALIGN), n_splits) * SPLIT_ALIGN
    start = split * rows_per_split
    stop = tl.minimum(start + rows_per_split, n_rows)
    for n0 in range(start, stop, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < stop
        tile_at = queue_ptr + n.to(tl.int64)[:, None] * stride_queue + d[None, :]
        tile_mask = n_mask[:, None] & d_mask[None, :]
        bank = tl.load(tile_at, mask=tile_mask, other=0.0).to(tl.float32)
        bank_hi, bank_lo = split_tf32(bank)   # 3xTF32, ops/_tf32.py
        if TILE_TWICE:
            # the tile loaded a second time as the first dot's transposed operand: with
            # 16-row programs Triton's pipeliner stages (async copies) a load that feeds
            # one dot, not one feeding a dot and a transpose (see CANDIDATES)
            bank_t = tl.load(tl.trans(tile_at), mask=tl.trans(tile_mask), other=0.0).to(tl.float32)
            bank_t_hi, bank_t_lo = split_tf32(bank_t)
        else:  # one split of the tile serves both dots
            bank_t_hi, bank_t_lo = tl.trans(bank_hi), tl.trans(bank_lo)
        x = dot_split(q_hi, q_lo, bank_t_hi, bank_t_lo, tl.zeros([2 * BLOCK_B, BLOCK_N], tl.float32))
        x = tl.where(n_mask[None, :], x, -float("inf"))
        new_m = tl.maximum(m, tl.max(x, axis=1))
        alpha = tl.exp2(m - new_m)
        p = tl.exp2(x - new_m[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        p_hi, p_lo = split_tf32(p)
        acc = dot_split(p_hi, p_lo, bank_hi, bank_lo, acc * alpha[:, None])
        m = new_m

    # stats: [4, splits, batch] = m_s, l_s, m_t, l_t (base-2 units); acc: [2, splits, batch, dim]
    plane = n_splits * batch
    base = tl.where(is_s, 0, 2 * plane) + split * batch + rows
    tl.store(stats_ptr + base, m, mask=row_mask)
    tl.store(stats_ptr + plane + base, l, mask=row_mask)
    offs = (tl.where(is_s, 0, plane).to(tl.int64) + split * batch + rows64)[:, None] * dim + d[None, :]
    tl.store(acc_ptr + offs, acc, mask=qmask)


@triton.jit
def shared_bank_merge_kernel(stats_ptr, acc_ptr, qs_ptr, loss_ptr, dq_ptr, batch, splits, dim, stride_qs, scale_s,
                             inv_tau_s, NEED_GRAD: tl.constexpr, STATS_BLOCK: tl.constexpr, BLOCK_S: tl.constexpr,
                             BLOCK_D: tl.constexpr):
    """Row b: merge the splits' (m, l, acc) into loss[b] and dq_s[b] (see the module doc).

    The loops' steps are dependent memory round trips, and a program's wait on them
    is the kernel's time (one program per row, 64 at RRD's batch, a few hundred
    splits): the maxima take one step over up to STATS_BLOCK splits, the
    accumulators [BLOCK_S, d] tiles."""
    b = tl.program_id(0)
    plane = splits * batch
    big_s = -float("inf")
    big_t = -float("inf")
    for s0 in range(0, splits, STATS_BLOCK):
        s = s0 + tl.arange(0, STATS_BLOCK)
        smask = s < splits
        big_s = tl.maximum(big_s, tl.max(tl.load(stats_ptr + s * batch + b, mask=smask, other=-float("inf")), 0))
        big_t = tl.maximum(big_t, tl.max(tl.load(stats_ptr + 2 * plane + s * batch + b, mask=smask,
                                                 other=-float("inf")), 0))
    # one pass over the splits: the weights' sums and the weighted accumulators,
    # normalised after it
    d = tl.arange(0, BLOCK_D)
    dmask = d < dim
    sum_s = 0.0
    sum_t = 0.0
    acc_s = tl.zeros([BLOCK_D], tl.float32)   # sum_k exp2(s_k - big_s) Q_k (for the gradient)
    acc_t = tl.zeros([BLOCK_D], tl.float32)   # sum_k exp2(t_k - big_t) Q_k
    for s0 in range(0, splits, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        smask = s < splits
        at = s * batch + b
        w_s = tl.exp2(tl.load(stats_ptr + at, mask=smask, other=-float("inf")) - big_s)
        w_t = tl.exp2(tl.load(stats_ptr + 2 * plane + at, mask=smask, other=-float("inf")) - big_t)
        sum_s += tl.sum(tl.load(stats_ptr + plane + at, mask=smask, other=0.0) * w_s, 0)
        sum_t += tl.sum(tl.load(stats_ptr + 3 * plane + at, mask=smask, other=0.0) * w_t, 0)
        offs = at.to(tl.int64)[:, None] * dim + d[None, :]
        m2 = smask[:, None] & dmask[None, :]
        acc_t += tl.sum(tl.load(acc_ptr + plane.to(tl.int64) * dim + offs, mask=m2, other=0.0) * w_t[:, None],
                        axis=0)
        if NEED_GRAD:
            acc_s += tl.sum(tl.load(acc_ptr + offs, mask=m2, other=0.0) * w_s[:, None], axis=0)
    mean_t = acc_t / sum_t   # sum_k p_t,k Q_k
    # The teacher-weighted student logit sum_k p_t,k s_k is q_s . (sum_k p_t,k Q_k):
    # the same sum, taken after the merge instead of accumulated per tile.
    q_s = tl.load(qs_ptr + b.to(tl.int64) * stride_qs + d, mask=dmask, other=0.0).to(tl.float32) * scale_s
    cross = tl.sum(q_s * mean_t, axis=0)
    tl.store(loss_ptr + b, (big_s + tl.log2(sum_s) - cross) * _LN2)
    if NEED_GRAD:
        tl.store(dq_ptr + b.to(tl.int64) * dim + d, (acc_s / sum_s - mean_t) * inv_tau_s, mask=dmask)


# The merge's steps: the maxima over up to 512 splits at once (one program an SM makes
# 32-128 splits at B = 64 on an H100, by the candidate; a caller's num_splits may be
# more), the accumulators in [64, d <= 128] fp32 tiles, 16 values a thread per tile
# (16 warps at d = 128, fewer for narrower tiles; at 8 warps, 255 registers and a
# spill): one step at 32 splits, two at 128.
# H100, RRD's shape (2026-11-24): in [16, d] steps over 4 warps the merge took 18.5 us
# of a 52 us fwd+bwd at 132 splits (2 x 9 round trips); in [32, d] steps over 8
# warps, 6 us at 33 splits.
MERGE_STATS_BLOCK = 512
MERGE_BLOCK_S = 64


def merge_launch(block_d: int, need_grad: bool) -> dict:
    """The merge's constexprs and warps, as launched and as compiled ahead of time
    (read at each call: tests shrink the steps)."""
    return dict(NEED_GRAD=need_grad, STATS_BLOCK=MERGE_STATS_BLOCK, BLOCK_S=MERGE_BLOCK_S, BLOCK_D=block_d,
                num_warps=min(16, max(1, MERGE_BLOCK_S * block_d // (16 * 32))))


def _candidate(block_b, block_n, num_warps, tile_twice=False):
    return triton.Config(dict(BLOCK_B=block_b, BLOCK_N=block_n, TILE_TWICE=tile_twice), num_warps=num_warps,
                         num_stages=2)


# GPU launch candidates, timed per (batch, rows, width, dtype) by the autotuner
# (rdkernels/ops/_autotune.py); the first is the configuration used before any
# timing. A program's dots have 2 * BLOCK_B rows (student and teacher stacked).
# What the compiler says at d = 128, fp32 (SASS instructions of the tile loop per
# (query row, queue row) pair, all warps of a program together, Triton 3.9; spills
# for any sizes, and at round ones, the "+ints%16" compile of tools/aot_check.py):
#
#   BLOCK_B x BLOCK_N, warps   sm_90 spills (3.9 / 3.6)   round sizes   instr / pair   sm_80 spills
#   16 x 32, 8                 0 / 0                      0 / 0         12.6           0
#   16 x 16, 4                 0 / 0                      0 / 0         12.4           0
#   16 x 64, 8                 0 / 0                      0 / 0         9.7            0
#   32 x 16, 4                 0 / 0                      0 / 4 B       5.9 (wgmma)    -
#   64 x 16, 8                 112 / 8 B                  0 / 0         5.1 (wgmma)    -
#   64 x 32, 8                 48 / 84 B                  0 / 12 B      3.8 (wgmma)    -
#   16 x 16, 4, tile twice     76 / 0 B                   4 / 0 B       15.4 (14.3)    20 / 0 B
#   16 x 32, 8, tile twice     64 / 0 B                   0 / 0         15.2 (14.4)    16 / 0 B
#
# The 16-row tile loops load each queue tile synchronously (TTGIR: a tt.load in the
# loop, no async copy), because the one load feeds a dot and a transpose for the
# other; the 32- and 64-row ones are staged (async copies, num_stages deep). On an
# H100 the 16-row kernel's time went as its tile steps a program (139 / 74 / 41.8 us
# at 8 / 16 / 33 splits, benchmarks/splits.py), as a wait on each step's load would.
# The "tile twice" candidates load each tile a second time through transposed
# pointers, one load per dot, and both loads are staged, for ~20% more instructions
# (and small spills with Triton 3.9; none with 3.6, the figures in brackets): only a
# timing tells which wins, and on sm_80 the 16-row candidates are all there is. A
# 16-bit queue's tiles stay synchronous either way (the conversion after the load),
# so those candidates are fp32-only.
#
# With Triton's own "tf32x3" split (cvt.rna, ~10 instructions a value) the same
# loops took 15.5, 16.9, 11.7, 7.7, 6.5 and 4.7 instructions a pair and spilled up
# to 248 B on sm_90 and 60 B on sm_80.
#
# The previous kernel (separate student and teacher dots, two [16, d]
# accumulators, four dots a tile) took 16.1 instructions a pair in its best
# 3xTF32 configuration and 21.9 in its shipped one (exact-fp32 gradient dots),
# and spilled 0.3-2.6 KB at BLOCK_B >= 32. 32 and 64 query rows make 64- and
# 128-row dots, which Hopper runs as warpgroup MMAs; older GPUs run them as
# mma.sync tiles that keep the accumulator in registers and spill, so those
# candidates are timed on sm_90 and newer only.
# Both dots are 3xTF32: TF32 alone errs by ~5e-4 in q.Q, which a
# temperature of 0.02 magnifies fifty-fold in the exponent, and cost ~1e-3
# relative error in the gradient, a difference of nearly equal sums.
CANDIDATES = [
    _candidate(16, 32, 8),
    _candidate(16, 16, 4),
    _candidate(16, 64, 8),
    _candidate(32, 16, 4),
    _candidate(64, 16, 8),
    _candidate(64, 32, 8),
    _candidate(16, 16, 4, tile_twice=True),
    _candidate(16, 32, 8, tile_twice=True),
]
WARPGROUP_ROWS = 32   # BLOCK_B from which a candidate is Hopper-only (sm_90+)
WIDEST_BLOCK_B = max(c.kwargs["BLOCK_B"] for c in CANDIDATES)
ROW_ALIGN = max(c.kwargs["BLOCK_N"] for c in CANDIDATES)  # a split is whole tiles for every candidate
INTERPRETER_CONFIG = dict(BLOCK_B=16, BLOCK_N=16, TILE_TWICE=False, num_warps=4, num_stages=1)


def min_arch(config: triton.Config) -> int:
    """The oldest compute capability (as 80, 90) the candidate is timed on."""
    return 90 if config.kwargs["BLOCK_B"] >= WARPGROUP_ROWS else 80


def _prune(configs: list, args: dict) -> list:
    """The candidates this GPU can run without large spills, less those loading
    their tiles twice for a 16-bit queue, whose loads a conversion keeps
    synchronous either way (TTGIR; see CANDIDATES)."""
    q = args["qs_ptr"]
    if not q.is_cuda:
        return configs
    major, minor = torch.cuda.get_device_capability(q.device)
    queue = args.get("queue_ptr")
    narrow = queue is not None and queue.dtype != torch.float32
    return [c for c in configs if 10 * major + minor >= min_arch(c) and not (narrow and c.kwargs["TILE_TWICE"])]


# The merge the call in progress runs after its split kernel, given the launched
# row block (shared_bank_contrast_triton sets it around the launch).
_call_merge: contextvars.ContextVar[Callable[[int], int] | None] = contextvars.ContextVar(
    "rdkernels_shared_bank_merge", default=None)


def _merge_after_timed_launch(nargs: dict) -> None:
    """The autotuner runs each candidate's merge after each of its timed launches:
    the split count follows the candidate (a 64-row one makes four times the
    splits of a 16-row one, whose accumulators the merge reads back), so the
    split kernel's time alone would favour the candidates with more splits."""
    merge = _call_merge.get()
    if merge is not None:
        merge(nargs["BLOCK_B"])


contrast_kernel = TunedKernel(shared_bank_contrast_kernel, CANDIDATES, key=["batch", "n_rows", "dim"], prune=_prune,
                              after_timed=_merge_after_timed_launch)


# Programs an SM the split count aims at, for every candidate: splits = SMs x
# PROGRAMS_PER_SM / (B / BLOCK_B), so a 64-row candidate (Hopper's warpgroup MMAs)
# gets four times the splits of a 16-row one and both fill the GPU when the
# autotuner times them. Each split writes [2, B, d] fp32 accumulators that the
# merge reads back (2.1 MB at 33 splits, B = 64, d = 128; 8.4 MB at 132), so the
# autotuner times each candidate with its merge (_merge_after_timed_launch).
# H100, 2026-11-24, RRD's shape (B = 64, N = 16384, fwd+bwd), with the count then
# sized for 32-row programs at half an SM each (which for the 16-row candidate
# that won is the count made here): the op's kernel time (benchmarks.overhead) went
# from 50.9 us at 132 splits (two 16-row programs an SM) to 44.2 us at 33 (one).
# Two split sweeps (benchmarks/splits.py, graph replays) ranked the counts alike:
# 40.6 / 45.9 / 56.0 / 76.3 us at 33 / 66 / 132 / 264 splits, then 139 / 74 / 41.8
# / 47.2 at 8 / 16 / 33 / 66. At that count the 64-row candidates ran on a quarter
# of the SMs (33 programs), so their 2.4x fewer instructions a pair never showed.
# B = 256 (9 splits): 138-144 us at 8-33 splits in the first sweep.
PROGRAMS_PER_SM = 1


def splits_for(batch: int, n_rows: int, device: torch.device, block_b: int,
               num_splits: int | None = None) -> int:
    """Splits of the queue a launch of ``block_b``-row programs makes: ``num_splits``
    (or about PROGRAMS_PER_SM programs an SM; under the interpreter two, which still
    exercise the merge), at most one a tile of the launch's row alignment. The
    kernel derives its rows per split from the grid's count, ceil(tiles / splits)
    tiles, which for every count made here is split_queue's cut (none empty)."""
    if num_splits is None:
        num_splits = splits_wanted(-(-batch // block_b), device, programs_per_sm=PROGRAMS_PER_SM, interpreter=2)
    return split_queue(n_rows, num_splits, _split_align(device))[0]


def _split_align(device: torch.device) -> int:
    return ROW_ALIGN if triton_runs_compiled(device) else INTERPRETER_CONFIG["BLOCK_N"]


_sweep = SplitSweep()   # queue_split_count's forced count and record


def queue_split_count(count: int | None = None):
    """Within this ``with`` block the op cuts the queue into ``count`` splits (whole
    tiles, at most one a tile; None: the heuristic's for the configuration launched);
    it yields the list of (splits, launch kwargs) each call used. For benchmarks/splits.py."""
    return _sweep.forcing(count)


def shared_bank_contrast_triton(q_s, q_t, queue, tau_s: float, tau_t: float, need_grad: bool,
                                num_splits: int | None = None, config: triton.Config | None = None):
    """(loss[B] fp32, dq_s[B, d] fp32 or empty). ``num_splits`` and ``config``
    override the split heuristic and the timed launch configuration (tests)."""
    batch, dim = q_s.shape
    n_rows = queue.shape[0]
    dev = q_s.device
    num_splits = _sweep.want(num_splits)
    # buffers for the most splits any candidate makes (the widest row block's: the
    # count only grows with the rows a program takes), as the autotuner runs every
    # candidate on them. The accumulators are written with or without the gradient:
    # the loss's cross term comes from them.
    most = splits_for(batch, n_rows, dev, WIDEST_BLOCK_B, num_splits)
    stats, acc_at, loss, dq = split_buffers(batch, dim, most, need_grad, dev, accumulators=True)
    acc = stats[acc_at:]
    block_d = block_width(dim)

    def merge(block_b: int) -> int:
        """Merge the splits a launch of ``block_b``-row programs made; return their count."""
        splits = splits_for(batch, n_rows, dev, block_b, num_splits)
        shared_bank_merge_kernel[(batch,)](stats, acc, q_s, loss, dq if need_grad else loss, batch, splits, dim,
                                           q_s.stride(0), LOG2E / tau_s, 1.0 / tau_s,
                                           **merge_launch(block_d, need_grad), **COMPILE_OPTIONS)
        return splits
    token = _call_merge.set(merge)   # for the autotuner's timed launches, if this call times
    try:
        launched = contrast_kernel.launch(
            lambda m: (cdiv(batch, m["BLOCK_B"]), splits_for(batch, n_rows, dev, m["BLOCK_B"], num_splits)),
            q_s, q_t, queue, stats, acc,
            batch, n_rows, dim,
            q_s.stride(0), q_t.stride(0), queue.stride(0),
            LOG2E / tau_s, LOG2E / tau_t,
            config=config, fallback=None if triton_runs_compiled(dev) else INTERPRETER_CONFIG,
            SPLIT_ALIGN=_split_align(dev), BLOCK_D=block_d,
        )
    finally:
        _call_merge.reset(token)
    splits = merge(launched["BLOCK_B"])
    _sweep.record((splits, launched))
    return loss, dq


def _candidate_tag(c: triton.Config | dict) -> str:
    """b16n32w8 for a candidate (b16n32w8x2 loading its tiles twice), or for the launch
    kwargs a call returned."""
    k = c.all_kwargs() if isinstance(c, triton.Config) else c
    return f"b{k['BLOCK_B']}n{k['BLOCK_N']}w{k['num_warps']}" + ("x2" if k["TILE_TWICE"] else "")


def aot_variants() -> list[dict]:
    """Every configuration the GPU dispatcher launches: each candidate at BLOCK_D
    16..128 for three dtypes, on the architectures it is timed on; the queue in the
    queries' dtype -- other pairings compile to the same tiles."""
    out = []
    for dim in (16, 32, 64, 128):
        block_d = block_width(dim)
        for dt, name in FLOAT_TYPES.items():
            for cand in [c for c in CANDIDATES if name == "fp32" or not c.kwargs["TILE_TWICE"]]:
                signature = {
                    "qs_ptr": f"*{name}", "qt_ptr": f"*{name}", "queue_ptr": f"*{name}",
                    "stats_ptr": "*fp32", "acc_ptr": "*fp32",
                    "batch": "i32", "n_rows": "i32", "dim": "i32",
                    "stride_qs": "i32", "stride_qt": "i32", "stride_queue": "i32",
                    "scale_s": "fp32", "scale_t": "fp32",
                }
                out.append({
                    "name": f"shared_bank_contrast_d{dim}_{name}_" + _candidate_tag(cand),
                    "kernel": shared_bank_contrast_kernel, "signature": signature,
                    "constexprs": dict(cand.kwargs, SPLIT_ALIGN=ROW_ALIGN, BLOCK_D=block_d),
                    "num_warps": cand.num_warps, "num_stages": cand.num_stages, "min_arch": min_arch(cand),
                })
            for need_grad in (False, True):
                merge = merge_launch(block_d, need_grad)
                out.append({
                    "name": f"shared_bank_merge_d{dim}_{name}_{'grad' if need_grad else 'fwd'}",
                    "kernel": shared_bank_merge_kernel,
                    "signature": {"stats_ptr": "*fp32", "acc_ptr": "*fp32", "qs_ptr": f"*{name}",
                                  "loss_ptr": "*fp32", "dq_ptr": "*fp32", "batch": "i32", "splits": "i32",
                                  "dim": "i32", "stride_qs": "i32", "scale_s": "fp32", "inv_tau_s": "fp32"},
                    "num_warps": merge.pop("num_warps"), "constexprs": merge, "num_stages": 1,
                })
    return out
