"""Launch arithmetic for host code, in plain Python.

``triton.next_power_of_2`` and ``triton.cdiv`` are Triton constexpr functions:
called from host code each goes through their wrapper, about 1.5 µs, where
the integer arithmetic takes 30 ns, and every op works out its launch on
every call (the ops are host-bound at training sizes). Same results: the
tests compare them with Triton's.
"""
from __future__ import annotations

__all__ = ["block_width", "cdiv", "next_power_of_2"]


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (0 for 0), as ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def block_width(n: int, least: int = 16) -> int:
    """A power-of-two block covering ``n`` columns, at least ``least`` (Triton's dots
    and arange need 16)."""
    return max(least, next_power_of_2(n))


def cdiv(a: int, b: int) -> int:
    """ceil(a / b), as ``triton.cdiv``."""
    return -(-a // b)
