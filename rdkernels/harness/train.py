"""Training loops: teacher training and student distillation, with the
reference's SGD schedule, optional AMP, CSV/JSON logs, checkpoints and exact resume.

A run is described by a :class:`TrainConfig`; :class:`Trainer` owns the models,
criterion, optimiser and every random stream, so ``Trainer.load_checkpoint``
followed by ``run`` continues a run bit for bit (same losses, same parameters).

Random streams: the batch order and the worker-side sampling seeds are pure
functions of (seed, epoch) (:func:`rdkernels.harness.data.epoch_order`);
augmentation and device-side contrast sampling draw from one generator on the
training device; the losses' own sampling draws from torch's global RNG. All
generator states go into the checkpoint.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import contextlib
import os
import random
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from rdkernels.backend import BACKENDS, cuda_index
from rdkernels.harness import data as hdata
from rdkernels.harness.distillers import (DEFAULT_WEIGHTS, DISTILLERS, IMPLS, REFERENCE_GAMMA, LossOptions,
                                         build_distiller)
from rdkernels.harness.graphs import GraphedStep
from rdkernels.harness.models import MODELS, build_model

SAMPLINGS = ("device", "workers", "loss")

# Options that say how a run executes, not what it computes: a resumed run may
# change them. Every other option is the training recipe, which a resume keeps.
RUN_OPTIONS = ("epochs", "max_steps", "out", "device", "backend", "progress", "log_every", "save_every",
               "eval_every_epoch", "workers", "index_checks", "cuda_graph", "graph_warmup", "deterministic")
EVAL_HEADER = "epoch,step,acc,loss"


class ResumeMismatch(ValueError):
    """A resume asked for a training recipe (or a command) other than the checkpoint's."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run (saved in checkpoints and logs)."""

    arch: str = "resnet8x4"                  # the model being trained (student, or the teacher in train-teacher)
    distill: str | None = None               # None: plain CE training (teacher); else one of DISTILLERS
    impl: str = "fused"                      # reference | fused
    teacher_arch: str = "resnet32x4"
    teacher: str | None = None               # teacher checkpoint; None: a randomly initialised teacher (timing only)
    gamma: float | None = None               # -r: CE weight    (None: see weights())
    alpha: float | None = None               # -a: KD weight
    beta: float | None = None                # -b: distiller weight
    loss: LossOptions = dataclasses.field(default_factory=LossOptions)
    mode: str = "exact"                      # contrast sampling: exact | relax
    sampling: str = "device"                 # device | workers (reference: numpy in DataLoader workers) | loss
    workers: int = 8
    data: str | None = None                  # CIFAR-100 python-pickle folder; None: synthetic
    synthetic_n: int = 50_000
    synthetic_test_n: int = 10_000
    num_classes: int = 100
    image_size: int = 32
    batch_size: int = 64
    epochs: int = 240                        # 0: no epoch limit, max_steps alone sets the length
    max_steps: int | None = None             # stop after this many steps in total (benchmarks, tests)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_epochs: tuple[int, ...] = (150, 180, 210)
    lr_decay_rate: float = 0.1
    amp: bool = False
    amp_dtype: str = "bfloat16"              # bfloat16 | float16 (float16 adds a GradScaler)
    device: str = "auto"
    backend: str = "auto"                    # rdkernels backend for --impl fused
    deterministic: bool = False              # cuDNN deterministic algorithms instead of benchmark mode
    index_checks: bool = True                # False: skip the losses' host-synced checks (indices, finiteness, costs)
    cuda_graph: bool = False                 # replay each step from a CUDA graph (see harness/graphs.py)
    graph_warmup: int = 3                    # eager steps before the step is captured
    seed: int = 0
    out: str | None = None                   # run folder: log.csv, eval.csv, summary.json, last.pt (stored absolute)
    log_every: int = 10
    save_every: int | None = None            # steps between checkpoints (also at every epoch end)
    eval_every_epoch: bool = True
    progress: bool = True

    def weights(self) -> tuple[float, float, float]:
        """(gamma, alpha, beta): the CE, KD and distiller weights of the loss.

        With none of them set, the method's weights as the reference scripts run it
        (``DEFAULT_WEIGHTS``). Once alpha or beta is set, an unset gamma is 1.0, the
        default of RepDistiller's ``-r``, so that ``-a 0.9 -b 0`` trains as it does
        there; an unset alpha or beta keeps the method's value.
        """
        g, a, b = DEFAULT_WEIGHTS[self.distill or "none"]
        if self.gamma is None and (self.alpha is not None or self.beta is not None):
            g = REFERENCE_GAMMA
        return (g if self.gamma is None else self.gamma, a if self.alpha is None else self.alpha,
                b if self.beta is None else self.beta)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["loss"] = LossOptions(**d.get("loss", {}))
        d["lr_decay_epochs"] = tuple(d.get("lr_decay_epochs", ()))
        return cls(**d)


# TrainConfig's counts, by the least value each takes (a LossOptions field as "loss.<name>");
# max_steps and save_every may also be None (no step limit, no periodic checkpoint)
_COUNT_MINIMUMS = {"batch_size": 1, "epochs": 0, "max_steps": 1, "workers": 0, "synthetic_n": 1,
                   "synthetic_test_n": 0, "num_classes": 1, "image_size": 1, "graph_warmup": 1, "log_every": 1,
                   "save_every": 1, "loss.feat_dim": 1, "loss.nce_k": 1, "loss.wcord_iters": 1}


def check_counts(cfg: TrainConfig) -> None:
    """Refuse, naming the field, a count below what it can mean (a batch of 0 images,
    a checkpoint every 0 steps), and a run with no length (epochs=0 and no max_steps)."""
    for name, least in _COUNT_MINIMUMS.items():
        owner, field = (cfg.loss, name[5:]) if name.startswith("loss.") else (cfg, name)
        value = getattr(owner, field)
        if value is None and name in ("max_steps", "save_every"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if cfg.epochs == 0 and cfg.max_steps is None:
        raise ValueError("epochs=0 means no epoch limit, so max_steps must set the run's length; "
                         "without it the run would train nothing")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu {model} ({os.cpu_count()} cores)"


def versions() -> dict:
    """Versions that matter for a timing (saved in every summary)."""
    import platform
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "triton": None, "numpy": np.__version__}
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception:
        pass
    try:
        from rdkernels import _C  # noqa: F401
        out["rdkernels_cuda_extension"] = True
    except Exception:
        out["rdkernels_cuda_extension"] = False
    return out


def command_line() -> str:
    return " ".join(["python", "-m", "rdkernels.harness", *sys.argv[1:]])


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The reference's step schedule: x lr_decay_rate after each decay epoch
    (epochs counted from 0 here, from 1 there: ``epoch > 150`` there is ``epoch >= 150`` here)."""
    return cfg.lr * cfg.lr_decay_rate ** sum(epoch >= m for m in cfg.lr_decay_epochs)


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
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
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


class Trainer:
    """One training run: ``Trainer(cfg).run()``; ``load_checkpoint`` to resume."""

    def __init__(self, cfg: TrainConfig, *, train_set: hdata.ImageSet | None = None,
                 test_set: hdata.ImageSet | None = None):
        if cfg.distill is not None and cfg.distill not in DISTILLERS:
            raise ValueError(f"distill must be one of {DISTILLERS} or None, got {cfg.distill!r}")
        if cfg.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {cfg.impl!r}")
        if cfg.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {cfg.sampling!r}")
        if cfg.mode not in hdata.SAMPLING_MODES:
            raise ValueError(f"mode must be one of {hdata.SAMPLING_MODES}, got {cfg.mode!r}")
        if cfg.amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"amp_dtype must be bfloat16 or float16, got {cfg.amp_dtype!r}")
        if cfg.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {cfg.backend!r}")
        check_counts(cfg)
        if cfg.save_every is not None and not cfg.out:
            warnings.warn(f"save_every={cfg.save_every} is ignored: checkpoints go to the run folder, and out is "
                          "not set", stacklevel=2)
        # absolute paths, so that a checkpoint resumed from another folder still finds them
        cfg = dataclasses.replace(cfg, out=_absolute(cfg.out), teacher=_absolute(cfg.teacher), data=_absolute(cfg.data))
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.cuda_graph:
            check_graphable(cfg, self.device)

        if train_set is None:
            train_set, test_set = hdata.load_dataset(
                cfg.data, synthetic_n=cfg.synthetic_n, synthetic_test_n=cfg.synthetic_test_n,
                num_classes=cfg.num_classes, image_size=cfg.image_size, seed=cfg.seed)
        self.train_set, self.test_set = train_set, test_set
        self.num_classes = train_set.num_classes
        self.n_data = len(train_set)
        self.steps_per_epoch = hdata.steps_per_epoch(self.n_data, cfg.batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size {cfg.batch_size} exceeds the {self.n_data} training images")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps) if cfg.epochs else cfg.max_steps

        # Models first, from the run seed, so every impl starts from the same weights.
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.arch, self.num_classes).to(self.device)
        self.teacher = None
        self.criterion = None
        params = list(self.model.parameters())
        if cfg.distill is not None:
            self.teacher = build_model(cfg.teacher_arch, self.num_classes)
            if cfg.teacher:
                load_teacher_weights(self.teacher, cfg.teacher, cfg.teacher_arch)
            self.teacher.to(self.device)
            if not cfg.teacher:
                calibrate_random_teacher_(self.teacher, train_set, cfg.batch_size, self.device)
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.criterion = build_distiller(
                cfg.distill, cfg.impl, s_dim=self.model.feat_dim, t_dim=self.teacher.feat_dim,
                n_data=self.n_data, opt=cfg.loss, seed=cfg.seed + 1).to(self.device)
            # the loss's trainable heads (CRD's embeddings, DCD's tau and bias) train with the student
            params += [p for p in self.criterion.parameters() if p.requires_grad]
            if not cfg.index_checks and hasattr(self.criterion.feature_loss, "check_costs"):
                self.criterion.feature_loss.check_costs = False  # WCoRD: its OT costs are finite by construction
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.amp_dtype = getattr(torch, cfg.amp_dtype)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp and self.amp_dtype == torch.float16 else None

        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(cfg.seed + 2)
        torch.manual_seed(cfg.seed + 3)
        self.step = 0

        self.needs_contrast = self.criterion is not None and self.criterion.needs_contrast_idx
        self.images_dev = None
        self.contrast_sampler = None
        if cfg.sampling != "workers":
            self.images_dev = train_set.images.to(self.device)
            self.labels_dev = train_set.labels.to(self.device)
            if self.needs_contrast and cfg.sampling == "device":
                self.contrast_sampler = hdata.DeviceContrastSampler(
                    self.labels_dev, self.num_classes, cfg.loss.nce_k, cfg.mode, self.device)
        self.history: list[dict] = []
        self.graphed = GraphedStep(self._step, warmup=cfg.graph_warmup) if cfg.cuda_graph else None
        # the batch stream a run() left mid-epoch and the (epoch, batch) it yields next:
        # the next run() carries on with it (see _batch_stream)
        self._stream = None
        self._stream_at: tuple[int, int] | None = None

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        """The process-wide settings this run asks for (rdkernels backend, index checks,
        cuDNN modes), set while it trains and restored afterwards, so that a Trainer
        leaves other code in the process as it found it."""
        cfg = self.cfg
        with contextlib.ExitStack() as stack:
            if cfg.impl == "fused" and cfg.backend != "auto":
                import rdkernels
                stack.enter_context(rdkernels.use_backend(cfg.backend))
            if not cfg.index_checks:
                # the harness's samplers only produce valid rows, so the check is redundant
                stack.enter_context(_env("RDKERNELS_CHECK_INDICES", "0"))
            if self.device.type == "cuda":
                # the reference sets cudnn.benchmark; exact resume on a GPU needs deterministic kernels instead
                stack.enter_context(_attrs(torch.backends.cudnn, benchmark=not cfg.deterministic,
                                           deterministic=cfg.deterministic))
            yield

    def rng_state(self) -> dict:
        """Every random state this run draws from: the process-wide generators' and
        its own sampling generator's (what a checkpoint stores)."""
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                 "sampler": self.gen.get_state()}
        if self.device.type == "cuda":
            # the training GPU's generator only: a resume may see another number of GPUs
            state["cuda"] = torch.cuda.get_rng_state(cuda_index(self.device))
        return state

    def set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if state["sampler"].numel() == self.gen.get_state().numel():
            self.gen.set_state(state["sampler"])
        else:
            # CPU and CUDA generators keep states of different kinds (a resume with --device
            # changed): one cannot take the other's, so this generator keeps its seed
            warnings.warn(f"the checkpoint's sampling RNG state is from another device type than "
                          f"{self.gen.device}: augmentation and contrast sampling restart from the seed "
                          "(not a bit-for-bit resume)", stacklevel=3)
        if "cuda" in state and self.device.type == "cuda":
            _set_cuda_rng_state(state["cuda"], self.device)

    # ------------------------------------------------------------ data
    def _batch_stream(self, epoch: int, start: int) -> Iterator:
        """The batches of ``epoch`` from batch ``start`` on: the stream the last run()
        left at that very position if there is one, else a new one.

        Carrying the stream over keeps a DataLoader's workers, and the batches they
        have prefetched, across run() calls (compare's turns), as in one long run;
        a new loader every call would start its workers again each time.
        """
        if self._stream is None or self._stream_at != (epoch, start):
            self._drop_batch_stream()
            self._stream = self._batches(epoch, start)
        return self._stream

    def close(self) -> None:
        """Let go of the batch stream kept between run() calls: a DataLoader's workers
        exit now rather than whenever the trainer is garbage-collected. A later run()
        starts a new stream where it is."""
        self._drop_batch_stream()

    def _drop_batch_stream(self) -> None:
        """Close the kept batch stream (its DataLoader workers exit), if any."""
        if self._stream is not None:
            self._stream.close()
        self._stream, self._stream_at = None, None

    def _batches(self, epoch: int, start: int):
        """(images_uint8, labels, index, contrast_idx or None) on the device, from batch ``start`` of ``epoch``."""
        cfg, dev = self.cfg, self.device
        if cfg.sampling == "workers":
            k = cfg.loss.nce_k if self.needs_contrast else 0
            dataset = hdata.InstanceSampleDataset(self.train_set, k=k, mode=cfg.mode)
            sampler = hdata.EpochBatchSampler(self.n_data, cfg.batch_size, cfg.seed, epoch, start)
            # its own generator: building the loader must not draw from the global RNG,
            # or a run resumed mid-epoch would see a shifted stream
            loader_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers,
                                                 pin_memory=dev.type == "cuda", generator=loader_gen)
            for item in loader:
                img, y, idx = (t.to(dev, non_blocking=True) for t in item[:3])
                cidx = item[3].to(dev, non_blocking=True) if len(item) > 3 else None
                yield img, y, idx, cidx
            return
        order, _ = hdata.epoch_order(self.n_data, cfg.seed, epoch)
        bs = cfg.batch_size
        for b in range(start, self.steps_per_epoch):
            idx = torch.from_numpy(order[b * bs:(b + 1) * bs]).to(dev, non_blocking=True)
            cidx = self.contrast_sampler.sample(idx, self.gen) if self.contrast_sampler is not None else None
            yield self.images_dev[idx], self.labels_dev[idx], idx, cidx

    # ------------------------------------------------------------ one step
    def _autocast(self):
        # autocast's cache of cast weights cannot outlive a graph capture
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.cfg.amp,
                              cache_enabled=not self.cfg.cuda_graph)

    @property
    def term_names(self) -> tuple[str, ...]:
        """The loss terms a step reports, in the order of ``_step``'s output."""
        if self.criterion is None:
            return ("loss_ce", "loss")
        return ("loss_ce", "loss_kd", "loss_feat", "loss")

    def train_step(self, images, labels, index, contrast_idx) -> dict[str, torch.Tensor]:
        """One SGD step; returns the loss terms as 0-dim tensors (not synced)."""
        # augmentation draws from self.gen, so it runs outside the captured step
        x = hdata.augment(images, self.gen, train=True)
        inputs = (x, labels, index) if contrast_idx is None else (x, labels, index, contrast_idx)
        if self.graphed is not None:
            terms = self.graphed(self.optimizer.param_groups[0]["lr"], *inputs)
        else:
            terms = self._step(*inputs)
        return dict(zip(self.term_names, terms.unbind()))

    def _step(self, x, labels, index, contrast_idx=None) -> torch.Tensor:
        """Forward, backward and the optimizer step on an augmented batch; the loss
        terms stacked in ``term_names`` order, as float32."""
        self.model.train()
        gamma, alpha, beta = self.cfg.weights()
        with self._autocast():
            feat_s, logit_s = self.model(x)
            loss_ce = F.cross_entropy(logit_s, labels)
            if self.criterion is not None:
                with torch.no_grad():
                    feat_t, logit_t = self.teacher(x)
        terms = [loss_ce]
        loss = gamma * loss_ce
        if self.criterion is not None:
            # AMP covers the models only: RepDistiller computes its losses in float32, so the
            # criterion runs outside autocast on float32 inputs. Under autocast the reference
            # CRD's bmm scores would be bf16/fp16, and a reference-vs-fused difference would
            # mix precision with implementation.
            loss_kd, loss_feat = self.criterion(feat_s.float(), feat_t.detach().float(), logit_s.float(),
                                                logit_t.detach().float(), index, contrast_idx)
            loss = loss + alpha * loss_kd + beta * loss_feat
            terms += [loss_kd, loss_feat]
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return torch.stack([t.detach().float() for t in terms + [loss]])

    # ------------------------------------------------------------ loop
    def run(self, steps: int | None = None, *, timing_warmup: int = 0) -> dict:
        """Train until ``self.step`` reaches ``self.total_steps`` (or ``steps`` more steps).

        Returns a summary: steps run, steps/s over the steps after ``timing_warmup``
        (their wall time, from before the first of them fetches its batch, less the
        evaluations and checkpoint writes among them), peak device memory, last
        losses, test accuracy if evaluated. With nothing left to run (a resume of a
        finished run) it writes nothing and returns the run folder's summary.json as
        it is, or a summary of 0 steps without one.

        Run in parts (``run(n)`` again and again, as compare's turns), it takes the
        same batches as in one go, and carries a DataLoader's workers over.
        """
        end = self.total_steps if steps is None else min(self.total_steps, self.step + steps)
        out_dir = Path(self.cfg.out) if self.cfg.out else None
        if self.step >= end:
            return self._finished_summary(out_dir)
        with self._scope():
            return self._run(end, out_dir, timing_warmup)

    def _finished_summary(self, out_dir: Path | None) -> dict:
        """The summary of a run with no step left, leaving its files untouched."""
        path = out_dir / "summary.json" if out_dir else None
        if path is not None and path.exists():
            with open(path) as fh:
                return json.load(fh)
        return {"config": self.cfg.to_dict(), "device": device_name(self.device), "versions": versions(),
                "command": command_line(), "steps": 0, "final_step": self.step, "wall_s": 0.0, "timed_steps": 0,
                "steps_per_s": None, "peak_memory_bytes": None, "last": None, "eval": None}

    def _run(self, end: int, out_dir: Path | None, timing_warmup: int) -> dict:
        cfg = self.cfg
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
            # a resumed run rewrites what came after its checkpoint, so no row appears twice
            _truncate_log(out_dir / "log.csv", self.step)
            _truncate_eval(out_dir / "eval.csv", self.step)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = progress_bar(total=end, initial=self.step, enabled=cfg.progress,
                        desc=f"{cfg.distill or 'teacher'}/{cfg.impl}" if cfg.distill else f"train {cfg.arch}")
        pending: list[tuple[int, int, float, dict]] = []
        start_step = self.step
        clock = StepClock(self.device)
        eval_result = None
        t0 = time.perf_counter()
        while self.step < end:
            epoch, first = divmod(self.step, self.steps_per_epoch)
            lr = lr_at(cfg, epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batches = self._batch_stream(epoch, first)
            for b in range(first, min(self.steps_per_epoch, first + end - self.step)):
                if self.step - start_step == timing_warmup:
                    clock.start()  # before the batch is fetched: waiting for a loader's workers is step time
                self._stream_at = None  # unknown until the batch is in hand (an interrupt may fall in between)
                images, labels, index, cidx = next(batches)
                self._stream_at = (epoch, b + 1)
                terms = self.train_step(images, labels, index, cidx)
                self.step += 1
                pending.append((self.step, epoch, lr, terms))
                if len(pending) >= cfg.log_every or self.step == end:
                    self._flush(pending, out_dir, bar)
                if self._periodic_save_due(out_dir):
                    # rows go out before the checkpoint: a resume keeps the rows up to its step only
                    self._flush(pending, out_dir, bar)
                    with clock.paused():
                        self.save_checkpoint(out_dir / "last.pt")
            if self.step % self.steps_per_epoch == 0:  # an epoch ended
                self._drop_batch_stream()  # spent: a loader's workers exit now
                with clock.paused():  # evaluation and checkpoints are no part of the steps' time
                    if cfg.eval_every_epoch and self.test_set is not None and len(self.test_set):
                        eval_result = self.evaluate()
                        self._log_eval(epoch, eval_result, out_dir, bar)
                    if out_dir:
                        self._flush(pending, out_dir, bar)
                        self.save_checkpoint(out_dir / "last.pt")
        self._flush(pending, out_dir, bar)
        _sync(self.device)
        t_end = time.perf_counter()
        if self.step >= self.total_steps:
            self._drop_batch_stream()  # the run is over: no later run() takes the rest of the epoch
        if bar is not None:
            bar.close()
        timed = self.step - start_step - timing_warmup
        summary = {
            "config": cfg.to_dict(),
            "device": device_name(self.device),
            "versions": versions(),
            "command": command_line(),
            "steps": self.step - start_step,
            "final_step": self.step,
            "wall_s": t_end - t0,
            "timed_steps": max(timed, 0),
            "steps_per_s": timed / clock.seconds(t_end) if clock.started is not None and timed > 0 else None,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
            "last": self.history[-1] if self.history else None,
            "eval": eval_result,
        }
        if out_dir:
            self.save_checkpoint(out_dir / "last.pt")
            with open(out_dir / "summary.json", "w") as fh:
                json.dump(summary, fh, indent=2, default=str)
        return summary

    def _periodic_save_due(self, out_dir: Path | None) -> bool:
        """Whether the step just taken is a ``save_every`` checkpoint. Not at an epoch's
        end: that checkpoint comes after the epoch's evaluation, so that an interrupt
        during the evaluation resumes before the epoch's end and its eval.csv row is
        written then, rather than never."""
        every = self.cfg.save_every
        return bool(every and out_dir and self.step % every == 0 and self.step % self.steps_per_epoch)

    def _flush(self, pending: list, out_dir, bar) -> None:
        """Write the ``pending`` rows to history, log.csv and the bar, and empty the list."""
        if not pending:
            return
        keys = list(pending[0][3].keys())
        # one device->host copy per log interval, not one sync per step
        values = torch.stack([torch.stack([t[k] for k in keys]) for *_, t in pending]).cpu().tolist()
        rows = []
        for (step, epoch, lr, _), vals in zip(pending, values):
            row = {"step": step, "epoch": epoch, "lr": lr, **dict(zip(keys, vals))}
            rows.append(row)
        self.history.extend(rows)
        if out_dir:
            path = out_dir / "log.csv"
            new = not path.exists()
            with open(path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
                if new:
                    writer.writeheader()
                writer.writerows(rows)
        if bar is not None:
            bar.update(len(pending))
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", lr=f"{rows[-1]['lr']:.4g}")
        pending.clear()

    def _log_eval(self, epoch, result, out_dir, bar) -> None:
        msg = f"epoch {epoch}: test acc {result['acc']:.2f}% loss {result['loss']:.4f}"
        if bar is not None:
            bar.write(msg)
        else:
            print(msg)
        if out_dir:
            path = out_dir / "eval.csv"
            new = not path.exists()
            with open(path, "a") as fh:
                if new:
                    fh.write(EVAL_HEADER + "\n")
                fh.write(f"{epoch},{self.step},{result['acc']:.4f},{result['loss']:.6f}\n")

    @torch.no_grad()
    def evaluate(self, batch_size: int = 256) -> dict:
        """Top-1 accuracy (%) and mean CE of the trained model on the test set."""
        self.model.eval()
        correct, total, loss = 0, 0, 0.0
        for s in range(0, len(self.test_set), batch_size):
            img = self.test_set.images[s:s + batch_size].to(self.device)
            y = self.test_set.labels[s:s + batch_size].to(self.device)
            with self._autocast():
                _, logits = self.model(hdata.augment(img, train=False))
            loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += y.numel()
        self.model.train()
        return {"acc": 100.0 * correct / total, "loss": loss / total}

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "rdkernels.harness/1",
            "config": self.cfg.to_dict(),
            "step": self.step,
            "arch": self.cfg.arch,
            "model": self.model.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            # the loss's own keys (RepDistiller's for CRD): heads, banks, Z, queues
            "criterion": self.criterion.feature_loss.state_dict()
            if self.criterion is not None and self.criterion.feature_loss is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": self.rng_state(),
        }

    def save_checkpoint(self, path: str | Path) -> None:
        """Write atomically, so an interrupted save never leaves a broken checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.teacher is not None and state.get("teacher") is not None:
            self.teacher.load_state_dict(state["teacher"])
        if state.get("criterion") is not None:
            if self.criterion is None or self.criterion.feature_loss is None:
                raise ValueError("checkpoint has a distillation loss state but this run has no such loss")
            self.criterion.feature_loss.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.graphed is not None:  # the old graph points at the replaced optimizer state
            self.graphed = GraphedStep(self._step, warmup=self.cfg.graph_warmup)
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.set_rng_state(state["rng"])
        self._drop_batch_stream()  # the loaded step's batches come from a new stream

    def load_checkpoint(self, path: str | Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.load_state_dict(_to_device(state, self.device))

    @classmethod
    def resume(cls, path: str | Path, *, expect_distill: bool | None = None,
               option_names: dict[str, str] | None = None, **overrides) -> "Trainer":
        """A trainer rebuilt from the config stored in checkpoint ``path``, at its step.

        ``overrides`` are TrainConfig fields (``loss`` as a dict of LossOptions
        fields). Those in ``RUN_OPTIONS`` replace the stored values; any other
        that differs from the stored value raises :class:`ResumeMismatch`, since
        the run would no longer continue the checkpoint's recipe. ``expect_distill``
        (True: a distillation, False: teacher training) refuses a checkpoint of
        the other kind. ``option_names`` names fields in the error (the CLI's
        flags). Without an ``out`` override the run writes next to the checkpoint.
        """
        state = torch.load(path, map_location="cpu", weights_only=False)
        stored = TrainConfig.from_dict(state["config"])
        _check_resume_kind(stored, expect_distill, path)
        cfg = _resume_config(stored, path, overrides, option_names or {})
        if state.get("teacher") is not None:
            # the checkpoint carries the teacher's weights: the teacher file is not read again
            # (it may have moved, or a relative path may now name another file)
            trainer = cls(dataclasses.replace(cfg, teacher=None))
            trainer.cfg = dataclasses.replace(trainer.cfg, teacher=cfg.teacher)
        else:
            trainer = cls(cfg)
        trainer.load_state_dict(_to_device(state, trainer.device))
        return trainer


def _check_resume_kind(stored: TrainConfig, expect_distill: bool | None, path) -> None:
    """Refuse to continue a distillation as teacher training, or the reverse."""
    if expect_distill is None or expect_distill == (stored.distill is not None):
        return
    if stored.distill is not None:
        raise ResumeMismatch(f"{str(path)!r} is a distillation checkpoint (--distill {stored.distill}); "
                             f"continue it with `distill --resume {path}`")
    raise ResumeMismatch(f"{str(path)!r} is a teacher-training checkpoint; continue it with "
                         f"`train-teacher --resume {path}`")


def _resume_config(stored: TrainConfig, path, overrides: dict, option_names: dict[str, str]) -> TrainConfig:
    """The stored config with the run options in ``overrides`` applied; a
    ResumeMismatch naming every recipe option in ``overrides`` that differs."""
    overrides = dict(overrides)
    loss = overrides.pop("loss", None) or {}
    if isinstance(loss, LossOptions):
        loss = dataclasses.asdict(loss)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields) + sorted(set(loss) - set(dataclasses.asdict(stored.loss)))
    if unknown:
        raise TypeError(f"Trainer.resume got unknown config fields {unknown}")
    conflicts = [(name, value, getattr(stored, name)) for name, value in overrides.items()
                 if name not in RUN_OPTIONS and not _same_setting(name, value, getattr(stored, name))]
    conflicts += [(f"loss.{name}", value, getattr(stored.loss, name)) for name, value in loss.items()
                  if value != getattr(stored.loss, name)]
    if conflicts:
        def label(name):  # a flag for the CLI (its loss flags are the bare field names)
            return option_names.get(name.removeprefix("loss."), name)
        changed = "; ".join(f"{label(n)} {_show(v)} (the checkpoint has {_show(s)})" for n, v, s in conflicts)
        allowed = ", ".join(label(n) for n in RUN_OPTIONS if n in option_names or not option_names)
        raise ResumeMismatch(f"cannot resume {str(path)!r} with a different training recipe: {changed}. Leave "
                             f"these out to continue the stored run, or start a new run; a resume may change "
                             f"only {allowed}")
    run = {name: value for name, value in overrides.items() if name in RUN_OPTIONS}
    if "out" not in run and stored.out is not None:
        run["out"] = str(Path(path).resolve().parent)  # next to the checkpoint, wherever the run was started
    return dataclasses.replace(stored, **run)


def _same_setting(name: str, a, b) -> bool:
    if name in ("teacher", "data") and isinstance(a, str) and isinstance(b, str):
        return _absolute(a) == _absolute(b)
    if name == "lr_decay_epochs":
        return tuple(a) == tuple(b)
    return a == b


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """Set environment variable ``name`` for the block; restore (or remove) it afterwards."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextlib.contextmanager
def _attrs(obj, **values) -> Iterator[None]:
    """Set attributes of ``obj`` for the block; restore them afterwards."""
    previous = {name: getattr(obj, name) for name in values}
    for name, value in values.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            setattr(obj, name, value)


def check_graphable(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse, with the reason, the runs whose step a CUDA graph cannot hold."""
    if device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA device, got {device}")
    if cfg.amp and cfg.amp_dtype == "float16":
        raise ValueError("cuda_graph does not work with float16 AMP: its GradScaler reads the inf check on the "
                         "host every step; use --amp-dtype bfloat16")
    reason = graph_blocker(cfg.distill, cfg.impl)
    if reason:
        raise ValueError(f"cuda_graph cannot capture --distill {cfg.distill} --impl {cfg.impl}: {reason}")


def graph_blocker(distill: str | None, impl: str) -> str | None:
    """Why the step of (distill, impl) cannot be captured, or None if it can."""
    if impl == "reference" and distill in ("crd", "wcord"):
        return ("the reference formulation reads params[...].item() on the host every step (as the public "
                "code does)")
    return None


def _to_device(state, device):
    """Move tensors to ``device`` except RNG states, which must stay CPU ByteTensors."""
    out = dict(state)
    for key in ("model", "teacher", "criterion"):
        if out.get(key) is not None:
            out[key] = {k: v.to(device) if torch.is_tensor(v) else v for k, v in out[key].items()}
    return out


def _truncate_log(path: Path, step: int) -> None:
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


def _truncate_eval(path: Path, step: int) -> None:
    """Drop eval.csv rows past ``step`` (as :func:`_truncate_log`); the header is
    written once, and added to a file from before it had one."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = [line for line in lines if line != EVAL_HEADER and int(line.split(",")[1]) <= step]
    path.write_text("".join(f"{line}\n" for line in [EVAL_HEADER, *rows]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """The training steps' wall time: from ``start()`` on, less the time spent in
    ``paused()`` blocks (evaluation, checkpoint writes), so steps/s is the steps' rate.
    Each edge syncs ``device``, so queued GPU work falls on the side that queued it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.started: float | None = None
        self.paused_s = 0.0

    def start(self) -> None:
        _sync(self.device)
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        if self.started is None:  # still in the timing warm-up: nothing to take out
            yield
            return
        _sync(self.device)
        t = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.paused_s += time.perf_counter() - t

    def seconds(self, now: float) -> float:
        """Time counted from ``start()`` to ``now``."""
        return now - self.started - self.paused_s


def _set_cuda_rng_state(saved, device: torch.device) -> None:
    """Restore the CUDA generator of ``device`` from a checkpoint's ``rng["cuda"]``: one
    state (the training GPU's), or, from checkpoints before that, every visible GPU's
    list, of which the entry of ``device``'s index is taken."""
    index = cuda_index(device)
    if isinstance(saved, (list, tuple)):
        if index >= len(saved):
            warnings.warn(f"the checkpoint holds CUDA RNG states for {len(saved)} GPUs, none for cuda:{index}: its "
                          "generator restarts from the seed (not a bit-for-bit resume)", stacklevel=3)
            return
        saved = saved[index]
    torch.cuda.set_rng_state(saved, index)


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    """A tqdm bar, or None when disabled or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)
