"""Launch configurations chosen by timing them on the GPU, with a fixed fallback.

The ahead-of-time compile (``tools/aot_check.py``) tells registers, spills and
instructions per tile for each candidate configuration, which is enough to drop
the hopeless ones but not to rank the rest: a tile held to 8 warps per SM by
its 255 registers against one with half the work per step over twice the
warps differ in how well the GPU hides latency, which only a timing shows. So
a kernel with several candidates is wrapped in ``triton.autotune``: on the
first call for a shape key the GPU times every candidate (a second or so, once
per process and key; the first compile of each candidate comes on top) and
later calls launch the winner.

Timing is impossible or unwanted in three places, and there the *first*
candidate (the configuration the kernel shipped with before it was tuned) runs:

* the interpreter and CPU tensors: no GPU to time on (DESIGN.md section 8);
  the caller may pass a ``fallback`` there (smaller tiles for the interpreter,
  or a shipped configuration that depends on the sizes);
* a CUDA stream capture or torch.compile trace whose key was never timed:
  timing synchronises the device, which a capture forbids. After an eager call
  with the same shapes (the warm-up torch's graph docs prescribe) the tuned
  choice is reused inside the capture;
* ``RDKERNELS_AUTOTUNE=0`` or ``torch.use_deterministic_algorithms(True)``:
  the same configuration on every machine and in every run, hence the same
  rounding everywhere (candidates differ only in tiling and in how an fp32
  product is formed, 3xTF32 or exact, all to fp32 accuracy). A timing can
  crown another candidate in the next process, so a run that asked torch for
  determinism must not be timed.

``TRITON_PRINT_AUTOTUNING=1`` prints each choice and its timings.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import triton

from rdkernels._validation import host_reads_allowed
from rdkernels.backend import triton_runs_compiled
from rdkernels.ops._compile_options import COMPILE_OPTIONS


def autotune_enabled() -> bool:
    """Off with ``RDKERNELS_AUTOTUNE=0`` or under ``torch.use_deterministic_algorithms``:
    always launch the first candidate."""
    return os.environ.get("RDKERNELS_AUTOTUNE", "1") != "0" and not torch.are_deterministic_algorithms_enabled()


_TUNED: list["TunedKernel"] = []   # every TunedKernel made (launched_configs)


def launched_configs() -> dict[str, dict]:
    """{kernel name: its candidate's arguments, num_warps and num_stages} of the latest
    launch of every tuned kernel launched since forget_launches(): what a benchmark
    record names as the configurations it timed."""
    return {tk.kernel.__name__: tk.launched_config() for tk in _TUNED if tk.last_launch is not None}


def forget_launches() -> None:
    for tk in _TUNED:
        tk.last_launch = None


def timing_possible(probe: torch.Tensor) -> bool:
    """A GPU to time on, and timing allowed (not the interpreter, not switched off)."""
    return triton_runs_compiled(probe.device) and autotune_enabled()


class TunedKernel:
    """A ``triton.jit`` kernel with candidate launch configurations.

    ``key`` names the kernel arguments whose values select a timing (as for
    ``triton.autotune``); tensor dtypes are part of the key as well. ``prune``
    (optional) drops candidates that cannot matter for a call, e.g. variants
    that differ only in a gradient path the call does not run. ``reset_to_zero``
    names arguments the kernel needs zeroed on entry: the timing zeroes them
    before every timed run and once more before the real one. ``after_timed``
    (optional) runs after every timed launch, given the launch's arguments and
    configuration by name, inside the timing: a kernel whose work a second kernel
    finishes (a merge of splits whose count depends on the configuration) is
    timed with it. It does not run after the real launch; the caller's own
    code follows that.
    """

    def __init__(self, kernel, configs: Sequence[triton.Config], key: Sequence[str],
                 prune: Callable[[list, dict], list] | None = None, reset_to_zero: Sequence[str] = (),
                 after_timed: Callable[[dict], None] | None = None):
        if not configs:
            raise ValueError("configs must name at least one candidate")
        unknown = [k for k in key if k not in kernel.arg_names]
        if unknown:   # Triton's autotuner would leave them out of its key without a word
            raise ValueError(f"key names {unknown}, not arguments of {kernel.__name__}")
        self.kernel = kernel
        self.configs = list(configs)
        self.key = tuple(key)
        self._prune = prune
        prune_by = {"early_config_prune": self._early_prune} if prune else None
        # Triton calls a post_hook inside each timed call (3.6 and newer), never after the real launch
        post_hook = None if after_timed is None else \
            (lambda nargs, exception: after_timed(nargs) if exception is None else None)
        self.tuner = triton.autotune(configs=self.configs, key=list(key), prune_configs_by=prune_by,
                                     reset_to_zero=list(reset_to_zero) or None, post_hook=post_hook)(kernel)
        self._timed: set[tuple] = set()
        self.last_launch: dict | None = None   # the launch kwargs of the latest call (benchmarks name them)
        _TUNED.append(self)

    @property
    def default(self) -> triton.Config:
        return self.configs[0]

    def launched_config(self) -> dict:
        """The candidate-level part of the latest launch (what the candidates vary)."""
        names = set().union(*(c.all_kwargs() for c in self.configs))
        return {k: v for k, v in (self.last_launch or {}).items() if k in names}

    def forget_timings(self) -> None:
        """Drop every timed choice, so that the next eager call of each key times the
        candidates again. The key leaves out what a call derives from it (the split
        count, say); benchmarks/splits.py varies that and must not reuse one count's
        choice for another's."""
        self.tuner.cache.clear()
        self._timed.clear()

    def _early_prune(self, configs, named_args, **kwargs):  # configs: self.configs
        return self.candidates(**named_args, **kwargs)

    def candidates(self, **meta) -> list[triton.Config]:
        """The configurations a call with these keyword arguments would time."""
        if self._prune is None:
            return list(self.configs)
        return self._prune(list(self.configs), meta) or [self.default]

    def _timing_key(self, args: Sequence, meta: dict) -> tuple:
        """A superset of the autotuner's own key: the key arguments' values, every
        tensor's dtype, and the device. If this key was timed, so was the tuner's."""
        names = self.kernel.arg_names
        named = {**dict(zip(names, args)), **meta}
        values = tuple(named.get(k) for k in self.key)
        dtypes = tuple(str(a.dtype) for a in args if isinstance(a, torch.Tensor))
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        return values + dtypes + (device,)

    def launch(self, grid: Callable[[dict], tuple], *args, config: triton.Config | dict | None = None,
               fallback: dict | None = None, **meta) -> dict:
        """Launch on ``grid(launch kwargs)``; return the launch kwargs used.

        ``config`` forces one configuration (tests sweep every candidate with it);
        ``fallback`` replaces the first candidate where nothing is timed (the
        interpreter's small tiles; a shipped configuration that depends on the
        sizes).
        """
        probe = next(a for a in args if isinstance(a, torch.Tensor))
        if config is None and timing_possible(probe):
            key = self._timing_key(args, meta)
            if key in self._timed or host_reads_allowed(probe):
                self.tuner[grid](*args, **meta, **COMPILE_OPTIONS)
                self._timed.add(key)
                self.last_launch = {**meta, **self.tuner.best_config.all_kwargs()}
                return self.last_launch
        if config is None:
            chosen = dict(fallback) if fallback is not None else self.default.all_kwargs()
        else:
            chosen = config.all_kwargs() if isinstance(config, triton.Config) else dict(config)
        self.kernel[grid(chosen)](*args, **meta, **chosen, **COMPILE_OPTIONS)
        self.last_launch = {**meta, **chosen}
        return self.last_launch
