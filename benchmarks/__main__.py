"""python -m benchmarks [--quick] [--op OP ...] [--preset cifar|imagenet] [--out DIR] [--no-plots]

Times every implementation of every op side by side on the same inputs, after
checking each against a float64 reference, and writes a table, a JSON record
and plots under benchmarks/results/<device>/.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.registry import OP_MODULES, load_ops
from benchmarks.timing import FULL, QUICK, TINY
from rdkernels._cli import device as device_arg, int_at_least
from rdkernels._environment import resolve_device

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="small sweep, short timings (under two minutes on a 2-core CPU)")
    size.add_argument("--tiny", action="store_true",
                      help="tiny sizes, a few runs each: checks the plumbing, numbers mean nothing")
    p.add_argument("--op", action="append", choices=OP_MODULES, metavar="OP",
                   help=f"op to run (repeatable; default all): {', '.join(OP_MODULES)}")
    p.add_argument("--preset", choices=("cifar", "imagenet"),
                   help="run only the named CRD configuration (RepDistiller's CIFAR-100 or ImageNet sizes)")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="cpu, cuda or cuda:N (default auto: cuda if torch sees a GPU)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default benchmarks/results/<device>/)")
    p.add_argument("--name", default=None, help="file stem of the JSON and plots (default: the mode)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="CPU: torch intra-op threads (default: torch's choice; 1 is steadier on a busy machine)")
    p.add_argument("--list", action="store_true", help="list the ops, implementations and cases; run nothing")
    p.add_argument("--from-json", type=Path, default=None, metavar="PATH",
                   help="print the table of a saved run (and redraw its plots unless --no-plots); runs nothing")
    p.add_argument("--max-sets", type=int_at_least(1), default=4, help="most input sets rotated through while timing")
    return p.parse_args(argv)


def _busy() -> bool:
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        return False


def _replay(args) -> int:
    import json

    record = json.loads(args.from_json.read_text())
    rows = report.rows_from_record(record)
    dev = record["device"]
    print(f"{dev['name']}, torch {record['versions']['torch']}, triton {record['versions'].get('triton')}, "
          f"CUDA {record['versions'].get('cuda')}, {record['started_utc'][:10]}: `{record['command']}`")
    print(report.format_table(rows))
    if not args.no_plots:
        ops, _ = load_ops(sorted({r.op for r in rows}))
        out_dir = args.out or args.from_json.parent
        _plots(rows, ops, out_dir, args.name or args.from_json.stem, dev["name"])
    return 0


def _list(args) -> int:
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    ops, skipped = load_ops(args.op)
    for op in ops:
        print(f"{op.name}: {op.description}")
        print(f"  implementations: {', '.join(i.name for i in op.all_implementations())}")
        print(f"  modes: {', '.join(op.modes())}")
        for case in op.cases(size, args.preset):
            print(f"  case: {case.label}")
    for s in skipped:
        print(f"{s['op']}: skipped ({s['reason']})")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        if not args.from_json.is_file():
            print(f"python -m benchmarks: error: argument --from-json: no such file: {str(args.from_json)!r}",
                  file=sys.stderr)
            return 2
        return _replay(args)
    if args.list:
        return _list(args)
    from benchmarks import suite
    from benchmarks.ceilings import measure

    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        # CUDA events record on the current device's stream: timing work on another GPU
        # would time that device's idle stream
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif device.type == "cpu" and _busy():
        # Intra-op threads that wait on each other on an oversubscribed machine
        # run tens of times slower; one thread gives steadier numbers there.
        print(f"the machine is busy (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): "
              "timing with 1 thread (--threads N to override)", file=sys.stderr)
        torch.set_num_threads(1)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    budget = {"tiny": TINY, "quick": QUICK, "full": FULL}[size]
    started, t0 = report.utc_now(), time.perf_counter()

    ops, skipped = load_ops(args.op)
    for s in skipped:
        print(f"skipping {s['op']}: {s['reason']}", file=sys.stderr)
    dev = report.device_info(device)
    print(f"device: {dev['name']} ({device}); measuring ceilings...", file=sys.stderr)
    ceilings = measure(device, quick=size != "full")
    print(f"copy bandwidth {ceilings.bandwidth_gbps:.1f} GB/s, matmul "
          + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in ceilings.matmul_tflops.items()), file=sys.stderr)

    rows = suite.run_suite(ops, device, ceilings, budget, size, args.preset, progress=not args.no_progress)
    elapsed = time.perf_counter() - t0

    print()
    print(f"rdkernels benchmarks: {dev['name']}, torch {torch.__version__}, {size} mode, {elapsed:.0f} s")
    print(f"ceilings: copy {ceilings.bandwidth_gbps:.1f} GB/s, matmul fp32 "
          f"{ceilings.matmul_tflops['float32']:.2f} TFLOP/s")
    print(report.format_table(rows))
    for s in skipped:
        print(f"(skipped {s['op']}: {s['reason']})")

    out_dir = args.out or RESULTS / dev["slug"]
    name = args.name or (size if not args.preset else f"{size}-{args.preset}")
    if args.op:
        name += "-" + "-".join(args.op)
    record = report.build_record(rows, device=device, ceilings=ceilings, skipped=skipped,
                                 args=vars(args) | {"out": str(args.out) if args.out else None, "size": size},
                                 started=started, elapsed_s=elapsed)
    path = report.write_json(record, out_dir, name)
    print(f"\nJSON: {path}")
    if not args.no_plots:
        _plots(rows, ops, out_dir, name, dev["name"])
    return 0


def _plots(rows, ops, out_dir, name, device_name) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no plots (pip install rdkernels[bench])", file=sys.stderr)
        return
    for p in report.write_plots(rows, ops, out_dir, name, device_name):
        print(f"plot: {p}")


if __name__ == "__main__":
    sys.exit(main())
