"""Run the registered benchmarks: check, time, measure memory, compute floors.

For each case of each op, every implementation is first run once on the same
inputs as a float64 reference and compared with it (forward outputs and input
gradients). Only implementations that agree are timed; one that disagrees gets
a row with status "wrong" and its error, never a time. Implementations that
cannot run on this device get a row with status "unavailable" and the reason.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import traceback
from dataclasses import asdict, dataclass

import torch

from benchmarks.ceilings import Ceilings
from benchmarks.registry import Case, Floor, Impl, OpBench, to_float64
from benchmarks.timing import Budget, peak_memory_bytes, time_fns
from rdkernels.backend import BackendUnavailable

# Largest error allowed, relative to the reference tensor's largest magnitude,
# by the lowest precision among the inputs. Loose enough for TF32 dots and
# reordered fp32 sums; a wrong kernel is off by O(1).
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}


@dataclass
class Row:
    op: str
    case: str
    params: dict
    preset: str | None
    impl: str
    kind: str
    mode: str
    status: str                  # ok | wrong | unavailable | error
    reason: str = ""
    time_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    reps: int | None = None
    input_sets: int | None = None
    peak_mem_bytes: int | None = None
    floor_ms: float | None = None
    floor_bytes: float | None = None
    floor_flops: float | None = None
    floor_note: str = ""
    frac_of_floor: float | None = None   # floor / time: 1.0 = at the floor
    speedup_vs_naive: float | None = None
    max_rel_err: float | None = None
    tolerance: float | None = None
    checked: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _grad_out(t: torch.Tensor, seed: int = 1234) -> torch.Tensor:
    """The upstream gradient for backward: ones for a scalar, else fixed noise."""
    if t.numel() == 1:
        return torch.ones_like(t)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g, dtype=torch.float64).to(device=t.device, dtype=t.dtype)


def _lowest_precision(inputs: dict) -> torch.dtype:
    order = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
    found = {t.dtype for t in _walk(inputs) if t.is_floating_point()}
    for dt in order:
        if dt in found:
            return dt
    return torch.float32


def _walk(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)


def _forward_and_grads(op: OpBench, run, inputs: dict, with_grads: bool, loss_key: str | None = None) -> dict:
    out = run()
    result = {k: v.detach() for k, v in op.check_outputs(inputs, out).items() if isinstance(v, torch.Tensor)}
    if with_grads and op.differentiable:
        loss = out[loss_key or op.loss_key]
        targets = op.grad_inputs(inputs, out)
        grads = torch.autograd.grad(loss, targets, _grad_out(loss))
        for i, g in enumerate(grads):
            result[f"grad[{i}]"] = g
    return result


def _compare(actual: dict, expected: dict, tol: float) -> tuple[float, str]:
    """Largest error over the shared outputs, each relative to its reference's
    largest magnitude; also returns the name of the worst output.

    A gradient is measured against the larger of its own magnitude and 1% of
    the largest gradient of the step, so a gradient that is zero in exact
    arithmetic (DCD's bias: the losses are shift-invariant) is not judged by
    the rounding noise it holds."""
    shared = [k for k in expected if k in actual]
    if not shared:
        return math.inf, "no output in common with the reference"
    grad_scale = max((expected[k].detach().abs().max().item() for k in shared
                      if k.startswith("grad[") and expected[k].numel()), default=0.0)
    worst, worst_name = 0.0, ""
    for k in shared:
        a = actual[k].detach().to(device="cpu", dtype=torch.float64)
        e = expected[k].detach().to(device="cpu", dtype=torch.float64)
        if a.shape != e.shape:
            return math.inf, f"{k}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        if not torch.isfinite(a).all():
            return math.inf, f"{k}: non-finite values"
        if not e.numel():
            continue
        if not torch.isfinite(e).all():  # a NaN error compares False with anything: it would pass
            return math.inf, f"{k}: the float64 reference is not finite"
        scale = e.abs().max().item()
        if k.startswith("grad["):
            scale = max(scale, 0.01 * grad_scale)
        err = (a - e).abs().max().item() / max(scale, 1e-12)
        if err > worst:
            worst, worst_name = err, k
    return worst, worst_name


@contextlib.contextmanager
def _index_checks(enabled: bool):
    """Index range checks cost a host sync per call; the naive formulations do
    none, so they are off while timing (on while checking)."""
    old = os.environ.get("RDKERNELS_CHECK_INDICES")
    os.environ["RDKERNELS_CHECK_INDICES"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RDKERNELS_CHECK_INDICES", None)
        else:
            os.environ["RDKERNELS_CHECK_INDICES"] = old


def _input_sets(op: OpBench, case: Case, device: torch.device, set_bytes: int, max_sets: int) -> int:
    """How many input sets to rotate through so that consecutive runs do not
    hit in cache: enough to cover twice the last-level cache, at most max_sets."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        cache = getattr(props, "L2_cache_size", 50 << 20)
    else:   # a CPU's last-level cache; building sets costs more than it saves past two
        cache, max_sets = 32 << 20, min(max_sets, 2)
    return int(max(1, min(max_sets, math.ceil(2 * cache / max(set_bytes, 1)))))


def lowest_floor(op: OpBench, case: Case, mode: str, ceilings: Ceilings) -> Floor:
    """The case's floor: of the Floors the op lists (one per strategy it could
    take, or just one), the lowest at this device's ceilings."""
    fl = op.floor(case, mode)
    return min(fl if isinstance(fl, list) else [fl], key=lambda f: ceilings.floor_ms(f.nbytes, f.flops, f.dtype))


def run_case(op: OpBench, case: Case, device: torch.device, ceilings: Ceilings, budget: Budget,
             max_sets: int = 4, progress=None) -> list[Row]:
    rows: list[Row] = []
    impls = op.all_implementations()
    base = dict(op=op.name, case=case.label, params=case.params, preset=case.preset)

    def emit(impl: Impl, mode: str, **kw) -> Row:
        row = Row(**base, impl=impl.name, kind=impl.kind, mode=mode, **kw)
        rows.append(row)
        return row

    # Reference on a float64 copy of the inputs.
    check_inputs = op.make_inputs(case, device, seed=0)
    dtype = _lowest_precision(check_inputs)
    tol = TOLERANCE[dtype]
    ref_inputs = to_float64(check_inputs)
    set_bytes = op.input_bytes(check_inputs)
    try:
        with _index_checks(True):
            expected = _forward_and_grads(op, op.reference().prepare(ref_inputs), ref_inputs, True)
    except Exception as exc:   # nothing can be checked, so nothing is timed
        msg = f"the float64 reference failed: {type(exc).__name__}: {exc}".splitlines()[0][:300]
        for impl in impls:
            for mode in op.modes():
                emit(impl, mode, status="error", reason=msg)
            if progress is not None:
                progress.update(1)
        return rows
    del check_inputs, ref_inputs

    n_sets = _input_sets(op, case, device, set_bytes, max_sets)
    sets = None
    for impl in impls:
        reason = impl.unavailable(device)
        if reason:
            for mode in op.modes():
                emit(impl, mode, status="unavailable", reason=reason)
            if progress is not None:
                progress.update(1)
            continue
        check = "forward" if impl.check == "forward" or not op.differentiable else "forward+grad"
        try:
            inputs = op.make_inputs(case, device, seed=0)
            with _index_checks(True):
                actual = _forward_and_grads(op, impl.prepare(inputs), inputs, check == "forward+grad",
                                            impl.loss_key)
            if check == "forward":
                expected_here = {k: v for k, v in expected.items() if not k.startswith("grad[")}
            else:
                expected_here = expected
            err, where = _compare(actual, expected_here, tol)
            del inputs, actual
        except Exception as exc:  # report, keep going
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            # a backend that declines this shape (e.g. CUDA DCD past B = 1024) is not broken
            status = "unavailable" if isinstance(exc, BackendUnavailable) else "error"
            for mode in op.modes():
                emit(impl, mode, status=status, reason=msg)
            if os.environ.get("RDKERNELS_BENCH_DEBUG"):
                traceback.print_exc()
            if progress is not None:
                progress.update(1)
            continue
        limit = tol * impl.rtol_scale
        if not err <= limit:
            for mode in op.modes():
                emit(impl, mode, status="wrong", max_rel_err=err, tolerance=limit, checked=check,
                     reason=f"differs from the float64 reference (worst: {where}, rel. err {err:.3g} > {limit:.3g})")
            if progress is not None:
                progress.update(1)
            continue

        # Time it.
        if sets is None:
            sets = [op.make_inputs(case, device, seed=1 + i) for i in range(n_sets)]
        try:
            with _index_checks(False):
                for mode in op.modes():
                    fns = [_mode_fn(op, impl, s, mode) for s in sets]
                    t = time_fns(fns, device, budget)
                    peak = peak_memory_bytes(fns[0], device)
                    fl = lowest_floor(op, case, mode, ceilings)
                    floor_ms = ceilings.floor_ms(fl.nbytes, fl.flops, fl.dtype)
                    emit(impl, mode, status="ok", time_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms,
                         reps=t.reps, input_sets=n_sets, peak_mem_bytes=peak, floor_ms=floor_ms,
                         floor_bytes=fl.nbytes, floor_flops=fl.flops, floor_note=fl.note,
                         frac_of_floor=floor_ms / t.median_ms if t.median_ms > 0 else None,
                         max_rel_err=err, tolerance=limit, checked=check, reason=impl.note)
                    del fns
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            done = {r.mode for r in rows if r.impl == impl.name}
            for mode in op.modes():
                if mode not in done:
                    emit(impl, mode, status="error", reason=f"while timing: {msg}")
            if os.environ.get("RDKERNELS_BENCH_DEBUG"):
                traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if progress is not None:
            progress.update(1)

    # Speed-up over naive, per mode.
    naive = {r.mode: r.time_ms for r in rows if r.kind == "naive" and r.status == "ok"}
    for r in rows:
        if r.status == "ok" and naive.get(r.mode):
            r.speedup_vs_naive = naive[r.mode] / r.time_ms
    return rows


def _grad_out_once():
    """``_grad_out`` made on the first call and reused. A non-scalar loss's (Sinkhorn's
    [P] costs) is built on the host and copied to the device: once per timed call, that
    copy from pageable memory is a stream sync that inflates fwd+bwd times, makes the
    call look host-bound and cannot be captured in a CUDA graph."""
    made: dict = {}

    def grad_out(loss: torch.Tensor) -> torch.Tensor:
        key = (tuple(loss.shape), loss.dtype, loss.device)
        if key not in made:
            made[key] = _grad_out(loss)
        return made[key]
    return grad_out


def _without_grad(run):
    def forward_only():
        with torch.no_grad():
            return run()
    return forward_only


def _mode_fn(op: OpBench, impl: Impl, inputs: dict, mode: str):
    run = impl.prepare(inputs)
    key = impl.loss_key or op.loss_key
    if mode == "fwd":
        return _without_grad(run) if impl.fwd_no_grad else run
    if mode == "fwd+bwd":
        grad_out = _grad_out_once()

        def fwd_bwd():
            out = run()
            loss = out[key]
            return torch.autograd.grad(loss, op.grad_inputs(inputs, out), grad_out(loss))
        return fwd_bwd
    # bwd: one forward, untimed, kept alive; backward replayed on its graph.
    out = run()
    loss = out[key]
    targets = op.grad_inputs(inputs, out)
    go = _grad_out(loss)
    return lambda: torch.autograd.grad(loss, targets, go, retain_graph=True)


def run_suite(ops: list[OpBench], device: torch.device, ceilings: Ceilings, budget: Budget, size: str,
              preset: str | None, progress: bool = True) -> list[Row]:
    work = [(op, case) for op in ops for case in op.cases(size, preset)]
    total = sum(len(op.all_implementations()) for op, _ in work)
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, desc="benchmarks", unit="impl", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            bar = None
    rows: list[Row] = []
    for op, case in work:
        if bar is not None:
            bar.set_postfix_str(f"{op.name} {case.label}")
        torch.manual_seed(0)
        rows.extend(run_case(op, case, device, ceilings, budget, progress=bar))
    if bar is not None:
        bar.close()
    return rows
