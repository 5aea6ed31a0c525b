"""Host cost of the losses' training steps with every kernel launch stubbed out (any machine).

    python -m benchmarks.host [--loss crd rrd ...] [--backend triton cuda] [--op [OP ...]] [--steps 300]
                              [--json PATH]

At training sizes the fused losses are host-bound on a GPU: their kernels take
tens of microseconds, the Python, dispatcher and allocator work around them
several times that (``benchmarks.overhead`` measures both, on a GPU). This
tool measures that host work alone, without a GPU: each Triton launch (run
by the interpreter, on CPU tensors) and each call into the CUDA extension is
replaced by a no-op that counts it, and each loss runs forward and backward
on tiny CPU tensors, so the torch ops between the kernels cost little more
than their dispatch. Index checks are off, as in the timed suite and the
harness's comparisons (they add one host sync a step).

``--op`` adds each op alone: fused, launches stubbed, beside its naive
formulation (the public code's torch ops, which at these sizes cost about
their dispatch), so an op's eager speed-up on a GPU can be bounded from the
host side.

Per step it prints the host time (the fastest of seven blocks), the Python
function calls made, the kernel launches and the torch ops that launch
kernels on a GPU; and, for scale, the same for a floor: one ``nn.Linear``
forward, a mean and the backward. Times move with the CPU: compare rows of
one run. Not seen here: Triton's own launch path (argument binding, cache
lookup) and the driver's, which a GPU adds to every launch counted, ours and
the torch ops' alike.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import Counter
from typing import Callable
from unittest import mock

import torch

BATCH, WIDTH, N_DATA = 4, 16, 256          # tiny: the torch ops between the kernels cost their dispatch
BLOCKS = 7    # timed blocks of --steps steps; the fastest is reported (the others met other processes)
LOSSES = ("crd", "wcord", "rrd", "dcd", "kd")
BACKENDS = ("triton", "cuda")
# The extension's host-side queries (sizes, limits, what it was built for) stay real;
# every other entry point launches kernels and becomes a counted no-op.
_EXTENSION_QUERIES = ("_bytes", "dense_block_m", "dense_block_n", "dense_max_dim", "compiled_archs",
                      "kernel_image_error", "_max_chunk_words")
_H100_SHARED_MEMORY = 232_448              # bytes per block, what the emulation reports too


def _rdkernels():
    """rdkernels, imported with Triton's interpreter on (main sets it before the import;
    the stubs replace the interpreter's launches). Imported late so that importing this
    module for its parser (the docs test, on a GPU too) changes nothing."""
    import rdkernels
    from rdkernels.backend import triton_interpreter_enabled
    if not triton_interpreter_enabled():
        raise RuntimeError("benchmarks.host stubs the launches of Triton's interpreter: run it as "
                           "`python -m benchmarks.host` (which sets TRITON_INTERPRET=1 before Triton is imported)")
    return rdkernels


class _StubExtension:
    """rdkernels._C with its kernel entry points counted and skipped."""

    def __init__(self, real, launches: Counter):
        self._real, self._launches = real, launches

    def max_shared_memory_per_block(self) -> int:
        return _H100_SHARED_MEMORY

    def __getattr__(self, name: str):
        real = getattr(self._real, name)
        if name.endswith(_EXTENSION_QUERIES):
            return real

        def launch(*args, **kwargs):
            self._launches[f"cuda:{name}"] += 1
        return launch


def _stub_triton(launches: Counter):
    """Patch: a Triton launch ``kernel[grid](...)`` under the interpreter counts and returns."""
    from triton.runtime.interpreter import InterpretedFunction

    def getitem(kernel, grid):
        def launch(*args, **kwargs):
            launches[f"triton:{kernel.fn.__name__}"] += 1
        return launch
    return mock.patch.object(InterpretedFunction, "__getitem__", getitem)


@contextlib.contextmanager
def stubbed_launches():
    """Within the block every kernel launch is a counted no-op, and the CUDA backend
    (when the extension is built) takes CPU tensors; yields the launch Counter."""
    _rdkernels()
    from rdkernels import backend
    from rdkernels.ops._cuda_common import extension_patches
    launches: Counter = Counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_stub_triton(launches))
        try:
            from rdkernels import _C
        except ImportError:
            _C = None
        if _C is not None:
            stub = _StubExtension(_C, launches)
            for target, name, value in extension_patches(stub):
                stack.enter_context(mock.patch.object(target, name, value))
            stack.enter_context(mock.patch.object(
                backend, "cuda_unavailable_reason",
                lambda device, op: None if hasattr(_C, op) else f"the extension has no kernel for {op!r}"))
        stack.enter_context(mock.patch.dict(os.environ, {"RDKERNELS_CHECK_INDICES": "0"}))
        yield launches


def _loss_step(name: str) -> Callable[[], None]:
    """forward + backward of loss ``name`` at the tiny sizes, after a zero_grad(set_to_none=True)
    of the student features and the loss's parameters (a training step's; without it each
    backward would add into the gradients of the last)."""
    rdkernels = _rdkernels()
    f_s = torch.randn(BATCH, WIDTH, requires_grad=True)
    f_t = torch.randn(BATCH, WIDTH)
    idx = torch.randint(0, N_DATA, (BATCH,))
    if name == "floor":
        module = torch.nn.Linear(WIDTH, WIDTH)
        forward = lambda: module(f_s).mean()   # noqa: E731
    elif name == "crd":
        module = rdkernels.CRDLoss(WIDTH, WIDTH, N_DATA, feat_dim=WIDTH, nce_k=32)
        module.contrast.params[2:4] = 1.0   # Z set, as after the first step (its estimate reads stubbed outputs)
        forward = lambda: module(f_s, f_t, idx)   # noqa: E731
    elif name == "wcord":
        # its cost check is a host sync, off in the harness's comparisons as the index checks are
        module = rdkernels.WCoRDLoss(WIDTH, WIDTH, N_DATA, feat_dim=WIDTH, nce_k=32, check_costs=False)
        forward = lambda: module(f_s, f_t, idx)   # noqa: E731
    elif name == "rrd":
        module = rdkernels.RRDLoss(WIDTH, WIDTH, feat_dim=WIDTH, queue_size=64)
        forward = lambda: module(f_s, f_t)   # noqa: E731
    elif name == "dcd":
        module = rdkernels.DCDLoss(WIDTH, WIDTH, feat_dim=WIDTH)
        forward = lambda: module(f_s, f_t)   # noqa: E731
    elif name == "kd":   # the features stand in for logits of WIDTH classes
        module = rdkernels.KDLoss(T=4.0)
        forward = lambda: module(f_s, f_t)   # noqa: E731
    else:
        raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")
    leaves = [f_s, *module.parameters()]

    def step():
        for leaf in leaves:
            leaf.grad = None
        forward().backward()
    return step


OPS = ("shared_bank_contrast", "dcd", "bank_contrast", "kd_loss")


def _op_step(name: str, impl: str) -> Callable[[], None]:
    """forward + backward of op ``name`` at the tiny sizes: the fused op (``impl`` =
    "fused", kernels stubbed) or its reference formulation (``impl`` = "naive", the
    public code's torch ops, whose arithmetic at these sizes costs little beside
    their dispatch: about what they cost a GPU's host)."""
    from benchmarks import naive
    from rdkernels import ops
    q = torch.nn.functional.normalize(torch.randn(BATCH, WIDTH), dim=1).requires_grad_()
    other = torch.nn.functional.normalize(torch.randn(BATCH, WIDTH), dim=1)
    rows = torch.nn.functional.normalize(torch.randn(64, WIDTH), dim=1)
    fused = impl == "fused"
    if name == "shared_bank_contrast":
        if fused:
            forward = lambda: ops.shared_bank_contrast(q, other, rows, tau_s=0.02, tau_t=0.1,  # noqa: E731
                                                       reduction="mean")
        else:
            forward = lambda: naive.rrd_loss(q, other, rows, 0.02, 0.1)   # noqa: E731
    elif name == "dcd":
        tau, bias = torch.tensor(1.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)
        other.requires_grad_()
        if fused:
            forward = lambda: ops.dcd_loss(q, other, tau, bias)   # noqa: E731
        else:
            forward = lambda: naive.dcd_loss(q, other, tau, bias)   # noqa: E731
    elif name == "bank_contrast":
        idx = torch.randint(0, rows.shape[0], (BATCH, 33))
        z = torch.tensor([float(rows.shape[0])])
        kw = dict(temperature=0.07, epilogue="nce", z=z, n_data=rows.shape[0])
        if fused:
            forward = lambda: ops.bank_contrast(q, rows, idx, strategy="gather", **kw)   # noqa: E731
        else:
            forward = lambda: naive.bank_contrast(q, rows, idx, **kw)   # noqa: E731
    elif name == "kd_loss":
        if fused:
            forward = lambda: ops.kd_loss(q, other, T=4.0)   # noqa: E731
        else:
            from rdkernels.losses.reference.kd import KDLoss
            kd = KDLoss(4.0)
            forward = lambda: kd(q, other)   # noqa: E731
    else:
        raise ValueError(f"unknown op {name!r}; choose from {OPS}")
    leaves = [t for t in (q, other) if t.requires_grad]

    def step():
        for leaf in leaves:
            leaf.grad = None
        forward().backward()
    return step


def _python_calls(step: Callable[[], None], steps: int) -> float:
    """Python function calls per step (sys.setprofile's 'call' events)."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event == "call"
    sys.setprofile(count)
    try:
        for _ in range(steps):
            step()
    finally:
        sys.setprofile(None)
    return calls / steps


def _triton_ops_as_on_gpu():
    """Patch: the ops without a CUDA kernel (those that resolve their backend by
    ``backend.resolve_triton_only``) run Triton's under the cuda backend, as on a GPU,
    where on CPU tensors they would raise (the cuda backend needs CUDA tensors)."""
    from rdkernels import backend
    resolve = backend.resolve_triton_only

    def on_gpu(device, op, requested=None, too_large=None, torch_only=False):
        if backend.requested_backend(requested) == "cuda":   # as on a GPU where Triton runs
            return "torch" if too_large is not None or torch_only else "triton"
        return resolve(device, op, requested, too_large, torch_only)
    return mock.patch.object(backend, "resolve_triton_only", on_gpu)


# ATen ops that only make or reshape tensor metadata: no kernel on a GPU
_METADATA_OPS = {"aten::" + op for op in (
    "empty", "empty_like", "empty_strided", "detach", "reshape", "view", "_reshape_alias", "t", "transpose",
    "permute", "select", "slice", "expand", "unsqueeze", "squeeze", "as_strided", "alias", "lift_fresh",
    "contiguous", "to", "_to_copy_noop", "resolve_conj", "resolve_neg", "result_type", "new_empty")}


def _torch_ops(step: Callable[[], None], steps: int = 10) -> float:
    """Top-level ATen calls per step that compute (each a kernel launch on a GPU): what
    a step runs as torch ops besides the counted kernels. ``to`` and ``contiguous``
    are left out (no-ops on tensors already right; a conversion shows as ``_to_copy``)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    top = [e.name for e in prof.events() if e.name.startswith("aten::")
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return sum(name not in _METADATA_OPS for name in top) / steps


def measure(name: str, backend: str, steps: int, op: str | None = None) -> dict:
    """One row: host us per step, Python calls per step and launches per step, of loss
    ``name`` or, with ``op`` = "fused" or "naive", of that implementation of op ``name``."""
    rdkernels = _rdkernels()
    with stubbed_launches() as launches, _triton_ops_as_on_gpu(), rdkernels.use_backend(backend):
        step = _loss_step(name) if op is None else _op_step(name, op)
        for _ in range(20):       # first-call work: caches, lazy imports, allocator
            step()
        torch_ops = _torch_ops(step)
        launches.clear()
        calls = _python_calls(step, steps)
        per_step = {k: v / steps for k, v in sorted(launches.items())}
        blocks = []
        for _ in range(BLOCKS):
            start = time.perf_counter()
            for _ in range(steps):
                step()
            blocks.append((time.perf_counter() - start) / steps * 1e6)
    return dict(loss=name if op is None else f"{name}:{op}", backend=backend, host_us=min(blocks), python_calls=calls,
                launches=sum(per_step.values()), launches_by_kernel=per_step, torch_ops=torch_ops)


def _available(backend: str) -> str | None:
    """Why ``backend`` cannot be measured here, or None."""
    if backend == "cuda":
        try:
            from rdkernels import _C  # noqa: F401
        except ImportError as exc:
            return f"the CUDA extension is not built ({exc})"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.host", description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--op", nargs="*", choices=OPS, default=None,
                        help="also each op alone, fused (stubbed) beside its naive formulation (no names: all)")
    parser.add_argument("--steps", type=int, default=300, help="steps per timed block (default 300)")
    parser.add_argument("--json", help="save the rows, with the CPU and versions, to this path")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "1"   # before Triton is imported: kernels on CPU tensors, stubbed
    from benchmarks.report import command_line, device_info, versions
    torch.manual_seed(0)
    torch.set_num_threads(1)   # tiny tensors: threads only add scheduling noise
    rows = [dict(measure("floor", "torch", args.steps), backend="-")]
    skipped = {}
    for backend in args.backend:
        reason = _available(backend)
        if reason is not None:
            skipped[backend] = reason
            continue
        rows += [measure(name, backend, args.steps) for name in args.loss]
        if args.op is not None:
            rows += [measure(name, backend, args.steps, op="fused") for name in args.op or OPS]
    if args.op is not None:
        rows += [dict(measure(name, "torch", args.steps, op="naive"), backend="-") for name in args.op or OPS]
    floor = rows[0]["host_us"]
    print(f"{'loss':<26} {'backend':<8} {'host us/step':>12} {'x floor':>8} {'py calls':>9} {'launches':>9} "
          f"{'torch ops':>9}")
    for r in rows:
        print(f"{r['loss']:<26} {r['backend']:<8} {r['host_us']:>12.1f} {r['host_us'] / floor:>8.2f} "
              f"{r['python_calls']:>9.0f} {r['launches']:>9.1f} {r['torch_ops']:>9.1f}")
    for backend, reason in skipped.items():
        print(f"{backend}: not measured: {reason}")
    if args.json:
        record = dict(device=device_info(torch.device("cpu")), versions=versions(),
                      command=command_line("benchmarks.host"), floor="nn.Linear forward, mean, backward",
                      rows=rows, skipped=skipped)
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
