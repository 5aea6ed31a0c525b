"""Values a loss reads from one of its buffers on the host, kept while the buffer is unchanged.

CRD's and RRD-momentum's ``params`` buffer holds [K, T, Z_s, Z_t, momentum] as
RepDistiller's ContrastMemory does, and the reference reads T and momentum from it
on every call (``params[1].item()``): a device sync a step. The losses read them
once and keep them here until ``params`` changes: its version counter moves with
every in-place write (a temperature or momentum schedule written into
``params``, a broadcast, ``load_state_dict``), and the loss re-stamps it after
its own writes of Z, which leave T and momentum as they were.

A traced call (torch.compile) can see neither the counter nor whether the buffer
was replaced by a copy (``.to()``): it takes the values last read eagerly, and
the graph guards on them. The losses' ``reread_params()`` (which every
``load_state_dict`` and every cast or move, ``ReadsParamsAfterApply``, calls)
reads them again, so the next compiled call recompiles with the new values (one
graph per pair of values, up to Dynamo's recompile limit).
"""
from __future__ import annotations

import torch

from rdkernels._validation import host_reads_allowed


class HostCopy:
    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self._tensor: torch.Tensor | None = None
        self._version: int | None = None   # None: set while tracing, so re-read on the next eager call
        self._values: tuple | None = None

    def get(self, tensor: torch.Tensor) -> tuple | None:
        """The values kept for ``tensor``, or None if there are none or it has been written
        (or replaced) since; under torch.compile, whatever was kept (see above), and so
        in a CUDA graph capture (which cannot read them) after compiled calls kept them."""
        if self._values is None or torch.compiler.is_compiling():
            return self._values
        if self._tensor is not tensor:
            return None
        if self._version is None and _capturing(tensor):
            return self._values
        return self._values if tensor._version == self._version else None

    def set(self, tensor: torch.Tensor, values: tuple) -> None:
        self._tensor, self._values = tensor, values
        self.stamp(tensor)

    def stamp(self, tensor: torch.Tensor) -> None:
        """Keep the values across the caller's own write to ``tensor`` (one that leaves them as they are)."""
        if self._tensor is tensor:
            self._version = None if torch.compiler.is_compiling() else tensor._version


def _capturing(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


class ReadsParamsAfterApply:
    """Mixin for a module with ``params`` and ``reread_params()``: a cast or move
    (``.to()``, ``.bfloat16()``, ``.cuda()``: nn.Module._apply) reads T and momentum
    from the new ``params`` (one device sync), so a compiled call takes them as an
    eager one does: a bf16 cast rounds T = 0.07 to 0.0698. Not after ``to_empty``
    from the meta device, whose new buffers hold no values yet."""

    def _apply(self, fn, *args, **kwargs):
        had_values = self.params.device.type != "meta"
        result = super()._apply(fn, *args, **kwargs)
        if had_values:
            self.reread_params()
        return result


def reread_temperature_and_momentum(kept: HostCopy, params: torch.Tensor, *,
                                    only_if_z_set: bool = False) -> tuple[float, float] | None:
    """Read T and momentum from ``params`` = [K, T, Z_s, Z_t, momentum] on the host (one
    device sync) into ``kept``: the losses' ``reread_params``, which ``load_state_dict``
    calls and a schedule calls after writing ``params`` under torch.compile (eager calls
    notice such a write by themselves). ``only_if_z_set``: keep nothing while a Z is
    unset (CRD: kept values mean Z is set, so the next call sets it). Returns the pair
    read, or None where no host read is allowed."""
    kept.clear()
    if not host_reads_allowed(params):   # a meta or fake tensor, a trace, a CUDA graph capture
        return None
    _, temperature, z_s, z_t, momentum = params.tolist()
    if not only_if_z_set or (z_s >= 0 and z_t >= 0):
        kept.set(params, (temperature, momentum))
    return temperature, momentum
