"""The run folder's files: its CSV logs, log.csv (a row per step) and eval.csv (a
row per evaluation), appended as the run goes and cut back to a checkpoint's step
when a run resumes from it, so that no row appears twice; the checkpoints read
back; and the refusal to start a run over another one."""
from __future__ import annotations

import csv
from pathlib import Path

import torch

EVAL_HEADER = "epoch,step,acc,loss"
RUN_FILES = ("last.pt", "log.csv")   # what marks a folder as holding a run


def check_run_folder(out_dir: Path, own_folder: Path | None) -> None:
    """Refuse a run whose folder holds another run: a fresh run would delete its logs
    and overwrite its last.pt, a resumed one would cut its log back to its own step
    and mix in its rows. ``own_folder``: the run's own (its checkpoint's, or where it
    has written already), which it may go on in."""
    held = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not held or (own_folder is not None and own_folder.resolve() == out_dir.resolve()):
        return
    fix = "give another --out or delete the folder"
    if own_folder is None:
        fix = f"continue it with --resume {out_dir / 'last.pt'}, or {fix}"
    raise FileExistsError(f"--out {out_dir} already holds a run ({', '.join(held)}) that this run would overwrite; "
                          f"{fix}")


def read_checkpoint(path, option: str):
    """``torch.load`` of a checkpoint named by ``option`` (--resume, --teacher), with
    an error that names the option and the file for a path that is missing, a folder,
    or no file torch.load can read (another format, a truncated copy)."""
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder, not a checkpoint file (a run folder's is last.pt)")
    if not file.is_file():
        raise FileNotFoundError(f"{option} {str(path)!r} not found")
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:   # unpickling errors come as many types; none is the caller's to handle
        raise ValueError(f"{option} {str(path)!r} is not a checkpoint torch.load can read "
                         f"({type(exc).__name__}: {exc})") from exc


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
