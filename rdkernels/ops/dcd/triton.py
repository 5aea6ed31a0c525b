"""Triton kernel for the DCD loss: both terms and all four gradients in one launch.

Program J owns the rows J (BLOCK = 16 of them) and the columns J of the B x B
logits L = scale * z_s z_t^T + bias. It needs exactly two strips: the row strip
L[J, :] and the column strip L[:, J]. From them alone it gets

* R_J, C_J: row and column log-sum-exps,
* CE_J = sum_{y in J} R_y - L[y, y] and KL_J = sum_{y in J} KL_y,
* the two halves of dloss/dL it can place (reference.py has the formula):
  G_row[y, x] = ((1 + alpha) P[y, x] - delta - alpha Qc[x, y]) / B  (rows J),
  G_col[x, y] = alpha / B * Qc[x, y] * (g[x, y] - KL_y)            (columns J),
  g[x, y] = (L[x, y] - C_y) - (L[y, x] - R_y) needs exactly R_J and C_J.

Every element of dloss/dL lands in exactly one half, so with dz_s = scale G z_t
and dz_t = scale G^T z_s each program writes
  local rows J:  G_row z_t -> dz_s[J],  G_col^T z_s -> dz_t[J]        (owned rows)
  all rows:      G_col[:, J] z_t[J] -> dz_s,  G_row[J, :]^T z_s[J] -> dz_t  (a partial)
and scalars CE_J, KL_J, sum G * S (d scale) and sum G (d bias); a second
kernel sums the partials into the outputs (deterministic, no atomics) and
applies the chain rule through scale = min(exp(tau), max_scale).

The strips are computed once (``tl.dot`` per strip and column chunk of BLOCK_X,
K in slices of BLOCK_K) and parked in a per-program scratch (2 * 16 * B floats,
L2-resident); sweeps over the scratch give the log-sum-exps (online), the KLs
and the gradients (the gradient sweep runs once per embedding, so only one
side's [16, d] tiles are live). Registers stay constant in B, so any batch size
compiles to the same small kernel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.backend import triton_interpreter_enabled
from rdkernels.ops._autotune import TunedKernel
from rdkernels.ops.dcd.buffers import dcd_buffers

MAX_DIM = 128  # wider: the CUDA kernel (d <= 256) or torch; d = 256 spills ~2 KB here
BLOCK = 16


@triton.jit
def dcd_kernel(
    zs_ptr, zt_ptr, tau_ptr, bias_ptr, stats_ptr, scratch_ptr, local_ptr, part_ptr,
    batch, dim, scratch_ld, stride_zs, stride_zt, inv_batch, alpha, max_scale,
    BLOCK: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    NEED_GRAD: tl.constexpr, DOT_PRECISION: tl.constexpr, GRAD_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    # a NaN tau must give a NaN loss as torch.clamp does, but the default
    # tl.minimum returns the other operand for a NaN one
    scale = tl.minimum(tl.exp(tl.load(tau_ptr)), max_scale, propagate_nan=tl.PropagateNan.ALL)
    bias = tl.load(bias_ptr)

    rows = pid * BLOCK + tl.arange(0, BLOCK)            # y in J
    xr = tl.arange(0, BLOCK_X)
    d = tl.arange(0, BLOCK_D)
    row_mask = rows < batch
    d_mask = d < dim
    rows64 = rows.to(tl.int64)
    jmask = row_mask[:, None] & d_mask[None, :]
    # scratch: [n_prog, 2, BLOCK, scratch_ld] raw similarities S[y, x] and S[x, y]
    s_base = scratch_ptr + pid.to(tl.int64) * 2 * BLOCK * scratch_ld
    s_offs = tl.arange(0, BLOCK)[:, None] * scratch_ld + xr[None, :]

    # Sweep 1: the strips (computed once), online row / column log-sum-exps, the diagonal.
    m_r = tl.full([BLOCK], -float("inf"), tl.float32)
    m_c = tl.full([BLOCK], -float("inf"), tl.float32)
    l_r = tl.zeros([BLOCK], tl.float32)
    l_c = tl.zeros([BLOCK], tl.float32)
    diag = tl.zeros([BLOCK], tl.float32)
    for x0 in range(0, batch, BLOCK_X):
        cols = x0 + xr
        col_mask = cols < batch
        cols64 = cols.to(tl.int64)
        s_row = tl.zeros([BLOCK, BLOCK_X], tl.float32)   # S[y, x]
        s_col = tl.zeros([BLOCK, BLOCK_X], tl.float32)   # S[x, y], stored [y, x]
        # K in slices of BLOCK_K: 3xTF32 on full-width tiles would not fit in registers
        for k0 in tl.static_range(0, BLOCK_D, BLOCK_K):
            dk = k0 + tl.arange(0, BLOCK_K)
            km = dk < dim
            jm = row_mask[:, None] & km[None, :]
            cm = col_mask[:, None] & km[None, :]
            a_s = tl.load(zs_ptr + rows64[:, None] * stride_zs + dk[None, :], mask=jm, other=0.0).to(tl.float32)
            a_t = tl.load(zt_ptr + rows64[:, None] * stride_zt + dk[None, :], mask=jm, other=0.0).to(tl.float32)
            c_s = tl.load(zs_ptr + cols64[:, None] * stride_zs + dk[None, :], mask=cm, other=0.0).to(tl.float32)
            c_t = tl.load(zt_ptr + cols64[:, None] * stride_zt + dk[None, :], mask=cm, other=0.0).to(tl.float32)
            s_row += tl.dot(a_s, tl.trans(c_t), input_precision=DOT_PRECISION)
            s_col += tl.dot(a_t, tl.trans(c_s), input_precision=DOT_PRECISION)
        tl.store(s_base + x0 + s_offs, s_row)
        tl.store(s_base + BLOCK * scratch_ld + x0 + s_offs, s_col)
        l_row = tl.where(col_mask[None, :], s_row * scale + bias, -float("inf"))
        l_col = tl.where(col_mask[None, :], s_col * scale + bias, -float("inf"))
        new_r = tl.maximum(m_r, tl.max(l_row, axis=1))
        l_r = l_r * tl.exp(m_r - new_r) + tl.sum(tl.exp(l_row - new_r[:, None]), axis=1)
        m_r = new_r
        new_c = tl.maximum(m_c, tl.max(l_col, axis=1))
        l_c = l_c * tl.exp(m_c - new_c) + tl.sum(tl.exp(l_col - new_c[:, None]), axis=1)
        m_c = new_c
        diag += tl.sum(tl.where(rows[:, None] == cols[None, :], l_row, 0.0), axis=1)
    tl.debug_barrier()  # the scratch is read back by other threads of this program
    lse_r = m_r + tl.log(l_r)
    lse_c = m_c + tl.log(l_c)

    # Sweep 2: KL_y = sum_x Qc[x, y] (log Qc[x, y] - log P[y, x]).
    kl = tl.zeros([BLOCK], tl.float32)
    for x0 in range(0, batch, BLOCK_X):
        valid = row_mask[:, None] & ((x0 + xr) < batch)[None, :]
        s_row = tl.load(s_base + x0 + s_offs)
        s_col = tl.load(s_base + BLOCK * scratch_ld + x0 + s_offs)
        log_p = tl.where(valid, s_row * scale + bias - lse_r[:, None], 0.0)
        log_q = tl.where(valid, s_col * scale + bias - lse_c[:, None], 0.0)
        kl += tl.sum(tl.where(valid, tl.exp(log_q) * (log_q - log_p), 0.0), axis=1)
    ce = tl.where(row_mask, lse_r - diag, 0.0)
    kl = tl.where(row_mask, kl, 0.0)
    tl.store(stats_ptr + pid * 4, tl.sum(ce, axis=0))
    tl.store(stats_ptr + pid * 4 + 1, tl.sum(kl, axis=0))

    if NEED_GRAD:
        # Sweep 3: the gradient strips and their products with the embeddings.
        # Sweep 3 (twice: once per embedding, so only one side's [16, d] tiles are live):
        # the gradient strips and their products with the embeddings.
        part_t_off = (n_prog * batch).to(tl.int64) * dim
        for side in tl.static_range(2):
            if side == 0:  # dz_s: G_row z_t (own rows), G_col^T z_t[J] (all rows)
                other_ptr = zt_ptr
                stride_o = stride_zt
                out_off = 0
            else:          # dz_t: G_col z_s (own rows), G_row^T z_s[J] (all rows)
                other_ptr = zs_ptr
                stride_o = stride_zs
                out_off = 1
            acc = tl.zeros([BLOCK, BLOCK_D], tl.float32)
            dsc = tl.zeros([BLOCK], tl.float32)
            db = tl.zeros([BLOCK], tl.float32)
            for x0 in range(0, batch, BLOCK_X):
                cols = x0 + xr
                col_mask = cols < batch
                valid = row_mask[:, None] & col_mask[None, :]
                amask = col_mask[:, None] & d_mask[None, :]
                cols64 = cols.to(tl.int64)
                s_row = tl.load(s_base + x0 + s_offs)
                s_col = tl.load(s_base + BLOCK * scratch_ld + x0 + s_offs)
                log_p = s_row * scale + bias - lse_r[:, None]
                log_q = s_col * scale + bias - lse_c[:, None]
                p = tl.exp(log_p)
                q = tl.exp(log_q)
                eye = tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
                g_row = tl.where(valid, ((1.0 + alpha) * p - eye - alpha * q) * inv_batch, 0.0)
                g_col = tl.where(valid, alpha * inv_batch * q * ((log_q - log_p) - kl[:, None]), 0.0)
                if side == 0:
                    dsc += tl.sum(g_row * s_row + g_col * s_col, axis=1)
                    db += tl.sum(g_row + g_col, axis=1)
                    g_own = g_row
                    g_all = g_col
                else:
                    g_own = g_col
                    g_all = g_row
                o_c = tl.load(other_ptr + cols64[:, None] * stride_o + d[None, :], mask=amask,
                              other=0.0).to(tl.float32)
                acc += tl.dot(g_own, o_c, input_precision=GRAD_PRECISION)
                o_j = tl.load(other_ptr + rows64[:, None] * stride_o + d[None, :], mask=jmask,
                              other=0.0).to(tl.float32)
                part = (pid * batch + cols64)[:, None] * dim + d[None, :]
                tl.store(part_ptr + out_off * part_t_off + part,
                         tl.dot(tl.trans(g_all), o_j, input_precision=GRAD_PRECISION), mask=amask)
            if side == 0:
                tl.store(stats_ptr + pid * 4 + 2, tl.sum(dsc, axis=0))
                tl.store(stats_ptr + pid * 4 + 3, tl.sum(db, axis=0))
            loc = rows64[:, None] * dim + d[None, :]
            tl.store(local_ptr + out_off * batch * dim + loc, acc, mask=jmask)


@triton.jit
def dcd_finish_kernel(stats_ptr, local_ptr, part_ptr, tau_ptr, loss_ptr, dzs_ptr, dzt_ptr, dtau_ptr, dbias_ptr,
                      n_prog, batch, dim, inv_batch, alpha, max_scale,
                      NEED_GRAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program b: dz_s[b], dz_t[b] = (local + the programs' parts) * scale; program 0
    also the loss, d tau (torch.clamp passes the gradient inside [0, max]) and d bias."""
    b = tl.program_id(0)
    e = tl.exp(tl.load(tau_ptr))
    if b == 0:
        ce = 0.0
        kl = 0.0
        gs = 0.0
        g = 0.0
        for p0 in range(0, n_prog, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            pm = p < n_prog
            ce += tl.sum(tl.load(stats_ptr + p * 4, mask=pm, other=0.0), 0)
            kl += tl.sum(tl.load(stats_ptr + p * 4 + 1, mask=pm, other=0.0), 0)
            if NEED_GRAD:
                gs += tl.sum(tl.load(stats_ptr + p * 4 + 2, mask=pm, other=0.0), 0)
                g += tl.sum(tl.load(stats_ptr + p * 4 + 3, mask=pm, other=0.0), 0)
        tl.store(loss_ptr, (ce + alpha * kl) * inv_batch)
        if NEED_GRAD:
            tl.store(dtau_ptr, gs * tl.where(e <= max_scale, e, 0.0))
            tl.store(dbias_ptr, g)
    if NEED_GRAD:
        d = tl.arange(0, BLOCK_D)
        dm = d < dim
        bd = tl.cast(batch, tl.int64) * dim  # (batch 1 arrives as a Python int: no .to)
        at = b.to(tl.int64) * dim + d
        vs = tl.load(local_ptr + at, mask=dm, other=0.0)
        vt = tl.load(local_ptr + bd + at, mask=dm, other=0.0)
        for p in range(0, n_prog):
            vs += tl.load(part_ptr + p * bd + at, mask=dm, other=0.0)
            vt += tl.load(part_ptr + (n_prog + p) * bd + at, mask=dm, other=0.0)
        scale = tl.minimum(e, max_scale, propagate_nan=tl.PropagateNan.ALL)  # NaN tau: NaN gradients
        tl.store(dzs_ptr + at, vs * scale, mask=dm)
        tl.store(dzt_ptr + at, vt * scale, mask=dm)


FINISH_BLOCK_P = 64


def _candidate(block_x: int, block_k: int, grad_precision: str, num_warps: int) -> triton.Config:
    return triton.Config(dict(BLOCK_X=block_x, BLOCK_K=block_k, GRAD_PRECISION=grad_precision),
                         num_warps=num_warps, num_stages=1)


# GPU launch candidates, timed per (B, d) by the autotuner (rdkernels/ops/_autotune.py);
# the first is the configuration used before any timing. What the compiler says
# (Triton 3.6, sm_90, fp32, gradient variant; SASS instructions of each sweep's loop
# per logit, ``tools/aot_check.py --sass``):
#
#   BLOCK_X, BLOCK_K, gradient dots, warps   d = 128: sweep 1 / gradient sweeps, spills   d = 64
#   32, 16, 3xTF32, 8                        3.5 / 3.7, 40 B                               2.1 / 2.4, 0 B
#   16, 16, exact fp32, 8 (4 at d <= 64)     9.5 / 6.5, 120 B                              5.4 / 6.6, 160 B
#   32, 32, 3xTF32, 8                        3.3 / 3.7, 52 B
#
# The exact-fp32 rows are the configuration shipped before these were timed: 16-column chunks
# walk the batch in twice the sequential steps, and exact-fp32 gradient dots are
# FMA loops. 3xTF32 gradient dots are fp32-accurate (TF32 alone was ~1e-3 off on an
# H100: the gradient is a difference of nearly equal sums). 64-column chunks spill
# ~600 B at d = 128.
CANDIDATES = [
    _candidate(32, 16, "tf32x3", 8),
    _candidate(16, 16, "ieee", 8),
    _candidate(16, 16, "ieee", 4),
    _candidate(32, 32, "tf32x3", 8),
    _candidate(32, 16, "tf32x3", 4),
]
SCRATCH_ALIGN = max(c.kwargs["BLOCK_X"] for c in CANDIDATES)  # the strips' leading dimension, for every candidate


def _fits(config: triton.Config, block_d: int) -> bool:
    """A K slice wider than the embedding is wasted; 3xTF32 at 4 warps spills at
    d = 128; the exact-fp32 configuration keeps the warps it shipped with (4 up to
    d = 64, 8 at d = 128)."""
    if config.kwargs["BLOCK_K"] > block_d:
        return False
    if config.kwargs["GRAD_PRECISION"] == "ieee":
        return config.num_warps == (4 if block_d <= 64 else 8)
    return config.num_warps == 8 or block_d <= 64


def _prune(configs: list, args: dict) -> list:
    return [c for c in configs if _fits(c, args["BLOCK_D"])]


dcd_tuned = TunedKernel(dcd_kernel, CANDIDATES, key=["batch", "dim", "NEED_GRAD"], prune=_prune)


def _interpreter_config(block_d: int) -> dict:
    """Small chunks, so the tests cross chunk boundaries; every dot exact fp32."""
    return dict(BLOCK_X=16, BLOCK_K=min(block_d, 32), GRAD_PRECISION="ieee", num_warps=4, num_stages=1)


def dcd_triton(z_s, z_t, tau, bias, max_scale: float, alpha: float, need_grad: bool,
               config: triton.Config | None = None):
    """tau, bias: one-element fp32 tensors on the device. Returns (loss, grads): grads
    flat [dz_s | dz_t | d tau | d bias] (buffers.py), empty without need_grad.
    ``config`` forces one launch candidate (tests)."""
    batch, dim = z_s.shape
    block_d = max(16, triton.next_power_of_2(dim))
    n_prog = triton.cdiv(batch, BLOCK)
    scratch_ld = triton.cdiv(batch, SCRATCH_ALIGN) * SCRATCH_ALIGN
    # the logit strips' scratch [n_prog, 2, BLOCK, scratch_ld] rides in the same allocation
    buf = dcd_buffers(z_s, n_prog, need_grad, extra=n_prog * 2 * BLOCK * scratch_ld)
    stats, strips = buf.scratch, buf.scratch[buf.extra_at:]
    local, part = (buf.scratch[buf.local_at:], buf.scratch[buf.part_at:]) if need_grad else (stats, stats)
    on_gpu = z_s.device.type == "cuda" and not triton_interpreter_enabled()
    # GPU: 3xTF32 for the logits (scale up to 10 magnifies their error); the
    # interpreter computes every dot in exact fp32.
    dcd_tuned.launch(
        lambda meta: (n_prog,),
        z_s, z_t, tau, bias, stats, strips, local, part,
        batch, dim, scratch_ld, z_s.stride(0), z_t.stride(0), 1.0 / batch, float(alpha), float(max_scale),
        config=config, fallback=None if on_gpu else _interpreter_config(block_d),
        BLOCK=BLOCK, BLOCK_D=block_d, NEED_GRAD=need_grad, DOT_PRECISION="tf32x3" if on_gpu else "ieee",
    )
    g, bd = buf.grads, batch * dim
    # (without the gradient the kernel writes only the loss: the other pointers are placeholders)
    grads = (g, g[bd:], g[2 * bd:], g[2 * bd + 1:]) if need_grad else (buf.loss,) * 4
    dcd_finish_kernel[(batch if need_grad else 1,)](
        stats, local, part, tau, buf.loss, *grads, n_prog, batch, dim, 1.0 / batch, float(alpha),
        float(max_scale), NEED_GRAD=need_grad, BLOCK_P=FINISH_BLOCK_P, BLOCK_D=block_d, num_warps=4)
    return buf.loss, buf.grads


_DTYPE_STR = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _candidate_tag(c: triton.Config) -> str:
    k = c.kwargs
    return f"x{k['BLOCK_X']}k{k['BLOCK_K']}w{c.num_warps}_{k['GRAD_PRECISION']}"


def aot_variants() -> list[dict]:
    """Every configuration the GPU dispatcher launches: BLOCK_D 16 .. 128, three
    dtypes, with and without the gradient, each candidate that fits the width.
    B is a runtime value."""
    out = []
    for dim in (16, 32, 64, 128):
        block_d = max(16, triton.next_power_of_2(dim))
        for name in _DTYPE_STR.values():
            for need_grad in (True, False):
                signature = {
                    "zs_ptr": f"*{name}", "zt_ptr": f"*{name}", "tau_ptr": "*fp32", "bias_ptr": "*fp32",
                    "stats_ptr": "*fp32",
                    "scratch_ptr": "*fp32", "local_ptr": "*fp32", "part_ptr": "*fp32",
                    "batch": "i32", "dim": "i32", "scratch_ld": "i32", "stride_zs": "i32", "stride_zt": "i32",
                    "inv_batch": "fp32", "alpha": "fp32", "max_scale": "fp32",
                }
                for cand in dcd_tuned.candidates(BLOCK_D=block_d):
                    constexprs = dict(cand.kwargs, BLOCK=BLOCK, BLOCK_D=block_d, NEED_GRAD=need_grad,
                                      DOT_PRECISION="tf32x3")
                    out.append({"name": f"dcd_d{dim}_{name}_{'grad' if need_grad else 'fwd'}_{_candidate_tag(cand)}",
                                "kernel": dcd_kernel, "signature": signature, "constexprs": constexprs,
                                "num_warps": cand.num_warps, "num_stages": cand.num_stages})
        for need_grad in (True, False):
            signature = {k: "*fp32" for k in ("stats_ptr", "local_ptr", "part_ptr", "tau_ptr", "loss_ptr",
                                              "dzs_ptr", "dzt_ptr", "dtau_ptr", "dbias_ptr")}
            signature.update(n_prog="i32", batch="i32", dim="i32", inv_batch="fp32", alpha="fp32", max_scale="fp32")
            out.append({"name": f"dcd_finish_d{dim}_{'grad' if need_grad else 'fwd'}", "kernel": dcd_finish_kernel,
                        "signature": signature,
                        "constexprs": dict(NEED_GRAD=need_grad, BLOCK_P=FINISH_BLOCK_P, BLOCK_D=block_d),
                        "num_warps": 4, "num_stages": 1})
    return out
