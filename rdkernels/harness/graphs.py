"""Whole-step CUDA graphs for the training loop (``--cuda-graph``).

At batch 64 a CIFAR training step is a few thousand small kernels, and the
host that issues them, not the GPU, sets the step time. A CUDA graph records
the step's kernels once (forward, backward, the loss's bank and queue updates,
the optimizer step) and replays them with one launch, which is the way to take
host time out of the comparison.

What makes a step capturable: no host reads of device values (rdkernels' ops
skip their value checks while a graph is captured; the reference losses read
``params[...].item()`` every call, so they cannot be captured), no
allocations the graph cannot own (the optimizer's momentum buffers and cuDNN's
algorithm choice are made during eager warm-up steps), and no scalar that
changes between replays baked into a kernel: the learning rate is, so a new
learning rate recaptures the step.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from rdkernels.ops import assume_graph_replay


class CudaGraphRecorder:
    """Records ``fn(*static_inputs)`` into a CUDA graph; graphs share one memory pool."""

    def __init__(self):
        self.pool = torch.cuda.graph_pool_handle()

    def record(self, fn: Callable, static_inputs: Sequence[torch.Tensor]):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn(*static_inputs)
        return graph.replay, out


class GraphedStep:
    """``step(key, *inputs) -> tensor``: ``fn(*inputs)`` replayed from a CUDA graph.

    The first ``warmup`` calls run ``fn`` eagerly on a side stream (they are real
    steps: the caller's training advances). The next call records ``fn`` on
    static copies of the inputs, and every call from then on copies its inputs
    into them and replays. ``key`` (the learning rate) is whatever ``fn`` bakes
    into its kernels: a call with a different key records afresh. ``fn`` must
    return one tensor; the caller gets a copy of it, since a replay overwrites
    the graph's output in place.

    ``recorder`` is replaceable so the bookkeeping can be tested without a GPU.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 3, recorder=None):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the optimizer's state must exist before capture), got {warmup}")
        self.fn, self.warmup = fn, warmup
        self.recorder = recorder
        self.eager_calls = 0
        self.captures = 0
        self._replay = None
        self._key = None
        self._static_inputs: list[torch.Tensor] = []
        self._out: torch.Tensor | None = None

    def __call__(self, key, *inputs: torch.Tensor) -> torch.Tensor:
        # Warm-up and capture choose kernels as for a replay (bank_contrast's "auto"
        # strategy), so that the warm-up compiles what the capture records.
        with assume_graph_replay():
            if self.eager_calls < self.warmup:
                self.eager_calls += 1
                return self._run_on_side_stream(inputs)
            if self._replay is None or key != self._key:
                self._record(key, inputs)
        with torch.no_grad():
            for static, x in zip(self._static_inputs, inputs):
                static.copy_(x)
        self._replay()
        return self._out.clone()

    def _run_on_side_stream(self, inputs):
        if not inputs[0].is_cuda:
            return self.fn(*inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _record(self, key, inputs) -> None:
        if self.recorder is None:
            self.recorder = CudaGraphRecorder()
        self._replay = self._out = None  # drop the old graph's hold on its outputs first
        self._static_inputs = [x.detach().clone() for x in inputs]
        self._replay, self._out = self.recorder.record(self.fn, self._static_inputs)
        self._key = key
        self.captures += 1
