"""Whether a call is priced as a CUDA graph replay: device time only, no host cost.

Three choices differ there: bank contrast's strategy (cost_model.py: the dense
path's extra launches cost host time eagerly, almost nothing in a replay), and
the shared-bank contrast's and DCD's backends (their CUDA kernels cost less host
time a call, Triton's less device time: tensor-core products). A call is priced
as a replay while a capture records it, or inside :func:`assume_graph_replay`:
the eager warm-up of a step that will be captured must compile and tune what the
capture records, since a capture can do neither.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch

__all__ = ["assume_graph_replay", "capturing", "graph_replay_assumed"]

_GRAPH_REPLAY = contextvars.ContextVar("rdkernels_assume_graph_replay", default=False)


@contextlib.contextmanager
def assume_graph_replay(enabled: bool = True):
    """Within this block the ops choose as they do while a CUDA graph capture is
    recording: bank contrast's ``strategy="auto"`` prices device time only, and the
    shared-bank contrast's and DCD's ``auto`` backends take Triton's tensor-core kernels.

    For the eager warm-up steps of a step that will be captured: they then run,
    compile and tune what the capture records, so the capture meets no first call.
    Results agree either way to float rounding; only speed differs.
    """
    token = _GRAPH_REPLAY.set(bool(enabled))
    try:
        yield
    finally:
        _GRAPH_REPLAY.reset(token)


def graph_replay_assumed() -> bool:
    """Inside :func:`assume_graph_replay`."""
    return _GRAPH_REPLAY.get()


def capturing(t: torch.Tensor) -> bool:
    """A call on ``t`` is being recorded into a CUDA graph (its replays pay no host
    cost), or runs inside ``assume_graph_replay()``. A torch.compile trace cannot tell
    whether its graph will be captured later: it keeps the eager choice, and Dynamo
    need not trace the capture query."""
    if not t.is_cuda or torch.compiler.is_compiling():
        return False
    return graph_replay_assumed() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
