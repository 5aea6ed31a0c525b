"""``python -m rdkernels``: what this install can run, for a bug report or a first check.

Prints the versions rdkernels runs with, the backend asked for, whether the CUDA
extension is built, and for each device and op the backend ``auto`` picks and
why each other backend cannot run there. Imports no kernel module and launches
nothing, so it is quick and safe on any machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

import rdkernels
from rdkernels import backend
from rdkernels._environment import cpu_model, module_version

# The ops as the backend resolver names them (the CUDA extension's function names).
OPS = ("bank_contrast", "bank_update", "shared_bank_contrast", "dcd_loss", "sinkhorn")
# The ops with a Triton kernel and no CUDA one (backend.resolve_triton_only): their
# cuda backend runs Triton's kernel on a GPU.
TRITON_ONLY_OPS = ("l2_normalize", "fifo_enqueue_", "kd_loss")


def _backend_asked_for() -> str:
    try:
        return backend.get_backend()
    except ValueError as exc:  # a misspelt RDKERNELS_BACKEND: every op call would raise this
        return f"invalid: {exc}"


def _devices() -> list[dict]:
    devices = [{"device": "cpu", "name": f"{cpu_model()}, {os.cpu_count()} cores"}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"device": f"cuda:{i}", "name": props.name,
                            "capability": f"sm_{props.major}{props.minor}",
                            "memory_gib": round(props.total_memory / 2**30, 1)})
    return devices


def _backends(device: torch.device, op: str) -> dict:
    """auto's choice for ``op`` on ``device``, and why each other backend cannot run it."""
    triton = backend.triton_unavailable_reason(device)
    if op in TRITON_ONLY_OPS:
        auto = backend.resolve_triton_only(device, op, "auto")
        cuda = None if auto == "triton" else (
            backend.cuda_device_reason(device) or f"it has no CUDA kernel and runs Triton's, and {triton}")
    else:
        auto, cuda = backend.resolve(device, op, "auto"), backend.cuda_unavailable_reason(device, op)
    unavailable = {"triton": triton, "cuda": cuda}
    return {"auto": auto, "unavailable": {name: why for name, why in unavailable.items() if why}}


def collect() -> dict:
    """The report as a dict (what ``--json`` prints)."""
    extension, why_not = backend._cuda_extension()
    report = {
        "rdkernels": {"version": rdkernels.__version__, "path": os.path.dirname(rdkernels.__file__)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torch_cuda": torch.version.cuda, "triton": module_version("triton"),
                     "numpy": module_version("numpy")},
        "backend_asked_for": _backend_asked_for(),
        "environment": {name: os.environ.get(name) for name in
                        ("RDKERNELS_BACKEND", "RDKERNELS_CHECK_INDICES", "TRITON_INTERPRET")},
        "cuda_extension": (extension.__file__ if extension is not None else None),
        "cuda_extension_archs": [f"sm_{arch // 10}" for arch in getattr(extension, "compiled_archs", list)()],
        "cuda_extension_missing": why_not,
        "devices": _devices(),
    }
    for entry in report["devices"]:
        device = torch.device(entry["device"])
        entry["ops"] = {op: _backends(device, op) for op in OPS + TRITON_ONLY_OPS}
    return report


def _print(report: dict) -> None:
    rd = report["rdkernels"]
    print(f"rdkernels {rd['version']} ({rd['path']})")
    print("  " + ", ".join(f"{k} {v if v is not None else '-'}" for k, v in report["versions"].items()))
    env = ", ".join(f"{k}={v}" for k, v in report["environment"].items() if v is not None) or "none set"
    print(f"  backend asked for: {report['backend_asked_for']} (environment: {env})")
    if report["cuda_extension"]:
        archs = ", ".join(report["cuda_extension_archs"]) or "unknown"
        print(f"  CUDA extension: {report['cuda_extension']} (built for {archs})")
    else:
        print(f"  CUDA extension: not available: {report['cuda_extension_missing']}")
    for entry in report["devices"]:
        details = [entry.get("capability"), f"{entry['memory_gib']} GiB" if "memory_gib" in entry else None]
        details = ", ".join(d for d in details if d)
        print(f"\n{entry['device']}: {entry['name']}" + (f" ({details})" if details else ""))
        ops = entry["ops"]
        print("  auto: " + ", ".join(f"{op} -> {choice['auto']}" for op, choice in ops.items()))
        # one line per backend and reason: the reason is usually the same for every op
        for name in ("cuda", "triton"):
            by_reason: dict[str, list[str]] = {}
            for op, choice in ops.items():
                if name in choice["unavailable"]:
                    by_reason.setdefault(choice["unavailable"][name], []).append(op)
            for why, which in by_reason.items():
                scope = "" if len(which) == len(ops) else f" ({', '.join(which)})"
                print(f"  no {name}{scope}: {why}")
    print("\nauto's choices are for plain inputs: a call past a kernel's limits (width, batch) "
          "falls back as the README's limits table says.")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rdkernels", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = collect()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        _print(report)
    return 2 if report["backend_asked_for"].startswith("invalid") else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # piped into head: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
