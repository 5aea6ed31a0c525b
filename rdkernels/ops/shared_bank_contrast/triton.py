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
temperature of 0.02 magnifies 50-fold into the exponent); the two gradient dots
P @ Q use TF32 (relative error ~5e-4 of the probability-weighted rows, and
3xTF32 there would double the registers and spill). Under the interpreter every
dot is exact fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.backend import triton_interpreter_enabled
from rdkernels.ops.shared_bank_contrast.splits import LN2, LOG2E

_LN2 = tl.constexpr(LN2)  # kernel-visible (compiled code reads only constexpr globals)
MAX_DIM = 128  # wider embeddings: the CUDA kernel (d <= 512) or torch


@triton.jit
def shared_bank_contrast_kernel(
    qs_ptr, qt_ptr, queue_ptr, stats_ptr, acc_ptr,
    batch, n_rows, dim, tiles_per_split,
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

    start = split * tiles_per_split * BLOCK_N
    stop = tl.minimum(start + tiles_per_split * BLOCK_N, n_rows)
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


def launch_config(batch: int, dim: int, device: torch.device) -> dict:
    """Tiles: 16 query rows x BLOCK_N queue rows x the whole (padded) width. Small
    row blocks keep the four fp32 [16, d] tiles (q_s, q_t, acc_s, acc_t) in
    registers; parallelism comes from splitting the queue instead."""
    block_d = max(16, triton.next_power_of_2(dim))
    if device.type != "cuda":  # interpreter: small tiles keep numpy's work small
        return dict(BLOCK_B=16, BLOCK_N=16, BLOCK_D=block_d, num_warps=4, num_stages=1)
    return dict(BLOCK_B=16, BLOCK_N=32, BLOCK_D=block_d, num_warps=8, num_stages=2)


def _num_splits(batch: int, n_rows: int, cfg: dict, device: torch.device) -> int:
    n_tiles = triton.cdiv(n_rows, cfg["BLOCK_N"])
    row_blocks = triton.cdiv(batch, cfg["BLOCK_B"])
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = triton.cdiv(2 * sms, row_blocks)
    else:  # interpreter: few programs, but still exercise the split merge
        want = 2
    return max(1, min(n_tiles, want))


def shared_bank_contrast_triton(q_s, q_t, queue, tau_s: float, tau_t: float, need_grad: bool,
                                num_splits: int | None = None):
    """(loss[B] fp32, dq_s[B, d] fp32 or empty). ``num_splits`` overrides the heuristic (tests)."""
    batch, dim = q_s.shape
    n_rows = queue.shape[0]
    cfg = launch_config(batch, dim, q_s.device)
    block_n = cfg["BLOCK_N"]
    n_tiles = triton.cdiv(n_rows, block_n)
    splits = num_splits or _num_splits(batch, n_rows, cfg, q_s.device)
    splits = max(1, min(splits, n_tiles))
    tiles_per_split = triton.cdiv(n_tiles, splits)
    splits = triton.cdiv(n_tiles, tiles_per_split)  # no empty split
    dev = q_s.device
    stats = torch.empty(5, splits, batch, device=dev, dtype=torch.float32)
    acc = torch.empty(2, splits, batch, dim, device=dev, dtype=torch.float32) if need_grad else stats
    exact = triton_interpreter_enabled() or dev.type != "cuda"
    # The gradient is a difference of two probability-weighted sums that nearly
    # cancel, so TF32's 10-bit inputs cost ~1e-3 relative error there (seen on an
    # H100): the gradient products run in exact fp32 ("ieee"); the logits in 3xTF32.
    precision, grad_precision = ("ieee", "ieee") if exact else ("tf32x3", "ieee")
    grid = (triton.cdiv(batch, cfg["BLOCK_B"]), splits)
    shared_bank_contrast_kernel[grid](
        q_s, q_t, queue, stats, acc,
        batch, n_rows, dim, tiles_per_split,
        q_s.stride(0), q_t.stride(0), queue.stride(0),
        LOG2E / tau_s, LOG2E / tau_t,
        NEED_GRAD=need_grad, DOT_PRECISION=precision, GRAD_PRECISION=grad_precision, **cfg,
    )
    loss = torch.empty(batch, device=dev, dtype=torch.float32)
    dq = torch.empty(batch, dim, device=dev, dtype=torch.float32) if need_grad else loss.new_empty(0)
    shared_bank_merge_kernel[(batch,)](stats, acc, loss, dq if need_grad else loss, batch, splits, dim, 1.0 / tau_s,
                                       NEED_GRAD=need_grad, BLOCK_S=MERGE_BLOCK_S, BLOCK_D=cfg["BLOCK_D"],
                                       num_warps=4)
    return loss, dq


_DTYPE_STR = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def aot_variants() -> list[dict]:
    """Every configuration the GPU dispatcher launches (BLOCK_D 16..128, three dtypes;
    the queue in the queries' dtype -- other pairings compile to the same tiles)."""
    out = []
    cuda = torch.device("cuda")
    for dim in (16, 32, 64, 128):
        cfg = launch_config(64, dim, cuda)
        for dt, name in _DTYPE_STR.items():
            for need_grad in (False, True):
                signature = {
                    "qs_ptr": f"*{name}", "qt_ptr": f"*{name}", "queue_ptr": f"*{name}",
                    "stats_ptr": "*fp32", "acc_ptr": "*fp32",
                    "batch": "i32", "n_rows": "i32", "dim": "i32", "tiles_per_split": "i32",
                    "stride_qs": "i32", "stride_qt": "i32", "stride_queue": "i32",
                    "scale_s": "fp32", "scale_t": "fp32",
                }
                constexprs = {k: cfg[k] for k in ("BLOCK_B", "BLOCK_N", "BLOCK_D")}
                constexprs.update(NEED_GRAD=need_grad, DOT_PRECISION="tf32x3", GRAD_PRECISION="ieee")
                out.append({
                    "name": f"shared_bank_contrast_d{dim}_{name}_{'grad' if need_grad else 'fwd'}",
                    "kernel": shared_bank_contrast_kernel, "signature": signature,
                    "constexprs": constexprs, "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
                })
        for need_grad in (False, True):
            out.append({
                "name": f"shared_bank_merge_d{dim}_{'grad' if need_grad else 'fwd'}",
                "kernel": shared_bank_merge_kernel,
                "signature": {"stats_ptr": "*fp32", "acc_ptr": "*fp32", "loss_ptr": "*fp32", "dq_ptr": "*fp32",
                              "batch": "i32", "splits": "i32", "dim": "i32", "inv_tau_s": "fp32"},
                "constexprs": dict(NEED_GRAD=need_grad, BLOCK_S=MERGE_BLOCK_S, BLOCK_D=cfg["BLOCK_D"]),
                "num_warps": 4, "num_stages": 1,
            })
    return out
