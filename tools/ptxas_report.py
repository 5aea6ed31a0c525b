"""Summarise nvcc's ``-Xptxas -v`` output (from a build log) as a table.

    python tools/ptxas_report.py build.log [--allow-spills]

One row per kernel instantiation and architecture: registers, spill stores and
loads, shared memory. Exits 1 if any kernel spills (unless --allow-spills) or
if the log holds no ptxas report at all (the extension was not compiled).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if not tool:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def parse(text: str) -> list[dict]:
    rows, current = [], None
    for line in text.splitlines():
        if m := ENTRY.search(line):
            current = dict(kernel=m.group(1), arch=m.group(2), regs=None, spill_st=0, spill_ld=0, smem=0)
            rows.append(current)
        elif current is not None and (m := SPILL.search(line)):
            current["spill_st"], current["spill_ld"] = int(m.group(1)), int(m.group(2))
        elif current is not None and (m := USED.search(line)):
            current["regs"] = int(m.group(1))
            current["smem"] = int(m.group(2) or 0)
    return rows


def short(name: str) -> str:
    name = re.sub(r"\(anonymous namespace\)::|rdk::", "", name)
    name = name.replace("__nv_bfloat16", "bf16").replace("__half", "f16")
    return re.sub(r"\(.*\)$", "", name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--allow-spills", action="store_true")
    args = parser.parse_args()
    rows = parse(open(args.log, encoding="utf-8", errors="replace").read())
    if not rows:
        print("no ptxas report found: was the CUDA extension compiled with -Xptxas -v?")
        return 1
    for row, name in zip(rows, demangle([r["kernel"] for r in rows])):
        row["kernel"] = short(name)
    width = max(len(r["kernel"]) for r in rows)
    print(f"{'kernel':<{width}}  arch    regs  spill st/ld  smem")
    for r in rows:
        print(f"{r['kernel']:<{width}}  {r['arch']:<6} {r['regs']!s:>5}  {r['spill_st']:>5}/{r['spill_ld']:<5} {r['smem']:>5}")
    spilling = [r for r in rows if r["spill_st"] or r["spill_ld"]]
    print(f"{len(rows)} kernel builds, {len(spilling)} with spills")
    return 1 if spilling and not args.allow_spills else 0


if __name__ == "__main__":
    sys.exit(main())
