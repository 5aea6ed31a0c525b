"""Output: the table on screen, the JSON record, the PNG plots."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import torch

from benchmarks.suite import Row
from rdkernels import _environment
from rdkernels._environment import cpu_model

SCHEMA = "rdkernels-bench/1"
MODES = ("fwd", "bwd", "fwd+bwd")


# --- environment ----------------------------------------------------------------------

def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        info = dict(type="cuda", name=name, capability=f"{props.major}.{props.minor}",
                    memory_bytes=props.total_memory, multiprocessors=props.multi_processor_count,
                    l2_cache_bytes=getattr(props, "L2_cache_size", None))
    else:
        name = cpu_model()
        info = dict(type="cpu", name=name, threads=torch.get_num_threads(), cores=os.cpu_count())
        try:
            info["load_average_1min"] = round(os.getloadavg()[0], 2)
        except OSError:
            pass
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if device.type == "cpu":
        slug = f"cpu-{slug}-{os.cpu_count()}c"
    info["slug"] = slug[:80]
    return info


def versions() -> dict:
    out = {"platform": platform.platform(), **_environment.versions("rdkernels", "ot", "geomloss")}
    out["git_commit"] = git_commit(Path(__file__).resolve().parent.parent)
    return out


def git_commit(root: Path) -> str | None:
    """HEAD's commit, or None where ``root`` has none (not a repository, or a copy of
    the tree in a fresh one): ``git rev-parse HEAD`` there prints "HEAD" and fails,
    which a record must not take for a commit."""
    try:
        done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD^{commit}"], cwd=root,
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def command_line(module: str = "benchmarks") -> str:
    """The command that ran ``python -m <module>``, as it would be typed again."""
    return " ".join(["python", "-m", module, *sys.argv[1:]])


# --- table ----------------------------------------------------------------------------

def _fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 1000 else f"{v:.0f}"


def _collect(rows: list[Row]):
    """OrderedDict (op, case) -> OrderedDict impl -> {mode: Row}."""
    table: OrderedDict = OrderedDict()
    for r in rows:
        table.setdefault((r.op, r.case), OrderedDict()).setdefault(r.impl, {})[r.mode] = r
    return table


def format_table(rows: list[Row], show_unavailable: bool = False) -> str:
    """Markdown table, one line per (case, implementation); implementations
    that cannot run here are listed once below it (all are in the JSON)."""
    head = ("| op | case | impl | fwd ms | bwd ms | fwd+bwd ms | vs naive | % of floor | peak MiB | note |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    lines = [head]
    missing: OrderedDict = OrderedDict()
    for (op, case), impls in _collect(rows).items():
        for impl, modes in impls.items():
            main = modes.get("fwd+bwd") or modes.get("fwd")
            first = next(iter(modes.values()))
            if first.status == "unavailable" and not show_unavailable:
                missing.setdefault((op, impl, first.reason), None)
                continue
            if first.status != "ok":
                label = {"wrong": "WRONG", "error": "ERROR", "unavailable": "unavailable"}[first.status]
                lines.append(f"| {op} | {case} | {impl} | - | - | - | - | - | - | {label}: {first.reason} |")
                continue
            times = [_fmt_ms(modes[m].time_ms) if m in modes else "n/a" for m in MODES]
            speed = f"{main.speedup_vs_naive:.2f}x" if main.speedup_vs_naive else "-"
            frac = f"{100 * main.frac_of_floor:.1f}%" if main.frac_of_floor else "-"
            peak = f"{main.peak_mem_bytes / 2**20:.1f}" if main.peak_mem_bytes is not None else "-"
            lines.append(f"| {op} | {case} | {impl} | {' | '.join(times)} | {speed} | {frac} | {peak} | {main.reason} |")
    lines.append("")
    lines.append("vs naive and % of floor are for fwd+bwd (fwd where the op has no backward); "
                 "% of floor = floor / time, floor = max(bytes / copy bandwidth, flops / matmul rate); "
                 "peak MiB: device memory allocated beyond the inputs (CUDA only).")
    if missing:
        by_reason: OrderedDict = OrderedDict()
        for op, impl, reason in missing:
            by_reason.setdefault(reason, OrderedDict()).setdefault(impl, None)
        lines.append("")
        for reason, impls in by_reason.items():
            lines.append(f"- not run: {', '.join(impls)}: {reason}")
    return "\n".join(lines)


def rows_from_record(record: dict) -> list[Row]:
    fields = set(Row.__dataclass_fields__)
    return [Row(**{k: v for k, v in r.items() if k in fields}) for r in record["rows"]]


# --- JSON -----------------------------------------------------------------------------

def build_record(rows, *, device, ceilings, skipped, args, started, elapsed_s) -> dict:
    return {
        "schema": SCHEMA,
        "device": device_info(device),
        "versions": versions(),
        "command": command_line(),
        "args": args,
        "started_utc": started,
        "elapsed_s": round(elapsed_s, 2),
        "ceilings": ceilings.to_json(),
        "timing": ("CUDA events, median, L2 flushed before each run" if device.type == "cuda"
                   else "torch.utils.benchmark blocked_autorange, median"),
        "skipped_ops": skipped,
        "rows": [r.to_json() for r in rows],
    }


def write_json(record: dict, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- plots ----------------------------------------------------------------------------

def write_plots(rows: list[Row], ops, out_dir: Path, name: str, device_name: str) -> list[Path]:
    """One PNG per op: three panels against the op's sweep variable -- time,
    speed-up over naive, fraction of the floor (fwd+bwd, or fwd if the op has
    no backward) -- one line per implementation, one row of panels per
    configuration of the other parameters."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for op in ops:
        mode = "fwd+bwd" if op.differentiable else "fwd"
        ok = [r for r in rows if r.op == op.name and r.mode == mode and r.status == "ok"]
        if not ok:
            continue
        values = OrderedDict()
        for r in ok:
            for k, v in r.params.items():
                if k not in op.plot_ignore:
                    values.setdefault(k, set()).add(v)
        varying = [k for k, vs in values.items() if len(vs) > 1]
        # The op's sweep variable, or, where a run holds it fixed, the first
        # numeric parameter that does vary.
        x = op.x_param
        if x not in varying:
            x = next((k for k in varying if all(isinstance(v, (int, float)) for v in values[k])), x)
        groups: OrderedDict = OrderedDict()
        for r in ok:
            rest = ", ".join(f"{k}={r.params[k]}" for k in varying if k != x)
            groups.setdefault(rest, OrderedDict()).setdefault(r.impl, []).append(r)
        impls = list(OrderedDict.fromkeys(r.impl for r in ok))
        colours = {impl: f"C{i % 10}" for i, impl in enumerate(impls)}
        numeric_x = all(isinstance(r.params.get(x), (int, float)) for r in ok)

        fig, axes = plt.subplots(len(groups), 3, figsize=(16, 3.6 * len(groups) + 0.6), squeeze=False)
        panels = [("time_ms", f"{mode} time (ms)", True), ("speedup_vs_naive", "speed-up over naive (x)", True),
                  ("frac_of_floor", "fraction of the floor", False)]
        for row_axes, (rest, by_impl) in zip(axes, groups.items()):
            for ax, (field, ylabel, logy) in zip(row_axes, panels):
                for impl, rs in by_impl.items():
                    rs = sorted(rs, key=lambda r: r.params.get(x, 0))
                    ys = [getattr(r, field) for r in rs]
                    if any(y is None for y in ys):
                        continue
                    ax.plot([r.params.get(x) for r in rs], ys, marker="o", color=colours[impl], label=impl)
                ax.set_xlabel(x)
                ax.set_ylabel(ylabel)
                if numeric_x:
                    ax.set_xscale("log", base=2)
                if logy:
                    ax.set_yscale("log")
                ax.grid(True, which="both", alpha=0.3)
            row_axes[0].legend(fontsize=8)
            if rest:
                row_axes[1].set_title(rest, fontsize=9)
        fixed = ", ".join(f"{k}={next(iter(vs))}" for k, vs in values.items() if len(vs) == 1 and k != x)
        fig.suptitle(f"{op.name} on {device_name}" + (f" ({fixed})" if fixed else ""))
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
        # "-<op>" unless the run's name ends with it already, as a whole word: an op's name
        # may end another's (bank_contrast, shared_bank_contrast)
        named = name == op.name or name.endswith(f"-{op.name}")
        path = out_dir / (f"{name}.png" if named else f"{name}-{op.name}.png")
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
