"""Triton kernel that merges the bank-contrast kernels' per-split partials.

A program per (query row, slice of D_CHUNK columns of d) reads the row's
partials (see partials.py and dense.py for their layout) and writes its slice
of ``dq[b, :]``; the first slice's program also writes ``row_loss[b]``. The
row's scalars (the splits' loss terms, maxima and sums, the positive's score)
are few, so every slice's program reads them itself. One program a row, walking
every split's [d] partial in turn, was latency-bound: 20 us a call on an H100
after the CUDA dense kernel's 264 splits at B = 64 (8.6 MB of partials, 64
programs), where slices give 4x the programs, each 4x fewer steps.

* NCE: sums of the splits' loss terms and dq; the dense strategy then adds the
  positive's term, softplus(log c - (s0 - log Z)), and its gradient;
* softmax: the splits' running (max, sum, weighted row sum) rescaled to the
  row max (flash-decoding style), plus the positive where the kernel left it
  out (dense), then ``loss = lse - s0`` and ``dq = (E_p[w] - w0) / T``.

The positive's score s0 = <M[idx[b, 0]], q[b]> / T costs one gathered row.
This is one launch where the same merge in torch ops is 12-16 (each a launch
and a few microseconds of host time); even the gather strategy's NCE merge,
two sums in torch, is one launch here instead of two.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.ops._aot_types import TRITON_TYPE
from rdkernels.ops._blocks import block_width
from rdkernels.ops._compile_options import COMPILE_OPTIONS
from rdkernels.ops.bank_contrast.partials import NCE, SOFTMAX
from rdkernels.ops.bank_contrast.reference import nce_constants

__all__ = ["merge_partials_triton", "merge_gather_partials"]

_NCE_C = tl.constexpr(NCE)


@triton.jit
def _softplus_sigmoid(x):
    """(log(1 + exp(x)), 1 / (1 + exp(-x))) without overflow: an NCE term and its
    derivative, for every bank-contrast kernel. Both come from e = exp(-|x|), u = 1 + e
    and r = 1 / u: one exponential and one division a value, where the two formulas
    apart took two of each (the sigmoid is r for x >= 0 and e r below).
    As log1p (which tl lacks): u = 1 + e rounds e to float32's 2^-24 steps, and NCE
    negatives have e down to ~1e-6, so log(u) alone biased a row's sum of 16 384
    terms by 2e-5 to 8e-5 (H100); (e - (u - 1)) / u, the rounding's first-order
    correction (u - 1 is exact), gives that back (the CUDA kernels call log1pf)."""
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    r = 1.0 / u
    softplus = tl.maximum(x, 0.0) + tl.log(u) + (e - (u - 1.0)) * r
    return softplus, tl.where(x >= 0, 1.0, e) * r


D_CHUNK = 32   # columns of dq a program merges


def launch_config(dim: int) -> dict:
    """BLOCK_D (the whole row, for the positive's score) x D_CHUNK (the dq columns a
    program merges) and the splits a step, in [BLOCK_S, D_CHUNK] tiles of 4K fp32
    elements (32 a thread at 4 warps)."""
    block_d = block_width(dim)
    chunk = min(D_CHUNK, block_d)
    return dict(BLOCK_S=4096 // chunk, BLOCK_D=block_d, D_CHUNK=chunk, num_warps=4)


@triton.jit
def merge_kernel(q_ptr, bank_ptr, idx_ptr, z_ptr, loss_parts_ptr, dq_parts_ptr, max_parts_ptr, sum_parts_ptr,
                 loss_ptr, dq_ptr, n_splits, dim, stride_q, stride_bank, stride_idx, inv_t, log_c,
                 EPILOGUE: tl.constexpr, POSITIVE_IN_PARTS: tl.constexpr,
                 BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, D_CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    c = chunk * D_CHUNK + tl.arange(0, D_CHUNK)   # this program's columns of dq
    c_mask = c < dim
    s_off = tl.arange(0, BLOCK_S)
    parts = row * n_splits
    # the positive bank row and its score (every case but NCE with the positive already merged):
    # the score over the whole row, the row over this program's columns
    w0 = tl.zeros([D_CHUNK], dtype=tl.float32)
    s0 = 0.0
    if (EPILOGUE != _NCE_C) or (not POSITIVE_IN_PARTS):
        d = tl.arange(0, BLOCK_D)
        d_mask = d < dim
        pos = tl.load(idx_ptr + row * stride_idx).to(tl.int64)
        w0_row = tl.load(bank_ptr + pos * stride_bank + d, mask=d_mask, other=0.0).to(tl.float32)
        q = tl.load(q_ptr + row * stride_q + d, mask=d_mask, other=0.0).to(tl.float32)
        s0 = tl.sum(w0_row * q, axis=0) * inv_t
        w0 = tl.load(bank_ptr + pos * stride_bank + c, mask=c_mask, other=0.0).to(tl.float32)

    if EPILOGUE == _NCE_C:
        loss = 0.0
        dq = tl.zeros([D_CHUNK], dtype=tl.float32)
        for s_start in range(0, n_splits, BLOCK_S):
            s = s_start + s_off
            s_mask = s < n_splits
            loss += tl.sum(tl.load(loss_parts_ptr + parts + s, mask=s_mask, other=0.0), axis=0)
            dq += tl.sum(tl.load(dq_parts_ptr + (parts + s)[:, None] * dim + c[None, :],
                                 mask=s_mask[:, None] & c_mask[None, :], other=0.0), axis=0)
        if not POSITIVE_IN_PARTS:  # x0 = exp(s0) / Z: loss softplus(t0), d/ds0 = -sigmoid(t0)
            t0 = log_c - (s0 - tl.log(tl.load(z_ptr).to(tl.float32)))
            term0, sig0 = _softplus_sigmoid(t0)
            loss += term0
            dq -= (inv_t * sig0) * w0
    else:
        top = -float("inf")
        if not POSITIVE_IN_PARTS:
            top = s0
        for s_start in range(0, n_splits, BLOCK_S):
            s = s_start + s_off
            top = tl.maximum(top, tl.max(tl.load(max_parts_ptr + parts + s, mask=s < n_splits,
                                                 other=-float("inf")), axis=0))
        total = 0.0
        weighted = tl.zeros([D_CHUNK], dtype=tl.float32)
        if not POSITIVE_IN_PARTS:
            p0 = tl.exp(s0 - top)
            total = p0
            weighted = p0 * w0
        for s_start in range(0, n_splits, BLOCK_S):
            s = s_start + s_off
            s_mask = s < n_splits
            # a split that saw no column has max -inf: its scale is exp(-inf) = 0
            scale = tl.exp(tl.load(max_parts_ptr + parts + s, mask=s_mask, other=-float("inf")) - top)
            total += tl.sum(scale * tl.load(sum_parts_ptr + parts + s, mask=s_mask, other=0.0), axis=0)
            weighted += tl.sum(scale[:, None] * tl.load(dq_parts_ptr + (parts + s)[:, None] * dim + c[None, :],
                                                        mask=s_mask[:, None] & c_mask[None, :], other=0.0),
                               axis=0)
        loss = top + tl.log(total) - s0
        dq = (weighted / total - w0) * inv_t
    if chunk == 0:
        tl.store(loss_ptr + row, loss)
    tl.store(dq_ptr + row * dim + c, dq, mask=c_mask)


def merge_partials_triton(epilogue, query, bank, idx, z, temperature, n_data, loss_parts, dq_parts,
                          max_parts=None, sum_parts=None, *, positive_in_parts: bool):
    """(row_loss[B], dq[B, d]) fp32 from per-split partials ``dq_parts[B, S, d]`` and
    ``loss_parts[B, S]`` (nce) or ``max_parts``/``sum_parts[B, S]`` (softmax).
    ``positive_in_parts``: the kernel scored column 0 with the rest (gather);
    otherwise the merge adds it (dense)."""
    batch, n_splits, dim = dq_parts.shape
    loss = torch.empty(batch, device=query.device, dtype=torch.float32)
    dq = torch.empty(batch, dim, device=query.device, dtype=torch.float32)
    nce = epilogue == "nce"
    log_c = nce_constants(idx.shape[1] - 1, n_data)[0] if nce else 0.0
    placeholder = loss  # pointers an epilogue never reads
    cfg = launch_config(dim)
    merge_kernel[(batch, -(-dim // cfg["D_CHUNK"]))](   # a row and a slice of dq's columns a program
        query, bank, idx, z if z is not None else placeholder,
        loss_parts if nce else placeholder, dq_parts,
        placeholder if nce else max_parts, placeholder if nce else sum_parts,
        loss, dq, n_splits, dim, query.stride(0), bank.stride(0), idx.stride(0), 1.0 / temperature, log_c,
        EPILOGUE=NCE if nce else SOFTMAX, POSITIVE_IN_PARTS=positive_in_parts, **cfg, **COMPILE_OPTIONS)
    return loss, dq


def merge_gather_partials(epilogue, query, bank, idx, z, temperature, n_data, loss_parts, dq_parts, max_parts,
                          sum_parts):
    """(row_loss[B], dq[B, d]) from the gather kernels' partials (Triton and CUDA,
    partials.gather_buffers): NCE's terms, the positive's included, only add up;
    softmax's are rescaled to the row max. One merge-kernel launch either way."""
    return merge_partials_triton(epilogue, query, bank, idx, z, temperature, n_data, loss_parts, dq_parts,
                                 max_parts, sum_parts, positive_in_parts=True)


def aot_variants() -> list[dict]:
    """Every width, epilogue, idx type and placement of the positive the wrappers launch."""
    cases = [(name, code, True, dim) for name, code in (("nce", NCE), ("softmax", SOFTMAX))
             for dim in (64, 128, 256, 512, 1024)]                                  # gather strategy
    cases += [(name, code, False, dim) for name, code in (("nce", NCE), ("softmax", SOFTMAX))
              for dim in (64, 128)]                                                  # dense kernels: d <= 128
    variants = []
    for epi_name, code, positive_in_parts, dim in cases:
        cfg = launch_config(dim)
        for q_dt, bank_dt in ((torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                              (torch.float16, torch.float32)):
            for idx_t in ("i32", "i64"):
                f32 = "*fp32"
                sig = {"q_ptr": "*" + TRITON_TYPE[q_dt], "bank_ptr": "*" + TRITON_TYPE[bank_dt], "idx_ptr": "*" + idx_t,
                       "z_ptr": f32, "loss_parts_ptr": f32, "dq_parts_ptr": f32, "max_parts_ptr": f32,
                       "sum_parts_ptr": f32, "loss_ptr": f32, "dq_ptr": f32, "n_splits": "i32", "dim": "i32",
                       "stride_q": "i32", "stride_bank": "i32", "stride_idx": "i32", "inv_t": "fp32",
                       "log_c": "fp32"}
                variants.append(dict(
                    name=f"bank_contrast_merge[{epi_name},{'gather' if positive_in_parts else 'dense'},"
                         f"d{cfg['BLOCK_D']},q={TRITON_TYPE[q_dt]},bank={TRITON_TYPE[bank_dt]},idx={idx_t}]",
                    kernel=merge_kernel, signature=sig,
                    constexprs=dict(EPILOGUE=code, POSITIVE_IN_PARTS=positive_in_parts,
                                    BLOCK_S=cfg["BLOCK_S"], BLOCK_D=cfg["BLOCK_D"], D_CHUNK=cfg["D_CHUNK"]),
                    num_warps=cfg["num_warps"], num_stages=1))
    return variants
