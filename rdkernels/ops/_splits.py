"""How the fused kernels cut their long dimension into splits, one program each.

Every fused kernel walks one long dimension per program: the bank (dense bank
contrast), the sampled columns (gather bank contrast) or the queue (shared-bank
contrast). Along the query rows there are only ``row_blocks`` programs (B / 16
or B / 64: one to four at B = 64), so that dimension is cut into splits of
whole tiles, merged after the kernel. The split count aims at
``programs_per_sm`` programs on every SM: 2 for the kernels whose blocks hold
large register or shared-memory tiles (dense, CUDA shared-bank contrast), 4 for
the light gather kernels, and one for Triton's shared-bank contrast, whatever
its launch configuration's query rows, where each split's accumulators cost
more than a second program an SM gains (measured: benchmarks/splits.py). Under
Triton's interpreter (CPU tensors) a few splits still exercise the merge.
"""
from __future__ import annotations

import contextlib
import math

import torch

from rdkernels.backend import multiprocessor_count

__all__ = ["INTERPRETER_SPLITS", "SplitSweep", "split_tiles", "splits_wanted"]

INTERPRETER_SPLITS = 3


def splits_wanted(row_blocks: int, device: torch.device, programs_per_sm: float,
                  interpreter: int = INTERPRETER_SPLITS) -> int:
    """Splits that give ``row_blocks`` x splits ~ ``programs_per_sm`` x SMs programs
    on a GPU (fewer than one an SM where the merge's bytes outweigh the
    parallelism); ``interpreter`` of them for CPU tensors."""
    if device.type != "cuda":
        return interpreter
    return max(1, math.ceil(programs_per_sm * multiprocessor_count(device) / max(1, row_blocks)))


def split_tiles(n_tiles: int, want: int) -> tuple[int, int]:
    """(splits, tiles per split): at most ``want`` splits (at least one) of whole
    tiles, none of them empty."""
    per = -(-n_tiles // max(1, min(n_tiles, want)))
    return -(-n_tiles // per), per


class SplitSweep:
    """An op's split count forced, and the counts its launches made recorded, within
    a ``with sweep.forcing(count) as used:`` block (benchmarks/splits.py times
    several counts). Outside any block an op's own count stands and nothing is kept."""

    def __init__(self):
        self._state: tuple[int | None, list] | None = None

    @property
    def active(self) -> bool:
        return self._state is not None

    @contextlib.contextmanager
    def forcing(self, count: int | None = None):
        """Within the block launches ask for ``count`` splits (None: their own count);
        yields the list that :meth:`record` appends to."""
        saved, used = self._state, []
        self._state = (count, used)
        try:
            yield used
        finally:
            self._state = saved

    def want(self, count):
        """The forced count, or ``count`` (an op's heuristic or a caller's)."""
        return (self._state[0] or count) if self._state is not None else count

    def record(self, made) -> None:
        if self._state is not None:
            self._state[1].append(made)
