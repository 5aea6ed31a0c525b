"""The issues' speed and memory targets, checked against saved results.

    python -m benchmarks.targets benchmarks/results/<device>/      # every JSON there
    python -m benchmarks.targets quick.json full-cifar.json train_crd_*.json --json targets.json

Reads benchmark records (``python -m benchmarks``), training comparisons
(``python -m rdkernels.harness compare``) and host-or-device records
(``python -m benchmarks.overhead --json``) and prints one row per target: what
it asks, what was measured and where, and whether it is met. A target that
names an H100 or H200 is met only by a measurement on one; a measurement on
another device is shown but not counted. A target no file measures says which
command measures it, so a short GPU session can see what it still owes.

Each op-level speed target is judged twice. Once on the suite's times: an
eager call, the host's launch work included (at these sizes most calls are
bound by it, the fused ones and the references alike). And once, in a row
marked "[kernel time]", on the overhead tool's device time per call (the
kernels' own time, by torch.profiler, for every implementation alike, the
references with their host reads included): what the op costs inside a
captured training step, and what faster kernels, not fewer launches, change.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

BENCH_SCHEMA = "rdkernels-bench/1"
OVERHEAD_SCHEMA = "rdkernels-overhead/1"
KERNEL_TIME = " [kernel time]"   # the suffix of a target judged on device time
TARGET_GPUS = ("H100", "H200")
CIFAR = dict(B=64, K=16_384, N=50_000)
IMAGENET = dict(B=256, K=16_384, N=1_281_167)
# One bank_contrast case: the naive and torch:dense rows must come from the same one.
CPU_DENSE_CASE = dict(B=64, K=4096, N=50_000, d=128, dtype="float32", epilogue="nce")


@dataclass
class Measured:
    value: float
    device: str
    source: str
    detail: str = ""
    complete: bool = True  # False: part of what the target covers is unmeasured (or from another device)


class Results:
    """Benchmark rows and training reports from a set of JSON files; ``kernel_rows``:
    the overhead records' rows, with their device time per call as ``time_ms``."""

    def __init__(self, paths: list[Path]):
        self.rows: list[dict] = []
        self.kernel_rows: list[dict] = []
        self.trainings: list[dict] = []
        for path in paths:
            with open(path) as fh:
                record = json.load(fh)
            if not isinstance(record, dict):  # e.g. this tool's own --json output, a list of rows
                continue
            if record.get("schema") == BENCH_SCHEMA:
                device = record["device"]["name"]
                kind = record["device"].get("type")        # "cpu" or "cuda"
                bandwidth = record.get("ceilings", {}).get("bandwidth_gbps")
                self.rows += [dict(row, _device=device, _device_type=kind, _bandwidth_gbps=bandwidth,
                                   _source=path.name, _file=str(path))
                              for row in record["rows"] if row.get("status") == "ok"]
            elif record.get("schema") == OVERHEAD_SCHEMA:
                bandwidth = (record.get("ceilings") or {}).get("bandwidth_gbps")
                self.kernel_rows += [dict(row, time_ms=row["gpu_ms"], _device=record["device"], _device_type="cuda",
                                          _bandwidth_gbps=bandwidth, _source=path.name, _file=str(path))
                                     for row in record["rows"] if row.get("gpu_ms") and "params" in row]
            elif "speedup_fused_vs_reference" in record and "runs" in record:
                self.trainings.append(dict(record, _source=path.name))

    def in_kernel_time(self) -> Results:
        """These results with the overhead records' rows as the benchmark rows."""
        view = Results([])
        view.rows = self.kernel_rows
        return view

    def rows_for(self, op: str, mode: str, impls: Callable[[str], bool], **params) -> list[dict]:
        return [r for r in self.rows if r["op"] == op and r["mode"] == mode and impls(r["impl"])
                and all(r["params"].get(k) == v for k, v in params.items())]


def on_target_gpu(device: str) -> bool:
    return any(name in device for name in TARGET_GPUS)


def fused(impl: str) -> bool:
    """The kernel backends (either strategy): what the targets measure."""
    return impl.split(":")[0] in ("triton", "cuda")


def torch_backend(impl: str) -> bool:
    """The torch backend, whatever its strategy ("torch", "torch:gather", ...)."""
    return impl.split(":")[0] == "torch"


def named(*names: str) -> Callable[[str], bool]:
    return lambda impl: impl in names


def on_cpu(row: dict) -> bool:
    return row["_device_type"] == "cpu"


def _fastest(rows: list[dict]) -> dict | None:
    return min(rows, key=lambda r: r["time_ms"], default=None)


def _pairs_by_file(results: Results, op: str, mode: str, over: Callable[[str], bool], params: dict,
                   under: Callable[[str], bool], where: Callable[[dict], bool]) -> list[tuple[dict, dict]]:
    """(fastest ``over`` row, fastest ``under`` row) of each file that has both.

    A file is one run of one commit on one device: rows from different files
    are never compared, as another commit or another machine's load would be
    in the ratio."""
    pairs = []
    candidates = [r for r in results.rows_for(op, mode, lambda impl: True, **params) if where(r)]
    for file in dict.fromkeys(r["_file"] for r in candidates):   # by path: folders share file names
        rows = [r for r in candidates if r["_file"] == file]
        base = _fastest([r for r in rows if over(r["impl"])])
        top = _fastest([r for r in rows if under(r["impl"])])
        if base is not None and top is not None:
            pairs.append((base, top))
    return pairs


def _ratio(results: Results, op: str, mode: str, over: Callable[[str], bool], params: dict,
           under: Callable[[str], bool] = fused, where: Callable[[dict], bool] = lambda r: True) -> Measured | None:
    """time(fastest ``over``) / time(fastest ``under``) within one file; the best
    such ratio over the files, preferring a target GPU's."""
    pairs = _pairs_by_file(results, op, mode, over, params, under, where)
    if not pairs:
        return None
    base, top = min(pairs, key=lambda bt: (not on_target_gpu(bt[1]["_device"]),
                                           -bt[0]["time_ms"] / bt[1]["time_ms"]))
    return Measured(base["time_ms"] / top["time_ms"], top["_device"], top["_source"],
                    f"{base['impl']} {base['time_ms']:.3g} ms / {top['impl']} {top['time_ms']:.3g} ms")


def _bytes_floor_ms(row: dict) -> float | None:
    """The time to move the row's bytes at its run's measured copy bandwidth."""
    if not row.get("floor_bytes") or not row.get("_bandwidth_gbps"):
        return None
    return row["floor_bytes"] / (row["_bandwidth_gbps"] * 1e9) * 1e3


def _floor_fraction(results: Results, params: dict) -> Measured | None:
    """time / bytes floor of the fastest fused row (a target GPU's first)."""
    rows = [r for r in results.rows_for("crd_step", "fwd+bwd", fused, **params) if _bytes_floor_ms(r)]
    top = min(rows, key=lambda r: (not on_target_gpu(r["_device"]), r["time_ms"]), default=None)
    if top is None:
        return None
    floor_ms = _bytes_floor_ms(top)
    return Measured(top["time_ms"] / floor_ms, top["_device"], top["_source"],
                    f"{top['impl']} {top['time_ms']:.3g} ms, bytes floor {floor_ms:.3g} ms "
                    f"({top['floor_bytes'] / 2**20:.3g} MiB at {top['_bandwidth_gbps']:.3g} GB/s)")


def _memory_fraction(results: Results, params: dict) -> Measured | None:
    """peak(fastest fused row) / peak(naive row) within one file; the smallest
    such fraction over the files, preferring a target GPU's."""
    pairs = _pairs_by_file(results, "crd_step", "fwd+bwd", named("naive"), params, fused,
                           where=lambda r: bool(r.get("peak_mem_bytes")))
    if not pairs:
        return None
    base, top = min(pairs, key=lambda bt: (not on_target_gpu(bt[1]["_device"]),
                                           bt[1]["peak_mem_bytes"] / bt[0]["peak_mem_bytes"]))
    return Measured(top["peak_mem_bytes"] / base["peak_mem_bytes"], top["_device"], top["_source"],
                    f"{top['impl']} {top['peak_mem_bytes'] / 2**20:.3g} MiB / naive "
                    f"{base['peak_mem_bytes'] / 2**20:.3g} MiB")


DCD_BATCHES = (64, 128, 256, 512, 1024)


def _dcd_worst(results: Results) -> Measured | None:
    """The smallest speed-up over B = 64 ... 1024 (float32), naming the B not measured
    (``complete`` False then: the target holds at every B, so it cannot be met on some)."""
    found = {b: _ratio(results, "dcd", "fwd+bwd", named("naive"), dict(B=b, dtype="float32"))
             for b in DCD_BATCHES}
    measured = {b: m for b, m in found.items() if m is not None}
    if not measured:
        return None
    b, worst = min(measured.items(), key=lambda bm: bm[1].value)
    missing = [b for b in found if b not in measured]
    devices = sorted({m.device for m in measured.values()})
    detail = f"B = {missing} not measured" if missing else f"lowest at B = {b}: {worst.detail}"
    if len(devices) > 1:
        detail += f"; from {', '.join(devices)}"
    return Measured(worst.value, worst.device, worst.source, detail, complete=not missing and len(devices) == 1)


def _training(results: Results, key: Callable[[dict], float | None], best: Callable,
              versus_reference: bool = False) -> Measured | None:
    """A training comparison's figure, over the reports of the issue's configuration."""
    reports = [r for r in results.trainings if _issue_training_config(r["config"])]
    values = [(key(r), r) for r in reports if key(r) is not None]
    if not values:
        return None
    on_gpu = [(v, r) for v, r in values if on_target_gpu(r["device"])]
    values = on_gpu or values  # a target GPU's runs, where there are any
    value, report = best(values, key=lambda vr: vr[0])
    cfg = report["config"]
    how = ("CUDA graphs" if cfg.get("cuda_graph") else "eager") + (", AMP" if cfg.get("amp") else "")
    if versus_reference and cfg.get("cuda_graph") and (report["runs"].get("reference") or {}).get("eager_because"):
        how += " (the reference eager: its step cannot be captured)"
    return Measured(value, report["device"], report["_source"], how)


def _rounding_ratio(report: dict) -> float | None:
    """compare's largest reference/fused loss difference over its rounding control's
    spread, from a run of at least 200 steps."""
    return report.get("loss_diff_vs_rounding") if report.get("steps", 0) >= 200 else None


def _issue_training_config(cfg: dict) -> bool:
    """resnet32x4 -> resnet8x4, batch 64, K = 16384, N = 50 000 (CIFAR-100, or its synthetic stand-in)."""
    return (cfg.get("distill") == "crd" and cfg.get("arch") == "resnet8x4" and cfg.get("teacher_arch") == "resnet32x4"
            and cfg.get("batch_size") == 64 and cfg.get("loss", {}).get("nce_k") == 16_384
            and (cfg.get("data") is not None or cfg.get("synthetic_n") == 50_000))


@dataclass
class Target:
    issue: int
    text: str
    measure: Callable[[Results], Measured | None]
    met: Callable[[float], bool]
    unit: str            # how the value reads: "x" (a ratio) or "%" (a fraction)
    how: str             # the command that measures it
    needs_gpu: bool = True
    kernel_time: str | None = None   # the overhead tool's arguments that measure it in kernel time


def _bench(args: str) -> str:
    return f"python -m benchmarks {args}"


_CIFAR_STEP = "--op crd_step --preset cifar"
_TRAIN = "python -m rdkernels.harness compare --distill crd --steps 200 --warmup 20 --no-index-checks --cuda-graph"

TARGETS = [
    Target(3, "CIFAR CRD step (both directions + bank update, fwd+bwd) >= 50x the RepDistiller formulation",
           lambda r: _ratio(r, "crd_step", "fwd+bwd", named("naive"), CIFAR), lambda v: v >= 50, "x",
           _bench("--preset cifar"), kernel_time=_CIFAR_STEP),
    Target(3, "CIFAR CRD step >= 2x the best pure-PyTorch formulation (torch backend, fastest strategy)",
           lambda r: _ratio(r, "crd_step", "fwd+bwd", torch_backend, CIFAR), lambda v: v >= 2, "x",
           _bench("--preset cifar"), kernel_time=_CIFAR_STEP),
    Target(3, "CIFAR CRD step within 2x of its bytes floor (bytes that must move / measured bandwidth)",
           lambda r: _floor_fraction(r, CIFAR), lambda v: v <= 2, "x floor", _bench("--preset cifar"),
           kernel_time=_CIFAR_STEP),
    Target(3, "ImageNet CRD step >= 20x the RepDistiller formulation",
           lambda r: _ratio(r, "crd_step", "fwd+bwd", named("naive"), IMAGENET), lambda v: v >= 20, "x",
           _bench("--preset imagenet"), kernel_time="--op crd_step --preset imagenet"),
    Target(3, "CIFAR CRD step: extra device memory <= 1% of the RepDistiller formulation's",
           lambda r: _memory_fraction(r, CIFAR), lambda v: v <= 0.01, "%", _bench("--preset cifar")),
    Target(3, "CPU: torch backend, dense strategy >= 3x the RepDistiller formulation (B=64, K=4096, N=50000)",
           lambda r: _ratio(r, "bank_contrast", "fwd+bwd", named("naive"), CPU_DENSE_CASE,
                            under=named("torch:dense"), where=on_cpu),
           lambda v: v >= 3, "x", _bench("--quick --op bank_contrast --device cpu"), needs_gpu=False),
    Target(4, "Sinkhorn, 64 problems of 128x128, 100 iterations: >= 30x a torch loop of logsumexp updates",
           lambda r: _ratio(r, "sinkhorn", "fwd", named("naive"), dict(P=64, n=128, m=128, iters=100)),
           lambda v: v >= 30, "x", _bench("--quick --op sinkhorn"),
           kernel_time="--op sinkhorn --forward-only"),
    Target(4, "Sinkhorn, same: >= 10x POT's log-domain Sinkhorn",
           lambda r: _ratio(r, "sinkhorn", "fwd", named("pot"), dict(P=64, n=128, m=128, iters=100)),
           lambda v: v >= 10, "x", _bench("--quick --op sinkhorn") + " (POT installed)"),
    Target(4, "Sinkhorn, same: >= 10x geomloss at equal iterations",
           lambda r: _ratio(r, "sinkhorn", "fwd", named("geomloss-fixed"), dict(P=64, n=128, m=128, iters=100)),
           lambda v: v >= 10, "x", _bench("--quick --op sinkhorn") + " (geomloss installed)"),
    Target(5, "RRD shared-bank contrast, B=64 N=16384 d=128, fwd+bwd: >= 5x the reference formulation",
           lambda r: _ratio(r, "shared_bank_contrast", "fwd+bwd", named("naive"),
                            dict(B=64, N=16_384, d=128, dtype="float32")),
           lambda v: v >= 5, "x", _bench("--quick --op shared_bank_contrast"),
           kernel_time="--op shared_bank_contrast"),
    Target(5, "DCD, B = 64 ... 1024, fwd+bwd: >= 3x the reference formulation at every B",
           _dcd_worst, lambda v: v >= 3, "x", _bench("--op dcd"), kernel_time="--op dcd --size full"),
    Target(7, "Training: fused CRD step <= 1.10x the KD-only step",
           lambda r: _training(r, lambda t: t["runs"]["fused"].get("step_ratio_vs_kd"), min),
           lambda v: v <= 1.10, "x KD", _TRAIN),
    Target(7, "Training: fused CRD step >= 2x faster than the reference CRD step",
           lambda r: _training(r, lambda t: t.get("speedup_fused_vs_reference"), max, versus_reference=True),
           lambda v: v >= 2, "x", _TRAIN),
    # "Agree to float tolerance" over 200 steps, read as: the curves differ no more than float
    # rounding alone makes a training's curve move (compare's rounding control: the fused run
    # with its initial student weights one ulp up, and one ulp down); 2x leaves room for the
    # maximum of a chaotic difference over one run, which varies from run to run.
    Target(7, "Training: reference and fused loss curves agree to float tolerance over 200 steps (largest "
              "difference <= 2x the spread of 1-ulp nudges of the initial weights)",
           lambda r: _training(r, _rounding_ratio, min), lambda v: v <= 2, "x spread", _TRAIN),
]


def _in_kernel_time(t: Target) -> Target:
    """``t`` judged on the overhead records' device time per call."""
    return replace(t, text=t.text + KERNEL_TIME, measure=lambda r: t.measure(r.in_kernel_time()),
                   how=f"python -m benchmarks.overhead {t.kernel_time} --json overhead.json", kernel_time=None)


# each target, then its kernel-time twin where it has one
TARGETS = [twin for t in TARGETS for twin in ([t, _in_kernel_time(t)] if t.kernel_time else [t])]


def evaluate(results: Results) -> list[dict]:
    """One dict per target: issue, target, value (or None), status, device, source, detail."""
    out = []
    for t in TARGETS:
        m = t.measure(results)
        if m is None:
            status, row = "not measured", dict(value=None, device=None, source=None, detail=f"run: {t.how}")
        else:
            row = dict(value=m.value, device=m.device, source=m.source, detail=m.detail)
            if t.needs_gpu and not on_target_gpu(m.device):
                status = "off-target device"
            elif not t.met(m.value):
                status = "not met"
            else:  # met where measured; a target over several cases is met only on all of them
                status = "met" if m.complete else "incomplete"
        out.append(dict(issue=t.issue, target=t.text, unit=t.unit, status=status, **row))
    return out


def _value(row: dict) -> str:
    if row["value"] is None:
        return "-"
    if row["unit"] == "%":
        return f"{100 * row['value']:.2f}%"
    return f"{row['value']:.3g}{row['unit']}"


def format_table(rows: list[dict]) -> str:
    lines = ["| issue | target | measured | status | where |", "|---|---|---:|---|---|"]
    for r in rows:
        where = f"{r['device']}, {r['source']}; {r['detail']}" if r["device"] else r["detail"]
        lines.append(f"| #{r['issue']} | {r['target']} | {_value(r)} | {r['status']} | {where} |")
    return "\n".join(lines)


def _json_files(paths: list[Path]) -> list[Path]:
    files = []
    for p in paths:
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    return files


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.targets", description=__doc__.split("\n\n")[2])
    parser.add_argument("paths", nargs="+", type=Path, help="result JSON files, or folders of them")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")
    rows = evaluate(Results(_json_files(args.paths)))
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
