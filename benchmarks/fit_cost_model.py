"""Fit the bank-contrast cost model's constants to this machine.

    python -m benchmarks.fit_cost_model [--backend torch|triton|cuda] [--batch 16 64 256]
        [--k 256 1024 4096] [--n 10000 50000 200000] [--json PATH]

Times both strategies of ``bank_contrast`` (NCE epilogue, forward + backward,
index checks off) at every (B, K, N) of the grid, then fits the model of
``rdkernels/ops/bank_contrast/cost_model.py`` to the times by least squares on
the relative error, with every constant nonnegative:

    t_gather = gather_bytes / bw_gather + c_gather
    t_dense  = stream_bytes / bw_stream + flops / flops_rate + indices * t_index + c_dense

(``cost_model.work`` gives each shape's terms). The model compares the two, so
only ``c_dense - c_gather`` matters: it is the fitted ``t_launch``. The report
lists, per shape, the measured and modelled times and which strategy the
current constants and the fitted ones pick, with what a wrong pick costs; the
fitted ``DeviceRates`` line goes into ``cost_model.py`` by hand, with a comment
saying where it was measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import device_info, versions
from benchmarks.suite import _index_checks
from benchmarks.timing import Budget, time_fns
from rdkernels import ops
from rdkernels._cli import device as device_arg, int_at_least
from rdkernels.backend import resolve
from rdkernels._environment import resolve_device
from rdkernels.ops.bank_contrast.cost_model import DeviceRates, estimate_times, faster_strategy, rates_for, work

SCHEMA = "rdkernels-cost-model-fit/1"
STRATEGIES = ("gather", "dense")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fit_cost_model", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=device_arg, default="auto", help="cpu, cuda or cuda:N (default auto)")
    p.add_argument("--backend", choices=("torch", "triton", "cuda"), default=None,
                   help="the backend whose strategies are timed (default: what auto picks on the device)")
    positive = int_at_least(1)
    p.add_argument("--batch", type=positive, nargs="+", default=[16, 64, 256], help="batch sizes B")
    p.add_argument("--k", type=positive, nargs="+", default=[256, 1024, 4096], help="negatives K")
    p.add_argument("--n", type=positive, nargs="+", default=[10_000, 50_000, 200_000], help="bank rows N")
    p.add_argument("--dim", type=positive, default=128)
    p.add_argument("--bank-dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--json", type=Path, default=None, help="save the times, the fit and the picks")
    return p.parse_args(argv)


def time_strategies(device: torch.device, backend: str, batch: int, k: int, n: int, dim: int,
                    bank_dtype: torch.dtype, budget: Budget) -> dict[str, float]:
    """Seconds per forward + backward of each strategy at one shape."""
    gen = torch.Generator(device=device).manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen, device=device), dim=1).to(bank_dtype)
    query = torch.randn(batch, dim, generator=gen, device=device).requires_grad_()
    idx = torch.randint(0, n, (batch, k + 1), generator=gen, device=device)
    z = torch.ones(1, device=device)
    times = {}
    for strategy in STRATEGIES:
        def step(strategy=strategy):
            query.grad = None
            ops.bank_contrast(query, bank, idx, temperature=0.07, epilogue="nce", z=z, n_data=n, backend=backend,
                              strategy=strategy).backward()
        with _index_checks(False):
            times[strategy] = time_fns([step], device, budget).median_ms / 1e3
    return times


def nonnegative_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin |a x - b| over x >= 0, exactly, by trying every support (a handful of
    columns here): the unconstrained solution on each subset of columns, kept when
    nonnegative; the best of those."""
    best, best_err = np.zeros(a.shape[1]), float(np.sum(b ** 2))
    for size in range(1, a.shape[1] + 1):
        for cols in itertools.combinations(range(a.shape[1]), size):
            x_sub, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if np.all(x_sub >= 0):
                x = np.zeros(a.shape[1])
                x[list(cols)] = x_sub
                err = float(np.sum((a @ x - b) ** 2))
                if err < best_err:
                    best, best_err = x, err
    return best


def fit_rates(shapes: list[dict], dim: int, bank_dtype: torch.dtype, backend: str,
              base: DeviceRates) -> tuple[DeviceRates, float]:
    """DeviceRates fitted to the measured ``shapes`` (dicts with batch, k, n, gather, dense
    in seconds), and the fixed cost both strategies share (c_gather: the model leaves it
    out, as it decides nothing). A rate the data leave undetermined (a zero coefficient)
    is infinite; t_graph is ``base``'s (a fit of eager calls says nothing of graph replays)."""
    terms = [work(s["batch"], s["k"] + 1, s["n"], dim, bank_dtype, backend) for s in shapes]
    gather_t = np.array([s["gather"] for s in shapes])
    dense_t = np.array([s["dense"] for s in shapes])
    # each row divided by its measured time: the fit weighs relative errors alike
    g = nonnegative_lstsq(np.array([[w.gather_bytes, 1.0] for w in terms]) / gather_t[:, None], np.ones(len(shapes)))
    d = nonnegative_lstsq(np.array([[w.stream_bytes, w.flops, w.indices, 1.0] for w in terms]) / dense_t[:, None],
                          np.ones(len(shapes)))

    def rate(coef: float) -> float:
        return 1.0 / float(coef) if coef > 0 else float("inf")

    rates = DeviceRates(bw_gather=rate(g[0]), bw_stream=rate(d[0]), flops=rate(d[1]), t_index=float(d[2]),
                        t_launch=max(float(d[3] - g[1]), 0.0), t_graph=base.t_graph)
    return rates, float(g[1])


def picks(shapes: list[dict], dim: int, bank_dtype: torch.dtype, device: torch.device, backend: str,
          rates: DeviceRates, shared_cost: float = 0.0) -> list[dict]:
    """Per shape: the strategy ``rates`` pick, and its time over the faster one's (1.0:
    the right pick); the modelled times with ``shared_cost`` added to both."""
    out = []
    for s in shapes:
        t_gather, t_dense = estimate_times(s["batch"], s["k"] + 1, s["n"], dim, bank_dtype, device, backend,
                                           rates=rates)
        pick = faster_strategy(t_gather, t_dense)
        out.append({"pick": pick, "model_gather": t_gather + shared_cost, "model_dense": t_dense + shared_cost,
                    "cost_of_pick": s[pick] / min(s["gather"], s["dense"])})
    return out


def format_report(shapes, now, fitted) -> str:
    lines = ["| B | K | N | gather ms | dense ms | fitted model: gather ms | dense ms | pick now | pick fitted |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for s, a, b in zip(shapes, now, fitted):
        def show(p):
            return p["pick"] + ("" if p["cost_of_pick"] < 1.005 else f" ({p['cost_of_pick']:.2f}x)")
        lines.append(f"| {s['batch']} | {s['k']} | {s['n']} | {s['gather'] * 1e3:.3g} | {s['dense'] * 1e3:.3g} | "
                     f"{b['model_gather'] * 1e3:.3g} | {b['model_dense'] * 1e3:.3g} | {show(a)} | {show(b)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    backend = args.backend or resolve(device, "bank_contrast", "auto")
    bank_dtype = getattr(torch, args.bank_dtype)
    grid = list(itertools.product(args.batch, args.k, args.n))
    shapes = []
    for i, (batch, k, n) in enumerate(grid):
        times = time_strategies(device, backend, batch, k, n, args.dim, bank_dtype, Budget())
        shapes.append({"batch": batch, "k": k, "n": n, **times})
        print(f"[{i + 1}/{len(grid)}] B={batch} K={k} N={n}: gather {times['gather'] * 1e3:.3g} ms, "
              f"dense {times['dense'] * 1e3:.3g} ms", file=sys.stderr)
    current = rates_for(device)
    fitted, shared_cost = fit_rates(shapes, args.dim, bank_dtype, backend, current)
    now = picks(shapes, args.dim, bank_dtype, device, backend, current)
    then = picks(shapes, args.dim, bank_dtype, device, backend, fitted, shared_cost)
    print(format_report(shapes, now, then))
    for name, p in (("current", now), ("fitted", then)):
        wrong = [q["cost_of_pick"] for q in p if q["cost_of_pick"] >= 1.005]
        print(f"{name} constants: {len(p) - len(wrong)} of {len(p)} shapes get the faster strategy"
              + (f"; the others lose up to {max(wrong):.2f}x" if wrong else ""))
    print(f"fitted: {fitted!r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"schema": SCHEMA, "device": device_info(device), "versions": versions(), "backend": backend,
                  "dim": args.dim, "bank_dtype": args.bank_dtype, "shapes": shapes,
                  "current": {"rates": dataclasses.asdict(current), "picks": now},
                  "fitted": {"rates": dataclasses.asdict(fitted), "shared_cost_s": shared_cost, "picks": then}}
        args.json.write_text(json.dumps(record, indent=2))
        print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
