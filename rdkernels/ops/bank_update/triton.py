"""Triton kernel for the in-place bank update (one program per batch row)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from rdkernels.ops._blocks import block_width
from rdkernels.ops._compile_options import COMPILE_OPTIONS


@triton.jit
def bank_update_kernel(bank_ptr, index_ptr, values_ptr, batch, dim, stride_bank, stride_values,
                       momentum, BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr):
    pid = tl.program_id(0)
    row = tl.load(index_ptr + pid).to(tl.int64)
    # Last occurrence wins: skip this entry if a later one names the same row,
    # so each distinct row is read and written by exactly one program.
    later = 0
    for start in range(pid + 1, batch, BLOCK_B):
        offs = start + tl.arange(0, BLOCK_B)
        ids = tl.load(index_ptr + offs, mask=offs < batch, other=-1).to(tl.int64)
        later += tl.sum((ids == row).to(tl.int32), axis=0)
    if later == 0:
        cols = tl.arange(0, BLOCK_D)
        mask = cols < dim
        old = tl.load(bank_ptr + row * stride_bank + cols, mask=mask, other=0.0).to(tl.float32)
        new = tl.load(values_ptr + pid.to(tl.int64) * stride_values + cols, mask=mask, other=0.0).to(tl.float32)
        mixed = momentum * old + (1.0 - momentum) * new
        mixed = mixed / tl.sqrt(tl.sum(mixed * mixed, axis=0))
        tl.store(bank_ptr + row * stride_bank + cols, mixed.to(bank_ptr.dtype.element_ty), mask=mask)


def launch_config(dim: int) -> dict:
    block_d = block_width(dim)
    return dict(BLOCK_D=block_d, BLOCK_B=128, num_warps=4 if block_d <= 512 else 8)


# Everything the launch above can specialise on, for the ahead-of-time compile
# check (tools/aot_check.py): the JIT compiles one binary per BLOCK_D (dims 1..1024
# give 16..1024), per pointer element type, per "multiple of 16" pattern of the
# integer arguments (dim 96 and dim 100 differ) and for batch == 1, which Triton
# turns into a constant.
_AOT_BLOCK_D = (16, 32, 64, 128, 256, 512, 1024)
_AOT_BANK = ("fp32", "bf16")
_AOT_VALUES = ("fp32", "bf16", "fp16")
_AOT_INDEX = ("i32", "i64")


def _aot_variant(block_d: int, bank: str, values: str, index: str, *, dim_aligned: bool = True,
                 batch_one: bool = False) -> dict:
    cfg = launch_config(block_d)
    signature = {"bank_ptr": f"*{bank}", "index_ptr": f"*{index}", "values_ptr": f"*{values}",
                 "batch": "constexpr" if batch_one else "i32", "dim": "i32", "stride_bank": "i32",
                 "stride_values": "i32", "momentum": "fp32", "BLOCK_D": "constexpr", "BLOCK_B": "constexpr"}
    constexprs = {"BLOCK_D": cfg["BLOCK_D"], "BLOCK_B": cfg["BLOCK_B"]}
    if batch_one:
        constexprs["batch"] = 1
    # torch allocations are 16-byte aligned; dim and the row strides are multiples of 16
    # exactly when dim is (contiguous rows).
    aligned = ["bank_ptr", "index_ptr", "values_ptr"]
    if dim_aligned:
        aligned += ["dim", "stride_bank", "stride_values"]
    tag = ("" if dim_aligned else ",dim%16") + (",batch=1" if batch_one else "")
    return {"name": f"bank_update_kernel[D={block_d},bank={bank},values={values},index={index}{tag}]",
            "kernel": bank_update_kernel, "signature": signature, "constexprs": constexprs,
            "divisible_by_16": aligned, "num_warps": cfg["num_warps"], "num_stages": 3}


def aot_variants() -> list[dict]:
    """The kernel configurations ``bank_update_triton_`` can launch, for tools/aot_check.py.

    Every BLOCK_D x bank dtype x values dtype x index dtype with dim a multiple of 16;
    dims not a multiple of 16 only change the integer alignment hints, so they are
    compiled per BLOCK_D and pointer pair (index int64); batch == 1 only changes the
    duplicate scan over ``index``, compiled per index dtype and warp count.
    """
    out = [_aot_variant(d, b, v, i) for d in _AOT_BLOCK_D for b in _AOT_BANK for v in _AOT_VALUES
           for i in _AOT_INDEX]
    out += [_aot_variant(d, b, v, "i64", dim_aligned=False) for d in _AOT_BLOCK_D for b in _AOT_BANK
            for v in _AOT_VALUES]
    out += [_aot_variant(d, "fp32", "fp32", i, batch_one=True) for d in (512, 1024) for i in _AOT_INDEX]
    return out


def bank_update_triton_(bank: torch.Tensor, index: torch.Tensor, values: torch.Tensor, momentum: float) -> None:
    batch, dim = values.shape
    bank_update_kernel[(batch,)](bank, index, values, batch, dim, bank.stride(0), values.stride(0),
                                 float(momentum), **launch_config(dim), **COMPILE_OPTIONS)
