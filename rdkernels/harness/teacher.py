"""The teacher of a distillation: its weights from a checkpoint (the harness's own,
a bare state_dict, or RepDistiller's), or, for timing runs without one, a random
teacher whose BatchNorm statistics are set from the data."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from rdkernels.harness import data as hdata
from rdkernels.harness.models import MODELS, build_model
from rdkernels.harness.run_files import read_checkpoint

# RepDistiller's wrn.py: WideResNet.blockN is a NetworkBlock holding its blocks in
# `.layer` (an nn.Sequential), and a block's 1x1 projection is `convShortcut`; the
# harness's stages are the nn.Sequential itself and the projection is `shortcut`.
# bn1/conv1/bn2/conv2 and the top-level conv1/bn1/fc have the same names (relu1,
# relu2, relu hold no parameters). RepDistiller's ResNet keys already match.
_REPDISTILLER_WRN_KEYS = ((re.compile(r"^(block\d+)\.layer\.(\d+)\."), r"\1.\2."),
                          (re.compile(r"\.convShortcut\.(weight|bias)$"), r".shortcut.\1"))


def _from_repdistiller_names(state: dict) -> dict:
    """``state`` with RepDistiller's WRN key names renamed to the harness's (other keys unchanged)."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _REPDISTILLER_WRN_KEYS:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


# images whose activations set a random teacher's BatchNorm statistics
TEACHER_CALIBRATION_IMAGES = 512


def calibrate_random_teacher_(teacher: torch.nn.Module, train_set: hdata.ImageSet, batch_size: int,
                              device: torch.device) -> None:
    """Set a randomly initialised teacher's BatchNorm running statistics from the
    first TEACHER_CALIBRATION_IMAGES training images (unaugmented; torch's
    ``update_bn``: a cumulative average over the batches, in train mode, no grad).

    At initialisation those statistics are mean 0, variance 1, while the
    activations they normalise in eval mode grow layer by layer: a random
    resnet32x4's logits have a standard deviation of ~16 and resnet56's of ~6 000,
    so the teacher's softmax is one-hot on arbitrary classes and a KD student
    copying it drives its cross-entropy from 4.6 to ~20 within a few steps. With
    statistics of the data it sees, the random teacher's predictions are soft and
    the KD-only run's curves mean something. Deterministic: fixed images, no
    random draws (the run's random streams are untouched); a checkpointed run
    resumes with the teacher it saved."""
    images = train_set.images[:TEACHER_CALIBRATION_IMAGES]
    batches = [hdata.augment(images[i:i + batch_size].to(device), train=False)
               for i in range(0, images.shape[0], batch_size)]
    torch.optim.swa_utils.update_bn(batches, teacher)


def load_teacher_weights(model: torch.nn.Module, path: str, arch: str) -> None:
    """Load a train-teacher checkpoint, a bare state_dict, or RepDistiller's
    {'model': state_dict} (its WRN key names are mapped to the harness's).

    A checkpoint that does not fit ``model`` (another architecture, another number
    of classes) is a ValueError that names the path, ``arch`` and the mismatch.
    """
    ckpt = read_checkpoint(path, "--teacher")
    if isinstance(ckpt, dict) and ckpt.get("arch") not in (None, arch):
        raise ValueError(f"teacher checkpoint {path!r} holds a {ckpt['arch']!r}, but teacher_arch is {arch!r}; "
                         f"pass --teacher-arch {ckpt['arch']}")
    state = _from_repdistiller_names(ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        mismatch = _state_mismatch(model.state_dict(), state) or str(exc).strip().splitlines()[0]
        raise ValueError(f"teacher checkpoint {path!r} does not fit teacher_arch {arch!r}: {mismatch}; "
                         f"{_teacher_arch_hint(path, arch)}") from exc


def _state_mismatch(own: dict, theirs: dict) -> str:
    """How ``theirs`` (a checkpoint's state_dict) differs from ``own`` (the model's), in
    one line: the count of missing, unexpected and reshaped keys, with the first of each."""
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    reshaped = [k for k in own if k in theirs and hasattr(theirs[k], "shape") and theirs[k].shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]!r})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} keys of another shape (first {k!r}: {tuple(theirs[k].shape)} in the checkpoint, "
                     f"{tuple(own[k].shape)} in the model)")
    return ", ".join(parts)


def _arch_from_folder(path: str) -> str | None:
    """The model a checkpoint's folder name says it holds, by RepDistiller's rule
    (get_teacher_name: ``save/models/wrn_40_2_vanilla/ckpt_epoch_240.pth`` holds a
    wrn_40_2, ``.../resnet32x4_vanilla/...`` a resnet32x4), or None if that names no model."""
    segments = Path(path).parent.name.split("_")
    name = "_".join(segments[:3]) if segments[0] == "wrn" else segments[0]
    return name if name in MODELS else None


def _teacher_arch_hint(path: str, arch: str) -> str:
    """What to pass instead: the model the checkpoint's folder names, if another than ``arch``."""
    named = _arch_from_folder(path)
    if named is not None and named != arch:
        return f"its folder name says {named}: pass --teacher-arch {named}"
    return "check --teacher-arch, and that --data has the classes the teacher was trained on"


def build_teacher(cfg, num_classes: int, train_set: hdata.ImageSet, device: torch.device) -> torch.nn.Module:
    """``cfg.teacher_arch`` with ``cfg.teacher``'s weights (or, without a checkpoint, random
    weights and calibrated BatchNorm statistics), on ``device``, in eval mode and frozen."""
    teacher = build_model(cfg.teacher_arch, num_classes)
    if cfg.teacher:
        load_teacher_weights(teacher, cfg.teacher, cfg.teacher_arch)
    teacher.to(device)
    if not cfg.teacher:
        calibrate_random_teacher_(teacher, train_set, cfg.batch_size, device)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
