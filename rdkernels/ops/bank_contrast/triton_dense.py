"""Triton kernel for bank contrast, dense strategy (see dense.py for the math).

Flash-attention-shaped: one program per (block of BLOCK_M query rows, split
of the bank). It streams its bank tiles of BLOCK_N rows once; per tile

* ``s = q @ tile^T / T`` on tensor cores (fp32 via 3xTF32, split as
  ops/_tf32.py does, each tile once a layout; bf16 natively when both operands
  are bf16; fp32 accumulation),
* the multiplicity tile ``cnt[BLOCK_M, BLOCK_N]`` is one load of the packed
  sample counts (sample_counts.py: two 16-bit counts a word), issued beside
  the bank tile's; nothing in the loop depends on a previous load, so Triton
  software-pipelines both,
* the epilogue weights each (row, bank row) pair by its count: NCE terms and
  d loss / d s, or the online softmax's max / sum, rescaled flash-style,
* ``acc += coef @ tile`` (the dq GEMM), so no [B, N] matrix ever exists.

Rows wider than 128 run the pure-PyTorch dense formulation instead (cuBLAS
GEMMs on a GPU, see dense.py): the kernel's register budget does not hold
them without spills.

The positive (column 0) is left to the merge kernel (triton_merge.py), which
also merges the splits. Narrow types are loaded, then converted to
fp32 unless both dot operands are bf16 on a GPU. The interpreter runs the
3xTF32 path for every dtype pair (its bf16 dot is garbage), so the CPU tests
exercise the split; one test gives it a GPU's bf16 dot and rounding to run the
native-bf16 variant as well.
"""
from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

from rdkernels.backend import triton_runs_compiled
from rdkernels.ops._aot_types import TRITON_TYPE
from rdkernels.ops._blocks import block_width
from rdkernels.ops._autotune import TunedKernel
from rdkernels.ops._tf32 import dot_split, split_tf32, tf32_exact
from rdkernels.ops.bank_contrast.dense import bank_contrast_loss_dense_torch, fused_dense_takes, run_fused_dense
from rdkernels.ops.bank_contrast.reference import nce_constants
# the epilogue codes are the gather kernel's
from rdkernels.ops.bank_contrast.triton import _EPILOGUES, _NCE_C, _SOFTMAX_C, NCE, SOFTMAX
from rdkernels.ops.bank_contrast.triton_merge import _softplus_sigmoid, merge_partials_triton

BLOCK_N = 32


@triton.jit
def bank_contrast_dense_kernel(
    q_ptr, bank_ptr, counts_ptr, z_ptr,
    loss_ptr, dq_ptr, max_ptr, sum_ptr,
    batch, n_bank, dim, n_tiles, tiles_per_split,
    stride_q, stride_bank, stride_counts,
    inv_t, log_c, log_mpn_c,
    EPILOGUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BF16_DOT: tl.constexpr, Q_EXACT: tl.constexpr, BANK_EXACT: tl.constexpr, TILE_TWICE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < batch
    rows64 = rows.to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < dim
    q = tl.load(q_ptr + rows64[:, None] * stride_q + d[None, :], mask=row_mask[:, None] & d_mask[None, :],
                other=0.0)
    if BF16_DOT:
        q = q.to(tl.bfloat16)
    else:
        q, q_lo = split_tf32(q.to(tl.float32), Q_EXACT)  # once, for every tile
    log_z = 0.0
    if EPILOGUE == _NCE_C:
        log_z = tl.log(tl.load(z_ptr).to(tl.float32))

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    loss = tl.zeros([BLOCK_M], dtype=tl.float32)
    run_max = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_col = tl.arange(0, BLOCK_N)
    # bank row j's count: bits 16 * (j % 2) of word j // 2 (sample_counts.py)
    word_col = n_col // 2
    shift = (n_col % 2) * 16

    t_start = split * tiles_per_split
    t_stop = tl.minimum(t_start + tiles_per_split, n_tiles)
    counts_row = counts_ptr + rows64 * stride_counts
    for t in range(t_start, t_stop):
        j = t * BLOCK_N + n_col
        j_mask = j < n_bank
        tile_ptr = bank_ptr + j.to(tl.int64)[:, None] * stride_bank + d[None, :]
        tile_mask = j_mask[:, None] & d_mask[None, :]
        # TILE_TWICE loads the tile a second time, transposed, as the score dot's
        # operand: Triton's pipeliner stages (async copies, num_stages deep) a load
        # feeding one dot, not one load feeding a dot and a transpose. The second read
        # hits L2. Otherwise the tile is loaded once and transposed in registers:
        # fewer instructions, a synchronous load (CANDIDATES).
        w = tl.load(tile_ptr, mask=tile_mask, other=0.0)
        if TILE_TWICE:
            w_t = tl.load(tl.trans(tile_ptr), mask=tl.trans(tile_mask), other=0.0)
        # count rows are padded to whole tiles (zeros past n_bank): no column mask
        words = tl.load(counts_row[:, None] + (t * (BLOCK_N // 2) + word_col)[None, :], mask=row_mask[:, None],
                        other=0)
        cnt = (words >> shift[None, :]) & 0xFFFF
        if BF16_DOT:
            w = w.to(tl.bfloat16)
            w_t = tl.trans(w)   # a bf16 bank: loaded once (_prune)
            s = tl.dot(q, w_t) * inv_t                                        # [BLOCK_M, BLOCK_N]
        else:
            # 3xTF32 (ops/_tf32.py); a bf16 or fp16 operand is exact in TF32 and not split
            w, w_lo = split_tf32(w.to(tl.float32), BANK_EXACT)
            if TILE_TWICE:
                w_t, w_t_lo = split_tf32(w_t.to(tl.float32), BANK_EXACT)
            else:
                w_t, w_t_lo = tl.trans(w), tl.trans(w_lo)
            s = dot_split(q, q_lo, w_t, w_t_lo, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32),
                          Q_EXACT, BANK_EXACT) * inv_t
        has = cnt > 0
        cnt_f = cnt.to(tl.float32)

        if EPILOGUE == _SOFTMAX_C:
            tile_max = tl.max(tl.where(has, s, -float("inf")), axis=1)
            new_max = tl.maximum(run_max, tile_max)
            safe = tl.where(new_max == -float("inf"), 0.0, new_max)
            scale = tl.exp(run_max - safe)
            coef = tl.where(has, cnt_f * tl.exp(s - safe[:, None]), 0.0)
            run_sum = run_sum * scale + tl.sum(coef, axis=1)
            acc = acc * scale[:, None]
            run_max = new_max
        else:  # NCE negatives, in log space: t = log x - log c
            tt = s - log_z - log_c
            term, sig = _softplus_sigmoid(tt)
            loss += tl.sum(tl.where(has, cnt_f * (term - log_mpn_c), 0.0), axis=1)
            coef = tl.where(has, cnt_f * sig, 0.0) * inv_t
        if BF16_DOT:
            # coef in two bf16 halves: one bf16 rounding of coef (2^-9) put 2% errors in
            # dq entries where the K terms cancel (an H100 run); hi + lo keeps ~16 bits
            coef_hi = coef.to(tl.bfloat16)
            coef_lo = (coef - coef_hi.to(tl.float32)).to(tl.bfloat16)
            acc += tl.dot(coef_hi, w)
            acc += tl.dot(coef_lo, w)
        else:
            coef_hi, coef_lo = split_tf32(coef)
            acc = dot_split(coef_hi, coef_lo, w, w_lo, acc, False, BANK_EXACT)

    part = rows64 * n_splits + split
    tl.store(dq_ptr + part[:, None] * dim + d[None, :], acc, mask=row_mask[:, None] & d_mask[None, :])
    if EPILOGUE == _NCE_C:
        tl.store(loss_ptr + part, loss, mask=row_mask)
    else:
        tl.store(max_ptr + part, run_max, mask=row_mask)
        tl.store(sum_ptr + part, run_sum, mask=row_mask)


MAX_DIM = 128


def launch_config(dim: int) -> dict:
    """The tiling every candidate shares (the split layout and the count words
    follow it). BLOCK_M = 16: with 3xTF32 dots Triton keeps hi/lo copies of the
    query, the tile and the coefficients in registers; 16 x 32 tiles at d <= 128
    compile without spills on sm_80 and sm_90 (ptxas -v: up to 255 registers),
    32-row blocks (8 warps) and d = 256 do not. Query rows share each bank tile
    through L2. 16-row bank tiles leave [16, 16] score tiles, too narrow for four
    warps' MMAs."""
    return dict(BLOCK_M=16, BLOCK_N=BLOCK_N, BLOCK_D=block_width(dim))


def _candidate(tile_twice: bool) -> triton.Config:
    return triton.Config(dict(TILE_TWICE=tile_twice), num_warps=4, num_stages=3)


# GPU launch candidates, timed per (rows, bank, width, split, epilogue, dtypes) by
# the autotuner (ops/_autotune.py); the first is the configuration shipped before
# any timing. They differ in how an fp32 bank tile reaches the two dots, not in the
# arithmetic (the same split values, the same dots: bitwise equal results under the
# interpreter, tested). What the compiler
# says at d = 128, fp32 bank and queries, four warps, three stages (SASS
# instructions of the tile loop per (query row, bank row) pair, all warps
# together; Triton 3.9; no spills in any):
#
#   tile            nce sm_90 / sm_80   softmax sm_90 / sm_80   loop loads   shared memory   regs sm_90
#   loaded twice    12.4 / 9.8          11.3 / 9.8              all staged   90 KB           219-223
#   loaded once     8.7 / 8.9           8.0 / 8.1               tile sync    53 KB           196-200
#
# Loaded once, the tile feeds a dot and a transpose, which Triton's pipeliner does
# not stage, so each tile step waits on its load (RRD's 16-row kernel showed such a
# wait on an H100); loaded twice, both loads are async copies issued stages ahead,
# for 10-43% more instructions and 90 KB of shared memory (two programs an SM on
# sm_90, one on sm_80). Only a timing tells which wins. A 16-bit bank's tile loads
# stay synchronous either way (the conversion after the load), so it is loaded
# once (_prune). Eight warps: 11-13 instructions a pair; two or four stages: as
# three. num_stages = 3: two stages spilled 36 B in the twice-loaded sm_90 softmax
# variant.
CANDIDATES = [_candidate(tile_twice=True), _candidate(tile_twice=False)]


def _prune(configs: list, args: dict) -> list:
    """A 16-bit bank's tile is loaded once (see CANDIDATES)."""
    bank = args.get("bank_ptr")
    exact = bank is not None and tf32_exact(bank.dtype)
    return [c for c in configs if not (exact and c.kwargs["TILE_TWICE"])]


# Timed apart: each chunk's rows, the bank, the width, the split, the epilogue
# (tensor dtypes are in every key).
dense_kernel = TunedKernel(bank_contrast_dense_kernel, CANDIDATES,
                           key=["batch", "n_bank", "dim", "tiles_per_split", "EPILOGUE"], prune=_prune)


def candidate_tag(launch: dict) -> str:
    """"x2" for a launch loading its bank tiles twice, "x1" for one loading them once."""
    return "x2" if launch["TILE_TWICE"] else "x1"


def _shipped(bank: torch.Tensor) -> dict:
    """The launch used where nothing is timed: the first candidate this bank takes."""
    return dense_kernel.candidates(bank_ptr=bank)[0].all_kwargs()


def _one_tile_a_program(launch: dict) -> dict:
    """One tile a program (banks of up to ~2 000 rows) leaves the pipeliner nothing
    to overlap; its prologue then only adds registers, so it is off, and nothing is
    timed (sm_90, fp32, Triton 3.9: 136 B of spills with three stages, 116 B with
    two, 8 B with one)."""
    return dict(launch, num_stages=1)


def _use_bf16_dot(q_dtype, bank_dtype, block_d: int) -> bool:
    # Native bf16 dots only when both operands are bf16 (an fp32 query rounded to
    # bf16 would lose accuracy). At BLOCK_D = 64 ptxas (sm_90) caps that variant
    # at 128 registers and spills; the 3xTF32 variant there does not.
    return q_dtype == torch.bfloat16 and bank_dtype == torch.bfloat16 and block_d >= 128


def _native_bf16_dots(device: torch.device) -> bool:
    """Whether bf16 dots are exact where the kernel runs: on a GPU, not under the
    interpreter, whose bf16 dot is garbage (the tests give it a correct one to
    check the variant on a CPU: python_tests/interpreter_bf16.py)."""
    return triton_runs_compiled(device)


def _dot_flags(query, bank, block_d) -> dict:
    """The kernel's dot constexprs: native bf16 dots where they are exact and both
    operands are bf16, else 3xTF32 with the operands that are exact in TF32 left
    unsplit."""
    return dict(BF16_DOT=_native_bf16_dots(query.device) and _use_bf16_dot(query.dtype, bank.dtype, block_d),
                Q_EXACT=tf32_exact(query.dtype), BANK_EXACT=tf32_exact(bank.dtype))


def bank_contrast_loss_dense_triton(query, bank, idx, z, temperature, epilogue, n_data,
                                    config: triton.Config | None = None):
    """(row_loss[B], dq[B, d]) fp32, as bank_contrast_loss_torch, dense strategy.
    ``config`` forces a launch candidate (tests sweep them)."""
    n_cols = idx.shape[1]
    n_bank, dim = bank.shape
    if dim > MAX_DIM or not fused_dense_takes(n_cols):  # cuBLAS GEMMs + gathered scalar scores (dense.py)
        return bank_contrast_loss_dense_torch(query, bank, idx, z, temperature, epilogue, n_data)
    cfg = launch_config(dim)
    code = _EPILOGUES[epilogue]
    unused = torch.empty(1, device=query.device, dtype=torch.float32)
    log_c, log_mpn_c = nce_constants(n_cols - 1, n_data) if code == NCE else (0.0, 0.0)
    dot_flags = _dot_flags(query, bank, cfg["BLOCK_D"])
    shipped = _shipped(bank)

    def launch(rows, counts, parts, grid, n_tiles, per):
        loss_parts, dq_parts, max_parts, sum_parts = (unused if p is None else p for p in parts)
        forced = None if config is None else config.all_kwargs()
        if per == 1:
            forced = _one_tile_a_program(forced or shipped)
        dense_kernel.launch(
            lambda meta: grid,
            query[rows], bank, counts, unused if z is None else z, loss_parts, dq_parts, max_parts, sum_parts,
            counts.shape[0], n_bank, dim, n_tiles, per, query.stride(0), bank.stride(0), counts.stride(0),
            1.0 / temperature, log_c, log_mpn_c,
            config=forced, fallback=shipped,
            EPILOGUE=code, **dot_flags, **cfg,
        )

    parts = run_fused_dense(launch, query, bank, idx, code, cfg["BLOCK_M"], cfg["BLOCK_N"])
    return merge_partials_triton(epilogue, query, bank, idx, z, temperature, n_data, *parts, positive_in_parts=False)


def aot_variants() -> list[dict]:
    """Every specialisation bank_contrast_loss_dense_triton can launch: each candidate
    a bank dtype takes."""
    variants = []
    for dim in (64, 128):
        cfg = launch_config(dim)
        for epi_name, code in (("nce", NCE), ("softmax", SOFTMAX)):
            for q_dt, bank_dt in itertools.product((torch.float32, torch.bfloat16, torch.float16),
                                                   (torch.float32, torch.bfloat16)):
                bf16_dot = _use_bf16_dot(q_dt, bank_dt, cfg["BLOCK_D"])
                for cand in _prune(CANDIDATES, dict(bank_ptr=torch.empty(0, dtype=bank_dt))):
                    sig = {
                        "q_ptr": "*" + TRITON_TYPE[q_dt], "bank_ptr": "*" + TRITON_TYPE[bank_dt],
                        "counts_ptr": "*i32", "z_ptr": "*fp32",
                        "loss_ptr": "*fp32", "dq_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32",
                        "batch": "i32", "n_bank": "i32", "dim": "i32", "n_tiles": "i32",
                        "tiles_per_split": "i32", "stride_q": "i32", "stride_bank": "i32", "stride_counts": "i32",
                        "inv_t": "fp32", "log_c": "fp32", "log_mpn_c": "fp32",
                    }
                    variants.append(dict(
                        name=f"bank_contrast_dense[{epi_name},d{cfg['BLOCK_D']},q={TRITON_TYPE[q_dt]},"
                             f"bank={TRITON_TYPE[bank_dt]}{',x2' if cand.kwargs['TILE_TWICE'] else ''}]",
                        kernel=bank_contrast_dense_kernel, signature=sig,
                        constexprs=dict(EPILOGUE=code, **cfg, BF16_DOT=bf16_dot, Q_EXACT=tf32_exact(q_dt),
                                        BANK_EXACT=tf32_exact(bank_dt), **cand.kwargs),
                        num_warps=cand.num_warps, num_stages=cand.num_stages))
    # integers the dispatcher can pass as 1 (B = 1; one tile per split) are their own specialisation
    for v in [v for v in variants if "d128,q=fp32,bank=fp32" in v["name"]]:
        for arg in ("batch", "tiles_per_split"):
            one = dict(v, name=v["name"][:-1] + f",{arg}=1]", signature=dict(v["signature"], **{arg: "constexpr"}),
                       constexprs=dict(v["constexprs"], **{arg: 1}))
            if arg == "tiles_per_split":
                one["num_stages"] = _one_tile_a_program({"num_stages": v["num_stages"]})["num_stages"]
            variants.append(one)
    return variants
