"""Host or device: what bounds each implementation of an op (GPU only).

    python -m benchmarks.overhead [--op OP ...] [--preset cifar] [--match TEXT] [--iters 30]

For every implementation of the chosen ops' cases, forward + backward (the
forward alone with ``--forward-only``), prints

* wall:  ms per call, back to back (CUDA events around ``iters`` calls);
* host:  ms of CPU time to issue one call (no sync in between);
* gpu:   ms of kernel time per call (torch.profiler, device side), and
  under the row the costliest kernels (us and launches per call, also in
  the JSON), so a slow op says which of its kernels to look at;
* graph: ms per call when the call is recorded once as a CUDA graph and
  replayed (what the call costs inside a captured training step; "-" where
  the implementation cannot be captured, e.g. it reads values on the host);
* in the JSON, ``tuned``: the launch configuration each autotuned kernel of
  the call ran (rdkernels/ops/_autotune.py);

An implementation whose host time is close to its wall time is bound by the
Python, dispatcher and launch work, not by its kernels: faster kernels would
not help it, fewer launches would. Index range checks are off, as in the
timed suite. ``--json PATH`` saves the rows with the device name, each with
its case's parameters and bytes floor and the run's measured ceilings, so that
``benchmarks.targets`` can judge the issues' targets in kernel time too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks import ceilings as _ceilings
from benchmarks.registry import OP_MODULES, load_ops
from benchmarks.suite import _index_checks, _mode_fn, lowest_floor
from rdkernels.harness.profiling import device_profile
from rdkernels.ops import assume_graph_replay

SCHEMA = "rdkernels-overhead/1"
TOP_KERNELS = 4  # per row: which kernels make up its device time


def _kernels(fn, iters: int) -> tuple[float, list[dict]]:
    """(ms of device time per call, the TOP_KERNELS costliest kernels, copies and
    memsets with their us and launches per call), by torch.profiler."""
    def work():
        for _ in range(iters):
            fn()
    _, ms, entries = device_profile(work, iters, torch.device("cuda", torch.cuda.current_device()))
    return ms, [{"name": e.name, "us": e.ms * 1e3, "launches": e.calls} for e in entries[:TOP_KERNELS]]


def _graph_ms(fn, iters: int) -> float | None:
    """ms per replay of ``fn`` recorded as a CUDA graph; None if it cannot be captured.
    Warm-up and capture run under assume_graph_replay, as a captured training step's
    do: an ``auto`` strategy is the one a replay is priced for."""
    with assume_graph_replay():
        replay = _record(fn)
    if replay is None:
        return None
    replay()
    return _event_ms(replay, iters)


def _event_ms(fn, iters: int) -> float:
    """ms per call of ``fn`` run back to back, by CUDA events around the ``iters`` calls."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _record(fn):
    """``fn`` recorded as a CUDA graph (after a side-stream warm-up): its replay, or None."""
    stream = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(stream)
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch's docs prescribe
        fn()
    stream.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception:  # a host read, a pageable copy, an allocation the graph cannot own...
        # torch.cuda.graph leaves its capture stream current when capture_end raises:
        # put this one back, or every later measurement would run on the capture stream
        torch.cuda.set_stream(stream)
        torch.cuda.synchronize()
        return None
    return graph.replay


def measure(fn, iters: int) -> dict:
    from rdkernels.ops._autotune import forget_launches, launched_configs
    forget_launches()
    for _ in range(3):          # JIT, autotune, allocator growth
        fn()
    tuned = launched_configs()  # the candidates the autotuner picked (or the shipped ones)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    host = (time.perf_counter() - t0) * 1e3 / iters
    wall = _event_ms(fn, iters)
    gpu, kernels = _kernels(fn, iters)
    return {"wall_ms": wall, "host_ms": host, "gpu_ms": gpu, "graph_ms": _graph_ms(fn, iters), "kernels": kernels,
            "tuned": tuned}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--op", action="append", choices=OP_MODULES, metavar="OP")
    p.add_argument("--preset", choices=("cifar", "imagenet"))
    p.add_argument("--size", choices=("quick", "full"), default="quick")
    p.add_argument("--match", default=None, help="only cases whose label contains this text")
    p.add_argument("--impl", action="append", default=None, help="only these implementations (repeatable)")
    p.add_argument("--forward-only", action="store_true",
                   help="time the forward alone (as the suite's fwd rows), not forward + backward")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--json", default=None, help="also write the rows here")
    return p.parse_args(argv)


def measure_ops(ops, device: torch.device, args: argparse.Namespace, timer=measure,
                ceilings: _ceilings.Ceilings | None = None) -> list[dict]:
    """One row per (op, case, implementation) that can run on ``device``, printed as it
    comes; ``timer(fn, iters)`` is :func:`measure` (replaceable to test the plumbing).
    With ``ceilings``, each row also carries its case's bytes floor."""
    rows = []
    print(f"{'op':<22} {'case':<44} {'impl':<16} {'wall ms':>8} {'host ms':>8} {'gpu ms':>8} {'graph ms':>8}")
    for op in ops:
        for case in op.cases(args.size, args.preset):
            if args.match and args.match not in case.label:
                continue
            inputs = op.make_inputs(case, device, seed=0)
            for impl in op.all_implementations():
                if args.impl and impl.name not in args.impl:
                    continue
                if impl.unavailable(device):
                    continue
                mode = "fwd+bwd" if op.differentiable and not args.forward_only else "fwd"
                try:
                    with _index_checks(False):
                        r = timer(_mode_fn(op, impl, inputs, mode), args.iters)
                except Exception as exc:  # report and go on: one broken impl should not hide the rest
                    print(f"{op.name:<22} {case.label:<44} {impl.name:<16} failed: {exc}", flush=True)
                    continue
                row = dict(op=op.name, case=case.label, params=case.params, impl=impl.name, mode=mode, **r)
                if ceilings is not None:
                    row["floor_bytes"] = lowest_floor(op, case, mode, ceilings).nbytes
                rows.append(row)
                graph = "-" if r["graph_ms"] is None else f"{r['graph_ms']:8.3f}"
                print(f"{op.name:<22} {case.label:<44} {impl.name:<16} {r['wall_ms']:8.3f} {r['host_ms']:8.3f} "
                      f"{r['gpu_ms']:8.3f} {graph:>8}", flush=True)
                for k in r.get("kernels", []):
                    print(f"{'':<24}{k['us']:9.1f} us {k['launches']:5.1f}x  {k['name'][:90]}", flush=True)
    return rows


def write_record(path, rows: list[dict], device_name: str, args: argparse.Namespace,
                 ceilings: _ceilings.Ceilings | None = None) -> Path:
    """The rows with what they were measured on and with (the folder is made if missing)."""
    from benchmarks.report import command_line, utc_now, versions

    record = {"schema": SCHEMA, "device": device_name, "torch": torch.__version__, "versions": versions(),
              "ceilings": ceilings.to_json() if ceilings is not None else None,
              "command": command_line("benchmarks.overhead"),
              "written_utc": utc_now(), "iters": args.iters, "rows": rows}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.overhead needs a CUDA device")
    device = torch.device("cuda", torch.cuda.current_device())
    ops, skipped = load_ops(args.op)
    for s in skipped:
        print(f"skipping {s['op']}: {s['reason']}", file=sys.stderr)
    ceilings = _ceilings.measure(device) if args.json else None   # the floors the saved rows carry
    rows = measure_ops(ops, device, args, ceilings=ceilings)
    if args.json:
        print(f"JSON: {write_record(args.json, rows, torch.cuda.get_device_name(device), args, ceilings)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
