"""Triton's interpreter with a GPU's bf16 dot and bf16 rounding, for the kernels' native-bf16 variants.

The interpreter keeps bf16 tensors as their uint16 bits. Its ``tl.dot`` hands
those integers to numpy's matmul, so a bf16 dot returns garbage (DESIGN.md
section 8), and it narrows fp32 to bf16 by dropping the low 16 bits where a
GPU rounds to nearest even. So the variants that run bf16 dots (the dense
bank-contrast kernel's ``BF16_DOT``) run only on a GPU, and a CPU run never
checks them.

:func:`install` patches the interpreter's builder for one test (through
pytest's ``monkeypatch``): a bf16 dot operand is widened to fp32 first, which is
what an MMA does (bf16 products are exact in fp32, accumulation is fp32), and
fp32 -> bf16 casts round to nearest even. bf16 *arithmetic* stays broken; the
kernels do none (they convert before computing).

It reaches into ``triton.runtime.interpreter``, which is not public API: when a
Triton release renames what it patches, :func:`install` skips the test with the
reason, rather than passing it on an unpatched interpreter.
"""
from __future__ import annotations

import numpy as np
import pytest


def _builder():
    try:
        from triton.runtime import interpreter
        import triton.language as tl
    except ImportError as exc:  # pragma: no cover - Triton is a test dependency
        pytest.skip(f"Triton's interpreter cannot be imported: {exc}")
    builder = getattr(interpreter, "InterpreterBuilder", None)
    handle = getattr(interpreter, "TensorHandle", None)
    if builder is None or handle is None or not all(hasattr(builder, m) for m in ("create_dot", "cast_impl")):
        pytest.skip("this Triton's interpreter has no InterpreterBuilder.create_dot / cast_impl to patch")
    return builder, handle, tl


def bf16_bits_to_fp32(bits: np.ndarray) -> np.ndarray:
    """The fp32 values of bf16 bit patterns (exact: bf16 is fp32's top half)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def fp32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """bf16 bit patterns of fp32 values, rounded to nearest even as a GPU's cvt.rn.bf16.f32."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def install(monkeypatch) -> None:
    """Give the interpreter a GPU's bf16 dot and fp32 -> bf16 rounding until the test ends."""
    builder, handle, tl = _builder()
    create_dot, cast_impl = builder.create_dot, builder.cast_impl

    def widened(operand):
        if operand.dtype.scalar != tl.bfloat16:
            return operand
        return handle(bf16_bits_to_fp32(operand.data), tl.float32)

    def bf16_dot(self, a, b, d, *args, **kwargs):
        return create_dot(self, widened(a), widened(b), d, *args, **kwargs)

    def rounding_cast(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return handle(fp32_to_bf16_bits(src.data), tl.bfloat16)
        return cast_impl(self, src, dst_type)

    monkeypatch.setattr(builder, "create_dot", bf16_dot)
    monkeypatch.setattr(builder, "cast_impl", rounding_cast)
