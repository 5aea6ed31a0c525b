"""Triton kernel for the shared-bank contrast: flash-style, no [B, N] matrix.

One program per (block of BLOCK_B query rows, split of the queue). It streams
its part of the queue Q in tiles of BLOCK_N rows; per tile, two ``tl.dot``
give the student and teacher logits (base 2: the queries are pre-scaled by
log2(e) / tau), and the program keeps, per query row,

* m_s, l_s: running max and sum of exp2 of the student logits,
* m_t, l_t: the same for the teacher logits,
* c: sum_k exp2(t_k - m_t) * s_k, the teacher-weighted student logit,
* (gradient only) acc_s = sum_k exp2(s_k - m_s) Q_k and
  acc_t = sum_k exp2(t_k - m_t) Q_k, two more ``tl.dot`` per tile,

rescaling each when its running max moves, exactly as flash attention rescales
its output accumulator. This is exact, in one pass over Q:

    loss = LSE(s) - c / l_t
    dq_s = (acc_s / l_s - acc_t / l_t) / tau_s = sum_k (p_s,k - p_t,k) Q_k / tau_s

Because dq_s is complete after the forward, backward never re-reads the queue
(which RRD overwrites right after scoring when it enqueues after).

Splitting the queue keeps the GPU busy at small batch (B = 64 is one row block);
each split writes its partial statistics and a second kernel, one program per
query row, merges them (a log-sum-exp merge, flash-decoding style): two
launches per call instead of a score of small torch ops.
Narrow types are loaded and converted to fp32 before any arithmetic. On the GPU
the logit dots use 3xTF32 (TF32 alone errs by ~5e-4 in q.Q, which a student
temperature of 0.02 magnifies 50-fold into the exponent). The gradient is a
difference of two probability-weighted sums that nearly cancel, so its dots
P @ Q run in exact fp32 or in 3xTF32 (TF32 alone cost ~1e-3 relative error on
an H100), whichever of the launch candidates the GPU times fastest (see
CANDIDATES). Under the interpreter every dot is exact fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.backend import multiprocessor_count, triton_interpreter_enabled
from rdkernels.ops._autotune import TunedKernel
from rdkernels.ops.shared_bank_contrast.splits import LN2, LOG2E, split_buffers, split_queue

_LN2 = tl.constexpr(LN2)  # kernel-visible (compiled code reads only constexpr globals)
MAX_DIM = 128  # wider embeddings: the CUDA kernel (d <= 512) or torch


@triton.jit
def shared_bank_contrast_kernel(
    qs_ptr, qt_ptr, queue_ptr, stats_ptr, acc_ptr,
    batch, n_rows, dim, rows_per_split,
    stride_qs, stride_qt, stride_queue,
    scale_s, scale_t,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NEED_GRAD: tl.constexpr, DOT_PRECISION: tl.constexpr, GRAD_PRECISION: tl.constexpr,
):
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < batch
    d = tl.arange(0, BLOCK_D)
    d_mask = d < dim
    rows64 = rows.to(tl.int64)
    qmask = row_mask[:, None] & d_mask[None, :]
    # Queries pre-scaled so that the dots give base-2 logits.
    qs = tl.load(qs_ptr + rows64[:, None] * stride_qs + d[None, :], mask=qmask, other=0.0).to(tl.float32) * scale_s
    qt = tl.load(qt_ptr + rows64[:, None] * stride_qt + d[None, :], mask=qmask, other=0.0).to(tl.float32) * scale_t

    m_s = tl.full([BLOCK_B], -float("inf"), tl.float32)
    m_t = tl.full([BLOCK_B], -float("inf"), tl.float32)
    l_s = tl.zeros([BLOCK_B], tl.float32)
    l_t = tl.zeros([BLOCK_B], tl.float32)
    cross = tl.zeros([BLOCK_B], tl.float32)
    acc_s = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    acc_t = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)

    start = split * rows_per_split
    stop = tl.minimum(start + rows_per_split, n_rows)
    for n0 in range(start, stop, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < stop
        bank = tl.load(queue_ptr + n.to(tl.int64)[:, None] * stride_queue + d[None, :],
                       mask=n_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
        s = tl.dot(qs, tl.trans(bank), input_precision=DOT_PRECISION)
        t = tl.dot(qt, tl.trans(bank), input_precision=DOT_PRECISION)
        s_valid = tl.where(n_mask[None, :], s, 0.0)
        s = tl.where(n_mask[None, :], s, -float("inf"))
        t = tl.where(n_mask[None, :], t, -float("inf"))

        new_m_s = tl.maximum(m_s, tl.max(s, axis=1))
        alpha_s = tl.exp2(m_s - new_m_s)
        p_s = tl.exp2(s - new_m_s[:, None])
        l_s = l_s * alpha_s + tl.sum(p_s, axis=1)
        m_s = new_m_s

        new_m_t = tl.maximum(m_t, tl.max(t, axis=1))
        alpha_t = tl.exp2(m_t - new_m_t)
        p_t = tl.exp2(t - new_m_t[:, None])
        l_t = l_t * alpha_t + tl.sum(p_t, axis=1)
        cross = cross * alpha_t + tl.sum(p_t * s_valid, axis=1)
        m_t = new_m_t

        if NEED_GRAD:
            acc_s = acc_s * alpha_s[:, None] + tl.dot(p_s, bank, input_precision=GRAD_PRECISION)
            acc_t = acc_t * alpha_t[:, None] + tl.dot(p_t, bank, input_precision=GRAD_PRECISION)

    # stats: [5, splits, batch] = m_s, l_s, m_t, l_t, cross (base-2 units)
    plane = n_splits * batch
    base = split * batch + rows
    tl.store(stats_ptr + base, m_s, mask=row_mask)
    tl.store(stats_ptr + plane + base, l_s, mask=row_mask)
    tl.store(stats_ptr + 2 * plane + base, m_t, mask=row_mask)
    tl.store(stats_ptr + 3 * plane + base, l_t, mask=row_mask)
    tl.store(stats_ptr + 4 * plane + base, cross, mask=row_mask)
    if NEED_GRAD:
        # acc: [2, splits, batch, dim]
        offs = (split * batch + rows64)[:, None] * dim + d[None, :]
        tl.store(acc_ptr + offs, acc_s, mask=qmask)
        tl.store(acc_ptr + plane.to(tl.int64) * dim + offs, acc_t, mask=qmask)


@triton.jit
def shared_bank_merge_kernel(stats_ptr, acc_ptr, loss_ptr, dq_ptr, batch, splits, dim, inv_tau_s,
                             NEED_GRAD: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row b: merge the splits' (m, l, cross, acc) into loss[b] and dq_s[b] (see the module doc)."""
    b = tl.program_id(0)
    plane = splits * batch
    big_s = -float("inf")
    big_t = -float("inf")
    for s0 in range(0, splits, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        smask = s < splits
        big_s = tl.maximum(big_s, tl.max(tl.load(stats_ptr + s * batch + b, mask=smask, other=-float("inf")), 0))
        big_t = tl.maximum(big_t, tl.max(tl.load(stats_ptr + 2 * plane + s * batch + b, mask=smask,
                                                 other=-float("inf")), 0))
    sum_s = 0.0
    sum_t = 0.0
    cross = 0.0
    for s0 in range(0, splits, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        smask = s < splits
        at = s * batch + b
        w_s = tl.exp2(tl.load(stats_ptr + at, mask=smask, other=-float("inf")) - big_s)
        w_t = tl.exp2(tl.load(stats_ptr + 2 * plane + at, mask=smask, other=-float("inf")) - big_t)
        sum_s += tl.sum(tl.load(stats_ptr + plane + at, mask=smask, other=0.0) * w_s, 0)
        sum_t += tl.sum(tl.load(stats_ptr + 3 * plane + at, mask=smask, other=0.0) * w_t, 0)
        cross += tl.sum(tl.load(stats_ptr + 4 * plane + at, mask=smask, other=0.0) * w_t, 0)
    tl.store(loss_ptr + b, (big_s + tl.log2(sum_s) - cross / sum_t) * _LN2)
    if NEED_GRAD:
        d = tl.arange(0, BLOCK_D)
        dmask = d < dim
        dq = tl.zeros([BLOCK_D], tl.float32)
        for s0 in range(0, splits, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            smask = s < splits
            at = s * batch + b
            w_s = tl.exp2(tl.load(stats_ptr + at, mask=smask, other=-float("inf")) - big_s) / sum_s
            w_t = tl.exp2(tl.load(stats_ptr + 2 * plane + at, mask=smask, other=-float("inf")) - big_t) / sum_t
            offs = at.to(tl.int64)[:, None] * dim + d[None, :]
            m2 = smask[:, None] & dmask[None, :]
            a_s = tl.load(acc_ptr + offs, mask=m2, other=0.0)
            a_t = tl.load(acc_ptr + plane.to(tl.int64) * dim + offs, mask=m2, other=0.0)
            dq += tl.sum(a_s * w_s[:, None] - a_t * w_t[:, None], axis=0)
        tl.store(dq_ptr + b * dim + d, dq * inv_tau_s, mask=dmask)


MERGE_BLOCK_S = 16  # splits per step of the merge: [16, d <= 128] fp32 tiles, no spills


def _candidate(block_b, block_n, grad_precision, num_warps):
    return triton.Config(dict(BLOCK_B=block_b, BLOCK_N=block_n, GRAD_PRECISION=grad_precision),
                         num_warps=num_warps, num_stages=2)


# GPU launch candidates, timed per (batch, rows, width, dtype) by the autotuner
# (rdkernels/ops/_autotune.py). Small row blocks: the query tiles are operands of
# every dot, so each warp holds them; parallelism comes from splitting the queue.
# At d = 128 fp32 every variant sits at ~255 registers on sm_90 (8 warps per SM),
# and the AOT compile shows where the time goes: the exact-fp32 ("ieee") gradient
# dots are 520 of the 1399 SASS instructions per tile and warp, and hold their
# operands whole in registers; as 3xTF32 tensor-core dots (still fp32-accurate)
# the tile is 1008 instructions (and spills ~100 B). Which of these, or a 4-warp
# variant, wins is a question for the timing. (Capping registers at 128 for 16
# warps per SM spills ~1 KB per thread inside the loop: not a candidate.) Spills
# depend on the Triton version: at d = 128 the 16x64 exact-fp32 gradient variant
# spills ~576 B with Triton 3.6 and ~56 B with 3.9, the 3xTF32 ones the other way
# round (CI compiles all of them with both). The first candidate is the
# configuration used before any timing; it spills at most 28 B with either.
CANDIDATES = [
    _candidate(16, 32, "ieee", 8),
    _candidate(16, 32, "tf32x3", 8),
    _candidate(16, 64, "tf32x3", 8),
    _candidate(16, 32, "tf32x3", 4),
    _candidate(16, 64, "ieee", 8),
]
ROW_ALIGN = max(c.kwargs["BLOCK_N"] for c in CANDIDATES)  # a split is whole tiles for every candidate
INTERPRETER_CONFIG = dict(BLOCK_B=16, BLOCK_N=16, GRAD_PRECISION="ieee", num_warps=4, num_stages=1)


def _prune(configs: list, args: dict) -> list:
    """Forward-only calls run no gradient dot: time each tiling once."""
    if args.get("NEED_GRAD", True):
        return configs
    seen, kept = set(), []
    for c in configs:
        tiling = (c.kwargs["BLOCK_B"], c.kwargs["BLOCK_N"], c.num_warps)
        if tiling not in seen:
            seen.add(tiling)
            kept.append(c)
    return kept


contrast_kernel = TunedKernel(shared_bank_contrast_kernel, CANDIDATES, key=["batch", "n_rows", "dim", "NEED_GRAD"],
                              prune=_prune)


def _num_splits(batch: int, device: torch.device) -> int:
    """Splits of the queue wanted: about two programs per SM at 16 query rows per program."""
    if device.type == "cuda":
        return triton.cdiv(2 * multiprocessor_count(device), triton.cdiv(batch, 16))
    return 2  # interpreter: few programs, but still exercise the split merge


def shared_bank_contrast_triton(q_s, q_t, queue, tau_s: float, tau_t: float, need_grad: bool,
                                num_splits: int | None = None, config: triton.Config | None = None):
    """(loss[B] fp32, dq_s[B, d] fp32 or empty). ``num_splits`` and ``config``
    override the split heuristic and the timed launch configuration (tests)."""
    batch, dim = q_s.shape
    n_rows = queue.shape[0]
    dev = q_s.device
    on_gpu = dev.type == "cuda" and not triton_interpreter_enabled()
    align = ROW_ALIGN if on_gpu else INTERPRETER_CONFIG["BLOCK_N"]
    splits, rows_per_split = split_queue(n_rows, num_splits or _num_splits(batch, dev), align)
    stats, acc_at, loss, dq = split_buffers(batch, dim, splits, need_grad, dev)
    acc = stats[acc_at:] if need_grad else stats
    # The logit dots run in 3xTF32 on the GPU: TF32 alone errs by ~5e-4 in q.Q,
    # which a temperature of 0.02 magnifies fifty-fold in the exponent. The
    # interpreter's dots are exact fp32 whatever the precision says.
    block_d = max(16, triton.next_power_of_2(dim))
    contrast_kernel.launch(
        lambda m: (triton.cdiv(batch, m["BLOCK_B"]), splits),
        q_s, q_t, queue, stats, acc,
        batch, n_rows, dim, rows_per_split,
        q_s.stride(0), q_t.stride(0), queue.stride(0),
        LOG2E / tau_s, LOG2E / tau_t,
        config=config, fallback=None if on_gpu else INTERPRETER_CONFIG,
        BLOCK_D=block_d, NEED_GRAD=need_grad, DOT_PRECISION="tf32x3" if on_gpu else "ieee",
    )
    shared_bank_merge_kernel[(batch,)](stats, acc, loss, dq if need_grad else loss, batch, splits, dim, 1.0 / tau_s,
                                       NEED_GRAD=need_grad, BLOCK_S=MERGE_BLOCK_S, BLOCK_D=block_d,
                                       num_warps=4)
    return loss, dq


_DTYPE_STR = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _candidate_tag(c: triton.Config) -> str:
    k = c.kwargs
    return f"b{k['BLOCK_B']}n{k['BLOCK_N']}w{c.num_warps}_{k['GRAD_PRECISION']}"


def aot_variants() -> list[dict]:
    """Every configuration the GPU dispatcher launches: each candidate (forward-only
    calls: each tiling) at BLOCK_D 16..128 for three dtypes; the queue in the
    queries' dtype -- other pairings compile to the same tiles."""
    out = []
    for dim in (16, 32, 64, 128):
        block_d = max(16, triton.next_power_of_2(dim))
        for dt, name in _DTYPE_STR.items():
            for need_grad in (False, True):
                for cand in contrast_kernel.candidates(NEED_GRAD=need_grad):
                    signature = {
                        "qs_ptr": f"*{name}", "qt_ptr": f"*{name}", "queue_ptr": f"*{name}",
                        "stats_ptr": "*fp32", "acc_ptr": "*fp32",
                        "batch": "i32", "n_rows": "i32", "dim": "i32", "rows_per_split": "i32",
                        "stride_qs": "i32", "stride_qt": "i32", "stride_queue": "i32",
                        "scale_s": "fp32", "scale_t": "fp32",
                    }
                    constexprs = dict(cand.kwargs, BLOCK_D=block_d, NEED_GRAD=need_grad, DOT_PRECISION="tf32x3")
                    out.append({
                        "name": f"shared_bank_contrast_d{dim}_{name}_{'grad' if need_grad else 'fwd'}_"
                                + _candidate_tag(cand),
                        "kernel": shared_bank_contrast_kernel, "signature": signature,
                        "constexprs": constexprs, "num_warps": cand.num_warps, "num_stages": cand.num_stages,
                    })
        for need_grad in (False, True):
            out.append({
                "name": f"shared_bank_merge_d{dim}_{'grad' if need_grad else 'fwd'}",
                "kernel": shared_bank_merge_kernel,
                "signature": {"stats_ptr": "*fp32", "acc_ptr": "*fp32", "loss_ptr": "*fp32", "dq_ptr": "*fp32",
                              "batch": "i32", "splits": "i32", "dim": "i32", "inv_tau_s": "fp32"},
                "constexprs": dict(NEED_GRAD=need_grad, BLOCK_S=MERGE_BLOCK_S, BLOCK_D=block_d),
                "num_warps": 4, "num_stages": 1,
            })
    return out
