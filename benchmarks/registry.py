"""What a benchmark is: an op, its implementations, its cases and its floor.

Each module under benchmarks/ops/ defines one :class:`OpBench` subclass and
registers it with :func:`register`. The suite (benchmarks/suite.py) does the
rest the same way for every op: build inputs, check every implementation
against the reference, time the ones that are right, compute floors, report.

An implementation is a ``prepare(inputs) -> run`` pair: ``prepare`` does the
untimed setup (building a module, copying state) and returns a zero-argument
``run`` that does the timed work and returns its outputs as a dict of tensors.
For a differentiable op, the output named by ``OpBench.loss_key`` is what
backward starts from and ``OpBench.grad_inputs(inputs, outputs)`` are the
tensors whose gradients backward computes and the check compares.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

Outputs = dict  # name -> Tensor


@dataclass
class Impl:
    name: str
    prepare: Callable[[dict], Callable[[], Outputs]]
    # Why it cannot run on this device (None: it can). Called with the device.
    unavailable: Callable[[torch.device], str | None] = lambda device: None
    kind: str = "rdkernels"     # "naive" | "rdkernels" | "peer"
    # Which outputs the correctness check compares: "all" (forward and
    # gradients), "forward" (the forward outputs only, e.g. when the
    # implementation's gradient is a different quantity by design).
    check: str = "all"
    note: str = ""
    rtol_scale: float = 1.0     # peers that stop on their own criterion get slack
    loss_key: str | None = None  # the output backward starts from, if not the op's
    # Time "fwd" under torch.no_grad(): for a baseline whose forward would
    # otherwise record an autograd graph (an unrolled loop) that the op under
    # test does not record. fwd+bwd and bwd rows are unaffected.
    fwd_no_grad: bool = False


@dataclass
class Case:
    """One point of a sweep: ``params`` fully describes the inputs."""
    label: str
    params: dict
    preset: str | None = None


@dataclass
class Floor:
    nbytes: float
    flops: float
    dtype: torch.dtype = torch.float32   # whose matmul rate bounds the flops
    note: str = ""


class OpBench:
    """Base class of one op's benchmark. Subclasses fill in the hooks."""

    name: str = ""
    description: str = ""
    differentiable: bool = True
    loss_key: str = "loss"
    x_param: str = "K"          # the sweep variable the plots put on the x axis
    plot_ignore: tuple = ()     # params that move with x_param (not a series of their own)

    def __init__(self) -> None:
        self.extra_impls: list[Impl] = []   # tests inject implementations here

    # --- hooks -----------------------------------------------------------------
    def unavailable(self) -> str | None:
        """None if the op exists in this checkout, else why it is skipped."""
        return None

    def implementations(self) -> list[Impl]:
        raise NotImplementedError

    def reference(self) -> Impl:
        """Ground truth, run on the float64 copy of the inputs: the naive formulation,
        unless the op names another."""
        return next(impl for impl in self.implementations() if impl.kind == "naive")

    def cases(self, size: str, preset: str | None) -> list[Case]:
        raise NotImplementedError

    def make_inputs(self, case: Case, device: torch.device, seed: int) -> dict:
        raise NotImplementedError

    def grad_inputs(self, inputs: dict, out: Outputs) -> list[torch.Tensor]:
        """The tensors whose gradients backward computes (and the check compares)."""
        return []

    def floor(self, case: Case, mode: str) -> Floor:
        raise NotImplementedError

    def check_outputs(self, inputs: dict, out: Outputs) -> Outputs:
        """What the correctness check compares (default: the outputs as run)."""
        return out

    # --- derived ---------------------------------------------------------------
    def all_implementations(self) -> list[Impl]:
        return self.implementations() + list(self.extra_impls)

    def modes(self) -> list[str]:
        return ["fwd", "bwd", "fwd+bwd"] if self.differentiable else ["fwd"]

    def input_bytes(self, inputs: dict) -> int:
        return sum(t.numel() * t.element_size() for t in _tensors(inputs))


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def to_float64(obj):
    """A float64 copy of every floating tensor in ``obj`` (dicts/lists walked);
    leaves keep requires_grad, integer tensors and other values are shared."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            return obj.detach().to(torch.float64).requires_grad_(obj.requires_grad)
        return obj
    if isinstance(obj, dict):
        return {k: to_float64(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_float64(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_float64(v) for v in obj)
    return obj


# --- the registry ----------------------------------------------------------------

OP_MODULES = ("bank_update", "bank_contrast", "crd_step", "sinkhorn", "shared_bank_contrast", "dcd", "l2_normalize",
              "fifo_enqueue", "kd_loss")
_REGISTRY: dict[str, type[OpBench]] = {}


def register(cls: type[OpBench]) -> type[OpBench]:
    _REGISTRY[cls.name] = cls
    return cls


def load_ops(names: list[str] | None = None) -> tuple[list[OpBench], list[dict]]:
    """Instantiate the requested ops (all by default).

    Returns (ops that can run, skipped: [{"op", "reason"}]). An op whose
    benchmark module or rdkernels op is missing is skipped with the reason, so
    the suite always runs."""
    wanted = list(names) if names else list(OP_MODULES)
    ops, skipped = [], []
    for name in wanted:
        if name not in OP_MODULES:
            raise ValueError(f"unknown op {name!r}; choose from {', '.join(OP_MODULES)}")
        try:
            importlib.import_module(f"benchmarks.ops.{name}")
        except ImportError as exc:
            skipped.append({"op": name, "reason": f"benchmark module cannot be imported: {exc}"})
            continue
        op = _REGISTRY[name]()
        reason = op.unavailable()
        if reason:
            skipped.append({"op": name, "reason": reason})
        else:
            ops.append(op)
    return ops, skipped


# --- availability helpers shared by the op modules --------------------------------

def triton_unavailable(device: torch.device) -> str | None:
    from rdkernels.backend import triton_interpreter_enabled, triton_unavailable_reason
    if device.type != "cuda":
        return "needs a GPU (the Triton interpreter on CPU is a correctness tool and is never timed)"
    if triton_interpreter_enabled():
        return "TRITON_INTERPRET is set: the interpreter is never timed"
    return triton_unavailable_reason(device)


def backend_impls(prepare: Callable[[str], Callable], cuda_op: str | None = None) -> list[Impl]:
    """rdkernels' rows: ``torch``, ``triton`` and, for an op with a CUDA kernel (``cuda_op``,
    the name the backend resolver knows it by), ``cuda``; ``prepare(backend)`` makes each
    row's prepare function."""
    impls = [Impl("torch", prepare("torch")), Impl("triton", prepare("triton"), unavailable=triton_unavailable)]
    if cuda_op is not None:
        impls.append(Impl("cuda", prepare("cuda"), unavailable=cuda_unavailable(cuda_op)))
    return impls


def strategy_impls(prepare: Callable[[str, str], Callable], strategies: tuple, cuda_op: str) -> list[Impl]:
    """A row per backend and strategy (``torch:dense``, ``triton:gather``, ...), beside the
    ``auto`` rows of :func:`backend_impls`: the cost model prices an eager call, which
    host work bounds, so its pick need not be the faster kernels (a captured step's)."""
    impls = []
    for s in strategies:
        impls += [Impl(f"torch:{s}", prepare("torch", s)),
                  Impl(f"triton:{s}", prepare("triton", s), unavailable=triton_unavailable),
                  Impl(f"cuda:{s}", prepare("cuda", s), unavailable=cuda_unavailable(cuda_op))]
    return impls


def cuda_unavailable(op: str) -> Callable[[torch.device], str | None]:
    def reason(device: torch.device) -> str | None:
        from rdkernels.backend import _CUDA_OPS_USING_TRITON, cuda_unavailable_reason, triton_interpreter_enabled
        if op in _CUDA_OPS_USING_TRITON and triton_interpreter_enabled():
            return f"TRITON_INTERPRET is set, and the cuda {op} runs Triton merges: the interpreter is never timed"
        return cuda_unavailable_reason(device, op)
    return reason


def module_missing(module: str, attr: str | None = None) -> str | None:
    """Why ``module`` (and ``attr`` in it) cannot be used, or None."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not available yet ({exc})"
    if attr is not None and not hasattr(mod, attr):
        return f"{module}.{attr} is not available yet"
    return None


def peer_missing(module: str, extra: str = "bench") -> Callable[[torch.device], str | None]:
    def reason(device: torch.device) -> str | None:
        try:
            importlib.import_module(module)
        except ImportError:
            return f"{module} is not installed (pip install rdkernels[{extra}])"
        return None
    return reason
