"""Where a run ran and how it shows itself: the device, its name, the versions and
the command a result records, and the progress bar."""
from __future__ import annotations

import os
import sys

import torch

from rdkernels._environment import cpu_model, versions

__all__ = ["command_line", "device_name", "progress_bar", "resolve_device", "versions"]


def resolve_device(name: str) -> torch.device:
    """'auto' (the current GPU if torch sees one, else the CPU), or 'cpu', 'cuda' or
    'cuda:N' where this process can run on it; anything else is a ValueError that says why."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"device {name!r}: torch sees no CUDA GPU here (torch {torch.__version__}, {build})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0")
    return device


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {cpu_model()} ({os.cpu_count()} cores)"


def command_line() -> str:
    return " ".join(["python", "-m", "rdkernels.harness", *sys.argv[1:]])


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    """A tqdm bar, or None when disabled or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)
