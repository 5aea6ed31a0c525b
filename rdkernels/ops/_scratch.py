"""Carving one fp32 scratch allocation into the segments a call's kernels use.

The fused ops are host-bound at training sizes, so a call allocates its
partials once and hands the kernels pointers into it. Each segment starts on a
256-byte boundary (64 floats): the kernels' vector loads assume 16-byte
alignment, and a whole-sector start keeps one segment's writes off another's.
"""
from __future__ import annotations

ALIGN_FLOATS = 64


def aligned(n_floats: int) -> int:
    """``n_floats`` rounded up so that the segment after it starts 256-byte aligned."""
    return -(-n_floats // ALIGN_FLOATS) * ALIGN_FLOATS
