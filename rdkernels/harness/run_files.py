"""The run folder's CSV logs: log.csv (a row per step) and eval.csv (a row per
evaluation), appended as the run goes and cut back to a checkpoint's step when a
run resumes from it, so that no row appears twice."""
from __future__ import annotations

import csv
from pathlib import Path

EVAL_HEADER = "epoch,step,acc,loss"


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows past ``step`` (a fresh run: all; a resumed run: those after its checkpoint)."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(r for r in rows if int(r["step"]) <= step)


def truncate_eval(path: Path, step: int) -> None:
    """Drop eval.csv rows past ``step`` (as :func:`truncate_log`); the header is
    written once, and added to a file from before it had one."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = [line for line in lines if line != EVAL_HEADER and int(line.split(",")[1]) <= step]
    path.write_text("".join(f"{line}\n" for line in [EVAL_HEADER, *rows]))


def append_log_rows(path: Path, rows: list[dict]) -> None:
    """Append step rows to log.csv, with the header if the file is new."""
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def append_eval_row(path: Path, epoch: int, step: int, result: dict) -> None:
    """Append one evaluation (``result``'s acc and loss) to eval.csv, with the header if the file is new."""
    new = not path.exists()
    with open(path, "a") as fh:
        if new:
            fh.write(EVAL_HEADER + "\n")
        fh.write(f"{epoch},{step},{result['acc']:.4f},{result['loss']:.6f}\n")
