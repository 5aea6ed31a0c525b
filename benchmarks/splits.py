"""Device time of RRD's Triton shared-bank contrast at several queue split counts (GPU only).

    python -m benchmarks.splits [--batch 64 256] [--rows 16384] [--dim 128] [--splits 8 16 33 66]
                                [--iters 100] [--json PATH]

The op splits the queue across programs and merges their online-softmax
partials (rdkernels/ops/shared_bank_contrast/triton.py). The split kernel
writes [2, splits, B, d] fp32 accumulators that the merge reads back: 8.4 MB at
132 splits and B = 64, d = 128, as many bytes as the queue itself. Fewer splits
move fewer of those bytes but give the GPU fewer programs. Per split count,
the sweep records the ms of one fwd+bwd call replayed from a CUDA graph (device
time only, as in a captured training step), the heuristic's own count marked;
each count runs the autotuner's pick for the shape. Its first run (H100,
2026-11-24) moved the heuristic from two programs an SM to half of one
(PROGRAMS_PER_SM in the op's triton.py): 132 splits to 33 at B = 64, 56 us to 41.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.ops._common import dtype_of, generator, unit_rows
from benchmarks.ops.shared_bank_contrast import TAU_S, TAU_T


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.splits", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--rows", type=int, default=16_384, help="queue rows N")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--splits", type=int, nargs="+", default=None,
                   help="split counts (default: the heuristic's count times 1/4, 1/2, 1, 2)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def sweep(batch: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    from benchmarks.overhead import _graph_ms
    from rdkernels.ops.shared_bank_contrast.triton import _num_splits, shared_bank_contrast_triton
    gen, dtype = generator(device, batch), dtype_of(args.dtype)
    q_s, q_t, queue = (unit_rows(n, args.dim, dtype, device, gen) for n in (batch, batch, args.rows))
    default = _num_splits(batch, device)
    counts = args.splits or sorted({max(1, default // 4), max(1, default // 2), default, 2 * default})
    out = []
    for splits in counts:
        def call(splits=splits):
            return shared_bank_contrast_triton(q_s, q_t, queue, TAU_S, TAU_T, True, num_splits=splits)
        call()   # compile and tune outside the capture
        ms = _graph_ms(call, args.iters)
        out.append({"batch": batch, "rows": args.rows, "dim": args.dim, "dtype": args.dtype, "splits": splits,
                    "default": splits == default, "graph_ms": ms})
        mark = " (heuristic)" if splits == default else ""
        print(f"B={batch:<5} N={args.rows:<7} d={args.dim:<4} splits={splits:<5} "
              f"{'-' if ms is None else f'{ms * 1e3:8.1f} us'}{mark}", flush=True)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.splits needs a CUDA device")
    device = torch.device("cuda", torch.cuda.current_device())
    rows = [r for b in args.batch for r in sweep(b, args, device)]
    if args.json:
        from benchmarks.report import command_line, utc_now, versions
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "schema": "rdkernels-splits/1", "device": torch.cuda.get_device_name(device), "versions": versions(),
            "command": command_line("benchmarks.splits"), "written_utc": utc_now(), "iters": args.iters,
            "rows": rows}, indent=1) + "\n")
        print(f"JSON: {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
