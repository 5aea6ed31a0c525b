"""Triton kernels for bank contrast, gather strategy.

One program per (query row, column split). It walks its columns of ``idx`` in
tiles of BLOCK_K, gathers those bank rows straight from the bank (never
materialising the [B, K+1, d] tensor), scores them against the query and
applies the epilogue on the fly:

* NCE (CRD): per-column loss terms and d loss / d s, accumulated into dq;
* SOFTMAX (InfoNCE): online max / sum of exp, with the probability-weighted
  row sum rescaled as the max moves (flash-style);
* SCORES: write s itself;
* SCORES_BWD: dq = sum_k grad_s[k] * w_k / T.

Splitting the columns keeps the GPU busy at small batch (B = 64 rows alone
would fill half an H100). Each split writes partial results: two torch sums
merge NCE's, the merge kernel (triton_merge.py) softmax's, which need a
rescale by the split maxima.
Narrow types are loaded and converted to fp32 before any arithmetic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.ops._aot_types import TRITON_TYPE
from rdkernels.ops._blocks import block_width, cdiv
from rdkernels.ops._compile_options import COMPILE_OPTIONS
from rdkernels.ops._splits import split_tiles, splits_wanted
from rdkernels.ops.bank_contrast.partials import EPILOGUE_CODES as _EPILOGUES
from rdkernels.ops.bank_contrast.partials import NCE, SCORES, SCORES_BWD, SOFTMAX, gather_buffers
from rdkernels.ops.bank_contrast.reference import nce_constants
from rdkernels.ops.bank_contrast.triton_merge import _softplus_sigmoid, merge_gather_partials

# the same codes as kernel-visible globals (compiled code reads only constexpr globals)
_NCE_C, _SOFTMAX_C, _SCORES_C, _SCORES_BWD_C = (tl.constexpr(c) for c in (NCE, SOFTMAX, SCORES, SCORES_BWD))


@triton.jit
def bank_contrast_kernel(
    q_ptr, bank_ptr, idx_ptr, z_ptr, grad_ptr,
    out_ptr, dq_ptr, max_ptr, sum_ptr,
    n_cols, dim, cols_per_split,
    stride_q, stride_bank, stride_idx,
    inv_t, log_c, log_mpn_c,
    EPILOGUE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < dim
    q = tl.load(q_ptr + row * stride_q + d, mask=d_mask, other=0.0).to(tl.float32)
    start = split * cols_per_split
    stop = tl.minimum(start + cols_per_split, n_cols)

    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    loss = 0.0
    run_max = -float("inf")
    run_sum = 0.0
    log_z = 0.0
    if EPILOGUE == _NCE_C:
        log_z = tl.log(tl.load(z_ptr).to(tl.float32))

    for k0 in range(start, stop, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < stop
        rows = tl.load(idx_ptr + row * stride_idx + k, mask=k_mask, other=0).to(tl.int64)
        w = tl.load(bank_ptr + rows[:, None] * stride_bank + d[None, :],
                    mask=k_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
        s = tl.sum(w * q[None, :], axis=1) * inv_t
        if EPILOGUE == _SCORES_C:
            tl.store(out_ptr + row * n_cols + k, s, mask=k_mask)
        elif EPILOGUE == _SCORES_BWD_C:
            g = tl.load(grad_ptr + row * n_cols + k, mask=k_mask, other=0.0).to(tl.float32)
            acc += tl.sum((g * inv_t)[:, None] * w, axis=0)
        elif EPILOGUE == _SOFTMAX_C:
            s = tl.where(k_mask, s, -float("inf"))
            new_max = tl.maximum(run_max, tl.max(s, axis=0))
            scale = tl.exp(run_max - new_max)
            p = tl.exp(s - new_max)
            run_sum = run_sum * scale + tl.sum(p, axis=0)
            acc = acc * scale + tl.sum(p[:, None] * w, axis=0)
            run_max = new_max
        else:  # NCE in log space: log x = s - log Z; column 0 is the positive
            log_x = s - log_z
            is_pos = k == 0
            t = tl.where(is_pos, log_c - log_x, log_x - log_c)
            term, sig = _softplus_sigmoid(t)
            term = tl.where(is_pos, term, term - log_mpn_c)
            loss += tl.sum(tl.where(k_mask, term, 0.0), axis=0)
            g = tl.where(k_mask, tl.where(is_pos, -sig, sig), 0.0) * inv_t
            acc += tl.sum(g[:, None] * w, axis=0)

    part = row * n_splits + split
    if EPILOGUE != _SCORES_C:
        tl.store(dq_ptr + part * dim + d, acc, mask=d_mask)
    if EPILOGUE == _NCE_C:
        tl.store(out_ptr + part, loss)
    if EPILOGUE == _SOFTMAX_C:
        tl.store(max_ptr + part, run_max)
        tl.store(sum_ptr + part, run_sum)


def launch_config(dim: int) -> dict:
    block_d = block_width(dim)
    # ~4K fp32 elements per gathered tile (32 registers a thread at 4 warps): 8K spilled
    # in the NCE and scores-backward epilogues (ptxas -v, sm_80/sm_90); 8 warps at d = 1024.
    return dict(BLOCK_D=block_d, BLOCK_K=max(16, 4096 // block_d), num_warps=4 if block_d <= 512 else 8)


def _splits(batch: int, n_cols: int, block_k: int, device: torch.device) -> tuple[int, int]:
    """(number of column splits, columns per split, a multiple of BLOCK_K): about
    four programs per SM (ops/_splits.py)."""
    splits, per = split_tiles(cdiv(n_cols, block_k), splits_wanted(batch, device, programs_per_sm=4))
    return splits, per * block_k


def _launch(epilogue_code, query, bank, idx, *, temperature, z=None, grad=None, n_data=1):
    batch, n_cols = idx.shape
    dim = query.shape[1]
    cfg = launch_config(dim)
    n_splits, cols = _splits(batch, n_cols, cfg["BLOCK_K"], query.device)
    out, dq, run_max, run_sum = gather_buffers(epilogue_code, batch, n_cols, n_splits, dim, query.device)
    # Pointers an epilogue never reads get a placeholder rather than None, so every
    # launch compiles the one specialisation that aot_variants() lists.
    unused = torch.empty(1, device=query.device, dtype=torch.float32)
    z, grad, out, dq, run_max, run_sum = (unused if t is None else t for t in (z, grad, out, dq, run_max, run_sum))
    log_c, log_mpn_c = nce_constants(n_cols - 1, n_data) if epilogue_code == NCE else (0.0, 0.0)
    bank_contrast_kernel[(batch, n_splits)](
        query, bank, idx, z, grad, out, dq, run_max, run_sum,
        n_cols, dim, cols, query.stride(0), bank.stride(0), idx.stride(0),
        1.0 / temperature, log_c, log_mpn_c,
        EPILOGUE=epilogue_code, **cfg, **COMPILE_OPTIONS,
    )
    return out, dq, run_max, run_sum


def bank_contrast_loss_triton(query, bank, idx, z, temperature, epilogue, n_data):
    """(row_loss[B], dq[B, d]) in fp32, as bank_contrast_loss_torch."""
    parts = _launch(_EPILOGUES[epilogue], query, bank, idx, temperature=temperature, z=z, n_data=n_data)
    return merge_gather_partials(epilogue, query, bank, idx, z, temperature, n_data, *parts)


def bank_scores_triton(query, bank, idx, temperature):
    return _launch(SCORES, query, bank, idx, temperature=temperature)[0]


def bank_scores_backward_triton(grad_scores, query, bank, idx, temperature):
    grad = grad_scores.float().contiguous()
    return _launch(SCORES_BWD, query, bank, idx, temperature=temperature, grad=grad)[1].sum(dim=1)


def aot_variants() -> list[dict]:
    """Every specialisation the dispatcher can launch, for the ahead-of-time check."""
    variants = []
    for dim in (64, 128, 256, 512, 1024):
        cfg = launch_config(dim)
        for epi_name, code in (("nce", NCE), ("softmax", SOFTMAX), ("scores", SCORES), ("scores_bwd", SCORES_BWD)):
            for q_dt in (torch.float32, torch.bfloat16, torch.float16):
                for bank_dt in (torch.float32, torch.bfloat16):
                    for idx_dt in (torch.int32, torch.int64):
                        sig = {
                            "q_ptr": "*" + TRITON_TYPE[q_dt], "bank_ptr": "*" + TRITON_TYPE[bank_dt],
                            "idx_ptr": "*" + TRITON_TYPE[idx_dt], "z_ptr": "*fp32", "grad_ptr": "*fp32",
                            "out_ptr": "*fp32", "dq_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32",
                            "n_cols": "i32", "dim": "i32", "cols_per_split": "i32",
                            "stride_q": "i32", "stride_bank": "i32", "stride_idx": "i32",
                            "inv_t": "fp32", "log_c": "fp32", "log_mpn_c": "fp32",
                        }
                        variants.append(dict(
                            name=f"bank_contrast[{epi_name},d{cfg['BLOCK_D']},q={TRITON_TYPE[q_dt]},"
                                 f"bank={TRITON_TYPE[bank_dt]},idx={TRITON_TYPE[idx_dt]}]",
                            kernel=bank_contrast_kernel, signature=sig,
                            constexprs=dict(EPILOGUE=code, BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"]),
                            num_warps=cfg["num_warps"], num_stages=3))
    from rdkernels.ops.bank_contrast.triton_counts import aot_variants as count_variants
    from rdkernels.ops.bank_contrast.triton_dense import aot_variants as dense_variants
    from rdkernels.ops.bank_contrast.triton_merge import aot_variants as merge_variants
    return variants + dense_variants() + count_variants() + merge_variants()
