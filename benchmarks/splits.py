"""Device time of the fused kernels that split a long dimension, at several split counts (GPU only).

    python -m benchmarks.splits [--op shared_bank_contrast bank_contrast_dense] [--batch 64 256]
                                [--rows 16384] [--bank 50000] [--negatives 16384] [--dim 128]
                                [--backend triton cuda] [--splits 8 16 33 66] [--iters 100] [--json PATH]

Both ops cut their long dimension into splits, a program each, and merge the
splits' partials after the kernel (flash-decoding style). Fewer splits move
fewer partial bytes and give the merge a shorter loop, but give the GPU fewer
programs. Per split count, the sweep records the ms of one fwd+bwd call
replayed from a CUDA graph (device time only, as in a captured training
step) and each kernel's share of it (split kernel and merge, by
torch.profiler), the heuristic's own count marked; each count runs the autotuner's pick
for the shape at that count (timed afresh: the tuner's key leaves the count out,
and the first run of this sweep reused one count's pick at every other).

* ``shared_bank_contrast``: RRD's Triton op over its queue (``--rows``). The
  split kernel writes [2, splits, B, d] fp32 accumulators that the merge reads
  back: 8.4 MB at 132 splits and B = 64, d = 128, as many bytes as the queue
  itself. Its first runs (H100, 2026-11-24) moved the heuristic from two
  16-row programs an SM to one: 132 splits to 33 at B = 64, the op's kernel
  time from 50.9 us to 44.2. The count now follows the launch configuration
  (PROGRAMS_PER_SM in the op's triton.py: 64-row candidates get four times the
  splits), so each row also names the configuration the autotuner picked.
* ``bank_contrast_dense``: bank contrast's dense strategy (NCE) over the bank
  (``--bank`` rows, ``--negatives`` K), on each ``--backend``: the kernel and
  the merge of its [B, splits, d] partials (2.2 MB at Triton's 66 splits at
  B = 64, 8.6 MB at CUDA's 264; the merge is the Triton kernel of
  triton_merge.py for both), counts forced by
  ``rdkernels.ops.bank_contrast.dense.dense_split_count``. Triton rows name
  the candidate the autotuner picked (``x2``: the bank tile loaded twice,
  ``x1``: once; its key has the split, so each count is timed afresh).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.ops._common import bank_init, dtype_of, generator, sample_idx, unit_rows
from benchmarks.ops.bank_contrast import TEMPERATURE
from benchmarks.ops.shared_bank_contrast import TAU_S, TAU_T


OPS = ("shared_bank_contrast", "bank_contrast_dense")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.splits", description=__doc__.split("\n\n")[0])
    p.add_argument("--op", nargs="+", choices=OPS, default=["shared_bank_contrast"])
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--rows", type=int, default=16_384, help="shared_bank_contrast: queue rows N")
    p.add_argument("--bank", type=int, default=50_000, help="bank_contrast_dense: bank rows N")
    p.add_argument("--negatives", type=int, default=16_384, help="bank_contrast_dense: negatives K a row")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--backend", nargs="+", choices=["triton", "cuda"], default=["triton", "cuda"],
                   help="bank_contrast_dense: the backends swept (shared_bank_contrast: Triton's only)")
    p.add_argument("--splits", type=int, nargs="+", default=None,
                   help="split counts (default: the heuristic's count times 1/4, 1/2, 1, 2)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def _counts(default: int, args: argparse.Namespace) -> list[int]:
    return args.splits or sorted({max(1, default // 4), max(1, default // 2), default, 2 * default})


def _time_counts(label: str, row: dict, default: int, counts: list[int], run, iters: int,
                 tuned=None) -> list[dict]:
    """One row per split count the op makes: ``run(count)`` calls the op asking for
    ``count`` splits and returns the count it made (whole tiles: two counts asked for
    may make one), compiled and tuned eagerly, then timed replayed from a CUDA graph.
    ``tuned``: the op's TunedKernel, whose choice is timed again at each count (its
    key leaves the count out). Each row also has the costliest kernels of an eager
    call (split kernel, merge: their device us), by torch.profiler."""
    from benchmarks.overhead import _graph_ms, _kernels
    out, seen = [], set()
    for count in counts:
        if tuned is not None:
            tuned.forget_timings()
        splits = run(count)   # compile and tune outside the capture
        if splits in seen:
            continue
        seen.add(splits)
        ms = _graph_ms(lambda count=count: run(count), iters)
        kernels = _kernels(lambda count=count: run(count), iters)[1]
        out.append({**row, "splits": splits, "default": splits == default, "graph_ms": ms, "kernels": kernels})
        mark = " (heuristic)" if splits == default else ""
        parts = ", ".join(f"{k['name'][:28]} {k['us']:.1f}" for k in kernels[:2])
        print(f"{label} splits={splits:<5} {'-' if ms is None else f'{ms * 1e3:8.1f} us'}{mark}  [{parts}]",
              flush=True)
    return out


def sweep(batch: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """RRD's Triton shared-bank contrast over its queue; each row names the launch
    configuration the autotuner picked at that count."""
    from rdkernels.ops.shared_bank_contrast.triton import (_candidate_tag, contrast_kernel, queue_split_count,
                                                           shared_bank_contrast_triton)
    gen, dtype = generator(device, batch), dtype_of(args.dtype)
    q_s, q_t, queue = (unit_rows(n, args.dim, dtype, device, gen) for n in (batch, batch, args.rows))
    picked = {}

    def run(count=None):
        with queue_split_count(count) as used:
            shared_bank_contrast_triton(q_s, q_t, queue, TAU_S, TAU_T, True)
        splits, launch = used[0]
        picked[splits] = _candidate_tag(launch)
        return splits
    default = run()
    row = {"op": "shared_bank_contrast", "backend": "triton", "batch": batch, "rows": args.rows, "dim": args.dim,
           "dtype": args.dtype}
    rows = _time_counts(f"shared_bank_contrast B={batch:<5} N={args.rows:<7} d={args.dim:<4}", row, default,
                        _counts(default, args), run, args.iters, tuned=contrast_kernel)
    return [{**r, "config": picked.get(r["splits"])} for r in rows]


def sweep_dense(batch: int, backend: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Bank contrast's dense strategy (NCE, gradient on) over the bank, on ``backend``."""
    from rdkernels.ops import bank_contrast
    from rdkernels.ops.bank_contrast.dense import dense_split_count
    from rdkernels.ops.bank_contrast.triton_dense import candidate_tag, dense_kernel
    gen, dtype = generator(device, batch), dtype_of(args.dtype)
    query = unit_rows(batch, args.dim, dtype, device, gen).requires_grad_()
    bank = bank_init(args.bank, args.dim, dtype, device, gen)
    idx = sample_idx(torch.randint(0, args.bank, (batch,), device=device, generator=gen), args.bank,
                     args.negatives, gen)
    z = torch.tensor([float(args.bank)], device=device)
    kw = dict(temperature=TEMPERATURE, epilogue="nce", z=z, n_data=args.bank, backend=backend, strategy="dense")

    picked = {}

    def run(count=None):
        dense_kernel.last_launch = None
        with dense_split_count(count) as used:
            bank_contrast(query, bank, idx, **kw)   # the gradient is computed in the forward
        if used and dense_kernel.last_launch is not None:   # the Triton kernel ran: name its candidate
            picked[used[0]] = candidate_tag(dense_kernel.last_launch)
        return used[0] if used else None
    default = run()
    if default is None:   # a shape or GPU the fused kernel does not take ran the torch formulation
        print(f"bank_contrast_dense {backend}: the fused kernel did not run at B={batch}; skipped", flush=True)
        return []
    row = {"op": "bank_contrast_dense", "backend": backend, "batch": batch, "rows": args.bank,
           "negatives": args.negatives, "dim": args.dim, "dtype": args.dtype}
    rows = _time_counts(f"bank_contrast_dense {backend:<6} B={batch:<5} N={args.bank:<7} K={args.negatives:<6}",
                        row, default, _counts(default, args), run, args.iters)
    return [{**r, "config": picked.get(r["splits"])} for r in rows]


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.splits needs a CUDA device")
    device = torch.device("cuda", torch.cuda.current_device())
    rows = []
    for op in args.op:
        for b in args.batch:
            if op == "shared_bank_contrast":
                rows += sweep(b, args, device)
            else:
                rows += [r for backend in args.backend for r in sweep_dense(b, backend, args, device)]
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
