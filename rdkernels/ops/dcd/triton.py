"""Triton kernels for the DCD loss: both terms and all four gradients in three launches.

The B x B logits L = scale * S + bias, S = z_s z_t^T, are cut into TILE x TILE
tiles. Everything the loss and its gradient need is a row or column sum of an
elementwise function of L[a, b] and L[b, a] (reference.py has the formulas).
Each row's walk over the batch is cut into SPLITS programs whose partials are
merged in one vector load, so every launch spreads over the GPU whatever B:

1. ``dcd_similarity_kernel``, program (I, split, side): rows I of S (side 0) or
   of S^T = z_t z_s^T (side 1) against the split's column tiles, into an fp32
   scratch [2, B, B] (8 MB at B = 1024, L2-resident), and the rows' partial
   log-sum-exp of the logits: side 0's rows are L's rows (R), side 1's are L's
   columns (C). With S^T stored too, every later read is a row read.
2. ``dcd_stats_kernel``, program (J, split): for L's columns b in J, over the
   split's rows a: the share of KL_b = sum_a Qc[a, b] g[a, b] and of the sums
   d tau needs, CE on the diagonal, and sum G'S, sum G', where G' is dloss/dL
   without its KL term, which no program knows yet:
       G[a, b] = G'[a, b] - alpha / B * Qc[a, b] * KL_b
   Split 0 also writes the merged R and C.
3. ``dcd_grad_kernel``: a program per BLOCK_M rows of dz_s = scale G z_t and of
   dz_t = scale G^T z_s walks the batch once, rebuilding each G tile from S,
   S^T, R, C and KL; one more program sums the partials into the loss,
   d tau = sum G S * d scale / d tau and d bias = sum G.

Every sum runs in a fixed order: deterministic, no atomics.

Why three launches and not one: the kernel this replaced gave a program 16 rows
and every column (the two logit strips in a per-program scratch, then sweeps
over them), so B / 16 programs each walked all B columns one dependent step
after another, and a [B / 16, B, d] gradient partial was written and summed
back. Its time grew linearly in B from B = 128 on (0.2 ms at B = 64, 1.1 ms at
B = 1024, 2.3 ms at B = 2048 on an H100, forward with the gradient). Here
launches 1 and 2 run 2 B / TILE * SPLITS and B / TILE * SPLITS programs of
B / (TILE * SPLITS) steps (4 at B = 1024), and launch 3 2 B / BLOCK_M programs
of B / BLOCK_N steps of one tile product each. The scratch is 2 B^2 floats, as
the old strips were.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.backend import triton_runs_compiled
from rdkernels.ops._aot_types import FLOAT_TYPES
from rdkernels.ops._autotune import TunedKernel
from rdkernels.ops._blocks import block_width, cdiv
from rdkernels.ops._compile_options import COMPILE_OPTIONS
from rdkernels.ops._scratch import aligned
from rdkernels.ops._tf32 import dot_3xtf32, tf32_exact
from rdkernels.ops.dcd.buffers import dcd_outputs

TILE = 32              # launches 1 and 2: logit tiles of TILE x TILE
SPLITS = 8             # ... and each row's walk cut into SPLITS programs
INTERPRETER_TILE = 16  # the interpreter: small tiles and two splits, so small tests cross both
INTERPRETER_SPLITS = 2
SCALAR_BLOCK = 128     # the summing program's vector width


@triton.jit
def _scale_and_bias(tau_ptr, bias_ptr, max_scale):
    # a NaN tau must give a NaN loss as torch.clamp does, but the default
    # tl.minimum returns the other operand for a NaN one
    scale = tl.minimum(tl.exp(tl.load(tau_ptr)), max_scale, propagate_nan=tl.PropagateNan.ALL)
    return scale, tl.load(bias_ptr)


@triton.jit
def _split_range(split, n_tiles, SPLITS: tl.constexpr):
    """The tiles [first, last) of a row's walk that split ``split`` takes (maybe none)."""
    per = tl.cdiv(n_tiles, SPLITS)
    first = split * per
    return first, tl.minimum(first + per, n_tiles)


@triton.jit
def _merged_lse(max_ptr, sum_ptr, idx, mask, ld, SPLITS: tl.constexpr):
    """log-sum-exp of the SPLITS partials (max, sum) stored at [s * ld + idx]; 0
    where ``mask`` is false (-inf there would meet -inf or +inf in the callers'
    tiles: NaN, masked out later, but a warning under the interpreter)."""
    at = tl.arange(0, SPLITS)[:, None] * ld + idx[None, :]
    m = tl.load(max_ptr + at, mask=mask[None, :], other=-float("inf"))
    s = tl.load(sum_ptr + at, mask=mask[None, :], other=0.0)
    top = tl.max(m, axis=0)
    safe = tl.where(top == -float("inf"), 0.0, top)
    total = tl.sum(s * tl.exp(m - safe[None, :]), axis=0)
    return tl.where(mask, safe, 0.0) + tl.log(tl.where(mask, total, 1.0))


@triton.jit
def _summed(ptr, idx, mask, ld, SPLITS: tl.constexpr):
    """Sum of the SPLITS partials stored at [s * ld + idx]."""
    at = tl.arange(0, SPLITS)[:, None] * ld + idx[None, :]
    return tl.sum(tl.load(ptr + at, mask=mask[None, :], other=0.0), axis=0)


@triton.jit
def _tile(mat_ptr, ld, rows, cols, valid):
    """mat[rows, cols] of a row-major [ld, ld] fp32 matrix (0 outside ``valid``)."""
    return tl.load(mat_ptr + rows.to(tl.int64)[:, None] * ld + cols[None, :], mask=valid, other=0.0)


@triton.jit
def _embeddings(z_ptr, stride, rows, row_mask, cols, col_mask):
    """z[rows, cols] of an embedding matrix, as fp32 (0 outside the masks)."""
    return tl.load(z_ptr + rows.to(tl.int64)[:, None] * stride + cols[None, :],
                   mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _row_col_lse(lse_ptr, ld, idx, mask):
    """The merged R[idx] and C[idx] (0 outside ``mask``)."""
    return (tl.load(lse_ptr + idx, mask=mask, other=0.0),
            tl.load(lse_ptr + ld + idx, mask=mask, other=0.0))


@triton.jit
def _square(ld):
    """ld * ld in int64: S^T starts ld^2 floats after S (past int32 from B = 46 341)."""
    return tl.cast(ld, tl.int64) * ld


@triton.jit
def dcd_similarity_kernel(
    zs_ptr, zt_ptr, tau_ptr, bias_ptr, sim_ptr, part_ptr,
    batch, dim, ld, stride_zs, stride_zt, max_scale,
    TILE: tl.constexpr, SPLITS: tl.constexpr, BLOCK_K: tl.constexpr, Z_EXACT: tl.constexpr,
):
    """Program (i, s, side): rows I of S = z_s z_t^T (side 0) or of S^T = z_t z_s^T
    (side 1) against the column tiles of split s: the tiles into ``sim[side]``, the
    rows' log-sum-exp of the logits over them into ``part[side]`` (max, sum; -inf, 0
    for an empty split). Side 0's rows are L's rows (R), side 1's its columns (C)."""
    pi = tl.program_id(0)
    split = tl.program_id(1)
    side = tl.program_id(2)
    scale, bias = _scale_and_bias(tau_ptr, bias_ptr, max_scale)
    a_ptr = zs_ptr
    b_ptr = zt_ptr
    stride_a = stride_zs
    stride_b = stride_zt
    if side == 1:
        a_ptr = zt_ptr
        b_ptr = zs_ptr
        stride_a = stride_zt
        stride_b = stride_zs
    rows = pi * TILE + tl.arange(0, TILE)
    row_mask = rows < batch
    mat = sim_ptr + side * _square(ld)
    first, last = _split_range(split, ld // TILE, SPLITS)
    m = tl.full([TILE], -float("inf"), tl.float32)
    total = tl.zeros([TILE], tl.float32)
    for j in range(first, last):
        cols = j * TILE + tl.arange(0, TILE)
        col_mask = cols < batch
        # K in slices: a whole [TILE, d] row block held across the walk spills at d >= 128
        s = tl.zeros([TILE, TILE], tl.float32)
        for k0 in range(0, dim, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < dim
            za = _embeddings(a_ptr, stride_a, rows, row_mask, k, k_mask)
            zb = _embeddings(b_ptr, stride_b, cols, col_mask, k, k_mask)
            s = dot_3xtf32(za, tl.trans(zb), s, Z_EXACT, Z_EXACT)
        # [ld, ld] with ld a multiple of TILE: whole tiles, no mask
        tl.store(mat + rows.to(tl.int64)[:, None] * ld + cols[None, :], s)
        logits = tl.where(row_mask[:, None] & col_mask[None, :], s * scale + bias, -float("inf"))
        new = tl.maximum(m, tl.max(logits, axis=1))
        safe = tl.where(new == -float("inf"), 0.0, new)
        total = total * tl.exp(m - safe) + tl.sum(tl.exp(logits - safe[:, None]), axis=1)
        m = new
    at = part_ptr + (side * 2 * SPLITS + split) * ld + rows
    tl.store(at, m)
    tl.store(at + SPLITS * ld, total)


@triton.jit
def dcd_stats_kernel(
    sim_ptr, tau_ptr, bias_ptr, part_ptr, lse_ptr, col_ptr, tile_ptr,
    batch, ld, inv_batch, alpha, max_scale,
    TILE: tl.constexpr, SPLITS: tl.constexpr, NEED_GRAD: tl.constexpr,
):
    """Program (j, s): columns b in J of L (rows of S^T), walking the rows a of split s.
    Writes R, C (split 0); the split's sums over a of Qc g (KL), Qc S and Qc
    (planes 0..2 of ``col``, row s); and its CE, sum G'S and sum G' (``tile``)."""
    pj = tl.program_id(0)
    split = tl.program_id(1)
    scale, bias = _scale_and_bias(tau_ptr, bias_ptr, max_scale)
    b = pj * TILE + tl.arange(0, TILE)
    b_mask = b < batch
    plane = SPLITS * ld
    r_b = _merged_lse(part_ptr, part_ptr + plane, b, b_mask, ld, SPLITS)
    c_b = _merged_lse(part_ptr + 2 * plane, part_ptr + 3 * plane, b, b_mask, ld, SPLITS)
    if split == 0:
        tl.store(lse_ptr + b, r_b, mask=b_mask)
        tl.store(lse_ptr + ld + b, c_b, mask=b_mask)
    kl = tl.zeros([TILE], tl.float32)
    u = tl.zeros([TILE], tl.float32)
    w = tl.zeros([TILE], tl.float32)
    ce = tl.zeros([TILE], tl.float32)
    # d tau's and d bias's sums as tiles, reduced once after the walk (Triton 3.9
    # crashes in LLVM lowering on two more per-step row sums in this loop)
    gs = tl.zeros([TILE, TILE], tl.float32)
    g = tl.zeros([TILE, TILE], tl.float32)
    first, last = _split_range(split, ld // TILE, SPLITS)
    for i in range(first, last):
        a = i * TILE + tl.arange(0, TILE)
        a_mask = a < batch
        valid = b_mask[:, None] & a_mask[None, :]
        s_ab = _tile(sim_ptr + _square(ld), ld, b, a, valid)   # [b, a]: S^T[b, a] = S[a, b]
        l_ab = s_ab * scale + bias                           # L[a, b]
        l_ba = _tile(sim_ptr, ld, b, a, valid) * scale + bias  # L[b, a]
        log_q = l_ab - c_b[:, None]                          # log Qc[a, b]
        q = tl.where(valid, tl.exp(log_q), 0.0)
        qg = tl.where(valid, q * (log_q - (l_ba - r_b[:, None])), 0.0)   # Qc[a, b] g[a, b]
        kl += tl.sum(qg, axis=1)
        eye = b[:, None] == a[None, :]
        ce += tl.sum(tl.where(valid & eye, r_b[:, None] - l_ba, 0.0), axis=1)
        if NEED_GRAD:
            u += tl.sum(q * s_ab, axis=1)
            w += tl.sum(q, axis=1)
            r_a = _merged_lse(part_ptr, part_ptr + plane, a, a_mask, ld, SPLITS)
            c_a = _merged_lse(part_ptr + 2 * plane, part_ptr + 3 * plane, a, a_mask, ld, SPLITS)
            # G' = G with KL_b = 0, its tile [b, a]
            g_part = _grad_tile(l_ab, l_ba, r_a[None, :], c_a[None, :], r_b[:, None], c_b[:, None], 0.0,
                                tl.where(eye, 1.0, 0.0), valid, alpha, inv_batch)
            gs += g_part * s_ab
            g += g_part
    col = split * ld + b
    tl.store(col_ptr + col, kl, mask=b_mask)
    tile = (pj * SPLITS + split) * 3
    tl.store(tile_ptr + tile, tl.sum(ce, axis=0))
    if NEED_GRAD:
        tl.store(col_ptr + plane + col, u, mask=b_mask)
        tl.store(col_ptr + 2 * plane + col, w, mask=b_mask)
        tl.store(tile_ptr + tile + 1, tl.sum(tl.sum(gs, axis=1), axis=0))
        tl.store(tile_ptr + tile + 2, tl.sum(tl.sum(g, axis=1), axis=0))


@triton.jit
def _grad_tile(l_ab, l_ba, r_a, c_a, r_b, c_b, kl_b, eye, valid, alpha, inv_batch):
    """dloss/dL[a, b] from L[a, b], L[b, a] and the stats, all broadcast to one tile
    (0 outside ``valid``)."""
    p = tl.exp(l_ab - r_a)
    log_q = l_ab - c_b
    q = tl.exp(log_q)
    q_ba = tl.exp(l_ba - c_a)
    g = log_q - (l_ba - r_b)
    grad = ((1.0 + alpha) * p - eye - alpha * q_ba + alpha * q * (g - kl_b)) * inv_batch
    return tl.where(valid, grad, 0.0)


@triton.jit
def dcd_grad_kernel(
    zs_ptr, zt_ptr, tau_ptr, bias_ptr, sim_ptr, lse_ptr, col_ptr, tile_ptr,
    loss_ptr, dzs_ptr, dzt_ptr, dtau_ptr, dbias_ptr,
    batch, dim, ld, n_tiles, stride_zs, stride_zt, inv_batch, alpha, max_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr,
    SCALAR_BLOCK: tl.constexpr, NEED_GRAD: tl.constexpr, Z_EXACT: tl.constexpr,
):
    """Programs [0, n_m): rows of dz_s; [n_m, 2 n_m): rows of dz_t; the last one
    (the only one without the gradient): loss, d tau, d bias."""
    pid = tl.program_id(0)
    scale, bias = _scale_and_bias(tau_ptr, bias_ptr, max_scale)
    plane = SPLITS * ld
    if pid == tl.num_programs(0) - 1:
        kl = 0.0
        kl_u = 0.0
        kl_w = 0.0
        for b0 in range(0, batch, SCALAR_BLOCK):
            b = b0 + tl.arange(0, SCALAR_BLOCK)
            bm = b < batch
            kl_b = _summed(col_ptr, b, bm, ld, SPLITS)
            kl += tl.sum(kl_b, axis=0)
            if NEED_GRAD:
                kl_u += tl.sum(kl_b * _summed(col_ptr + plane, b, bm, ld, SPLITS), axis=0)
                kl_w += tl.sum(kl_b * _summed(col_ptr + 2 * plane, b, bm, ld, SPLITS), axis=0)
        ce = 0.0
        gs = 0.0
        g = 0.0
        for t0 in range(0, n_tiles * SPLITS, SCALAR_BLOCK):
            t = t0 + tl.arange(0, SCALAR_BLOCK)
            tm = t < n_tiles * SPLITS
            ce += tl.sum(tl.load(tile_ptr + t * 3, mask=tm, other=0.0), axis=0)
            if NEED_GRAD:
                gs += tl.sum(tl.load(tile_ptr + t * 3 + 1, mask=tm, other=0.0), axis=0)
                g += tl.sum(tl.load(tile_ptr + t * 3 + 2, mask=tm, other=0.0), axis=0)
        tl.store(loss_ptr, (ce + alpha * kl) * inv_batch)
        if NEED_GRAD:
            # torch.clamp passes the gradient inside [0, max_scale]; exp(tau) >= 0
            e = tl.exp(tl.load(tau_ptr))
            tl.store(dtau_ptr, (gs - alpha * inv_batch * kl_u) * tl.where(e <= max_scale, e, 0.0))
            tl.store(dbias_ptr, g - alpha * inv_batch * kl_w)
    elif NEED_GRAD:
        n_m = tl.cdiv(batch, BLOCK_M)
        d = tl.arange(0, BLOCK_D)
        d_mask = d < dim
        own = (pid % n_m) * BLOCK_M + tl.arange(0, BLOCK_M)
        own_mask = own < batch
        r_own, c_own = _row_col_lse(lse_ptr, ld, own, own_mask)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        # S and S^T are both stored, so either walk reads rows: dz_s's tile [a, b]
        # takes L[a, b] from S and L[b, a] from S^T, dz_t's tile [b, a] the reverse
        if pid < n_m:
            # dz_s[own] = scale * sum_b G[own, b] z_t[b]
            for b0 in range(0, batch, BLOCK_N):
                b = b0 + tl.arange(0, BLOCK_N)
                b_mask = b < batch
                valid = own_mask[:, None] & b_mask[None, :]
                r_b, c_b = _row_col_lse(lse_ptr, ld, b, b_mask)
                kl_b = _summed(col_ptr, b, b_mask, ld, SPLITS)
                grad = _grad_tile(_tile(sim_ptr, ld, own, b, valid) * scale + bias,
                                  _tile(sim_ptr + _square(ld), ld, own, b, valid) * scale + bias,
                                  r_own[:, None], c_own[:, None], r_b[None, :], c_b[None, :], kl_b[None, :],
                                  tl.where(own[:, None] == b[None, :], 1.0, 0.0), valid, alpha, inv_batch)
                acc = dot_3xtf32(grad, _embeddings(zt_ptr, stride_zt, b, b_mask, d, d_mask), acc, False, Z_EXACT)
            out_ptr = dzs_ptr
        else:
            # dz_t[own] = scale * sum_a G[a, own] z_s[a], from the tiles G^T[own, a]
            kl_own = _summed(col_ptr, own, own_mask, ld, SPLITS)
            for a0 in range(0, batch, BLOCK_N):
                a = a0 + tl.arange(0, BLOCK_N)
                a_mask = a < batch
                valid = own_mask[:, None] & a_mask[None, :]
                r_a, c_a = _row_col_lse(lse_ptr, ld, a, a_mask)
                grad_t = _grad_tile(_tile(sim_ptr + _square(ld), ld, own, a, valid) * scale + bias,
                                    _tile(sim_ptr, ld, own, a, valid) * scale + bias,
                                    r_a[None, :], c_a[None, :], r_own[:, None], c_own[:, None], kl_own[:, None],
                                    tl.where(own[:, None] == a[None, :], 1.0, 0.0), valid, alpha, inv_batch)
                acc = dot_3xtf32(grad_t, _embeddings(zs_ptr, stride_zs, a, a_mask, d, d_mask), acc, False, Z_EXACT)
            out_ptr = dzt_ptr
        tl.store(out_ptr + own.to(tl.int64)[:, None] * dim + d[None, :], acc * scale,
                 mask=own_mask[:, None] & d_mask[None, :])


def _candidate(block_m: int, block_n: int, num_warps: int, num_stages: int = 1) -> triton.Config:
    return triton.Config(dict(BLOCK_M=block_m, BLOCK_N=block_n), num_warps=num_warps, num_stages=num_stages)


# GPU launch candidates of the gradient kernel, timed per (B, d) by the autotuner
# (rdkernels/ops/_autotune.py); the first runs before any timing. Taller row blocks
# reuse each z tile over more rows, shorter ones give the GPU more programs
# (2 B / BLOCK_M of them: 64 at B = 1024 with 32-row blocks); two stages prefetch
# the next step's tiles. What ptxas says (Triton 3.9, sm_80 and sm_90, fp32, gradient
# variant, 3xTF32 split as ops/_tf32.py does):
#
#   BLOCK_M x BLOCK_N, warps, stages   d = 128: regs, spills   d = 256
#   32 x 32, 8, 1                      158-160, 0              208-254, 0
#   32 x 32, 8, 2                      178, 0
#   16 x 32, 4, 1                      164-196, 0
#   64 x 32, 8, 1                      230-252, 0
#   32 x 64, 8, 1                      222-238, 0
#
# 16 x 64 blocks at 4 warps spill ~900 B at d = 128 with two stages.
CANDIDATES = [
    _candidate(32, 32, 8),
    _candidate(32, 32, 8, num_stages=2),
    _candidate(16, 32, 4),
    _candidate(64, 32, 8),
    _candidate(32, 64, 8),
]


def _fits(config: triton.Config, block_d: int) -> bool:
    """At d = 256 the [BLOCK_M, d] accumulator and a [BLOCK_N, d] z tile need 8
    warps' registers, and larger blocks or a second stage spill."""
    if block_d > 128:
        return (config.num_warps == 8 and config.num_stages == 1
                and config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] <= 32 * 32)
    return True


def _prune(configs: list, args: dict) -> list:
    return [c for c in configs if _fits(c, args["BLOCK_D"])]


dcd_grad_tuned = TunedKernel(dcd_grad_kernel, CANDIDATES, key=["batch", "dim", "NEED_GRAD"], prune=_prune)


def _candidate_tag(c: triton.Config) -> str:
    k = c.kwargs
    return f"m{k['BLOCK_M']}n{k['BLOCK_N']}w{c.num_warps}s{c.num_stages}"


def _block_k(block_d: int) -> int:
    """The similarity kernel's K slice."""
    return min(block_d, 32)


class _Layout:
    """Offsets (floats) of the call's scratch segments, each 256-byte aligned."""

    def __init__(self, batch: int, tile: int, splits: int):
        self.n_tiles = -(-batch // tile)
        self.ld = self.n_tiles * tile                         # S's leading dimension
        self.sim = 0                                          # S, then S^T: [2, ld, ld]
        self.part = aligned(2 * self.ld * self.ld)            # [4, splits, ld]: max, sum of R; of C
        self.lse = self.part + aligned(4 * splits * self.ld)  # [2, ld]: R, C
        self.col = self.lse + aligned(2 * self.ld)            # [3, splits, ld]: sums of Qc g, Qc S, Qc
        self.tile = self.col + aligned(3 * splits * self.ld)  # [n_tiles * splits, 3]: CE, sum G'S, sum G'
        self.total = self.tile + aligned(3 * self.n_tiles * splits)


def dcd_triton(z_s, z_t, tau, bias, max_scale: float, alpha: float, need_grad: bool,
               config: triton.Config | None = None):
    """tau, bias: one-element fp32 tensors on the device. Returns (loss, grads): grads
    flat [dz_s | dz_t | d tau | d bias] (buffers.py), empty without need_grad.
    ``config`` forces one launch candidate of the gradient kernel (tests)."""
    batch, dim = z_s.shape
    block_d = block_width(dim)
    on_gpu = triton_runs_compiled(z_s.device)
    tile, splits = (TILE, SPLITS) if on_gpu else (INTERPRETER_TILE, INTERPRETER_SPLITS)
    lay = _Layout(batch, tile, splits)
    scratch = torch.empty(lay.total, device=z_s.device, dtype=torch.float32)
    sim, part, lse, col, tiles = (scratch[at:] for at in (lay.sim, lay.part, lay.lse, lay.col, lay.tile))
    loss, grads = dcd_outputs(z_s, need_grad)
    # 3xTF32 dots (ops/_tf32.py; the scale, up to 10, magnifies the logits' error, and
    # dz is a difference of nearly equal sums); bf16 / fp16 embeddings are not split
    z_exact = tf32_exact(z_s.dtype) and tf32_exact(z_t.dtype)
    dcd_similarity_kernel[(lay.n_tiles, splits, 2)](
        z_s, z_t, tau, bias, sim, part, batch, dim, lay.ld, z_s.stride(0), z_t.stride(0), float(max_scale),
        TILE=tile, SPLITS=splits, BLOCK_K=_block_k(block_d), Z_EXACT=z_exact, num_warps=4, num_stages=2,
        **COMPILE_OPTIONS)
    dcd_stats_kernel[(lay.n_tiles, splits)](
        sim, tau, bias, part, lse, col, tiles, batch, lay.ld, 1.0 / batch, float(alpha), float(max_scale),
        TILE=tile, SPLITS=splits, NEED_GRAD=need_grad, num_warps=4, num_stages=2, **COMPILE_OPTIONS)
    bd = batch * dim
    # (without the gradient only the summing program runs: the other pointers are placeholders)
    outs = (grads, grads[bd:], grads[2 * bd:], grads[2 * bd + 1:]) if need_grad else (loss,) * 4
    dcd_grad_tuned.launch(
        lambda meta: (2 * cdiv(batch, meta["BLOCK_M"]) + 1 if need_grad else 1,),
        z_s, z_t, tau, bias, sim, lse, col, tiles, loss, *outs,
        batch, dim, lay.ld, lay.n_tiles, z_s.stride(0), z_t.stride(0), 1.0 / batch, float(alpha),
        float(max_scale),
        config=config, fallback=None if on_gpu else _interpreter_config(),
        BLOCK_D=block_d, SPLITS=splits, SCALAR_BLOCK=SCALAR_BLOCK, NEED_GRAD=need_grad, Z_EXACT=z_exact,
    )
    return loss, grads


def _interpreter_config() -> dict:
    """Small blocks, so the tests cross block boundaries (and BLOCK_M != BLOCK_N)."""
    return dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=1)


def aot_variants() -> list[dict]:
    """Every configuration the GPU dispatcher launches: three dtypes, BLOCK_D 16 .. 256;
    the gradient kernel with and without the gradient, each candidate that fits the
    width. B is a runtime value."""
    out = []
    ints = {k: "i32" for k in ("batch", "dim", "ld", "stride_zs", "stride_zt")}
    for dtype, name in FLOAT_TYPES.items():
        z = {"zs_ptr": f"*{name}", "zt_ptr": f"*{name}"}
        sig = {**z, **{k: "*fp32" for k in ("tau_ptr", "bias_ptr", "sim_ptr", "part_ptr")}, **ints,
               "max_scale": "fp32"}
        for block_k in (16, 32):
            out.append({"name": f"dcd_similarity_k{block_k}_{name}", "kernel": dcd_similarity_kernel,
                        "signature": sig, "num_warps": 4, "num_stages": 2,
                        "constexprs": dict(TILE=TILE, SPLITS=SPLITS, BLOCK_K=block_k, Z_EXACT=tf32_exact(dtype))})
        for dim in (16, 32, 64, 128, 256):
            block_d = block_width(dim)
            sig = {**z, **{k: "*fp32" for k in ("tau_ptr", "bias_ptr", "sim_ptr", "lse_ptr", "col_ptr", "tile_ptr",
                                                "loss_ptr", "dzs_ptr", "dzt_ptr", "dtau_ptr", "dbias_ptr")},
                   **ints, "n_tiles": "i32", "inv_batch": "fp32", "alpha": "fp32", "max_scale": "fp32"}
            for need_grad in (True, False):
                cands = dcd_grad_tuned.candidates(BLOCK_D=block_d) if need_grad else [dcd_grad_tuned.default]
                for cand in cands:
                    out.append({"name": f"dcd_grad_d{dim}_{name}_{'grad' if need_grad else 'fwd'}_"
                                        f"{_candidate_tag(cand)}",
                                "kernel": dcd_grad_kernel, "signature": sig,
                                "num_warps": cand.num_warps, "num_stages": cand.num_stages,
                                "constexprs": dict(cand.kwargs, BLOCK_D=block_d, SPLITS=SPLITS,
                                                   SCALAR_BLOCK=SCALAR_BLOCK, NEED_GRAD=need_grad,
                                                   Z_EXACT=tf32_exact(dtype))})
    for need_grad in (True, False):
        sig = {k: "*fp32" for k in ("sim_ptr", "tau_ptr", "bias_ptr", "part_ptr", "lse_ptr", "col_ptr",
                                    "tile_ptr")}
        sig.update(batch="i32", ld="i32", inv_batch="fp32", alpha="fp32", max_scale="fp32")
        out.append({"name": f"dcd_stats_{'grad' if need_grad else 'fwd'}", "kernel": dcd_stats_kernel,
                    "signature": sig, "num_warps": 4, "num_stages": 2,
                    "constexprs": dict(TILE=TILE, SPLITS=SPLITS, NEED_GRAD=need_grad)})
    return out
