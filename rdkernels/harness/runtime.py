"""Where a run ran and how it shows itself: the device, its name, the versions and
the command a result records, and the progress bar."""
from __future__ import annotations

import os
import sys

import torch

from rdkernels._environment import cpu_model, resolve_device, versions

__all__ = ["command_line", "device_name", "progress_bar", "resolve_device", "versions"]


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
