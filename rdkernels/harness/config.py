"""What a run is: :class:`TrainConfig` and the rules on its fields (the counts each
takes, the options a resume may change, the steps a CUDA graph can hold), and the
reference's learning-rate schedule."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from rdkernels.backend import BACKENDS
from rdkernels.harness.data import SAMPLING_MODES
from rdkernels.harness.distillers import DEFAULT_WEIGHTS, DISTILLERS, IMPLS, REFERENCE_GAMMA, LossOptions

SAMPLINGS = ("device", "workers", "loss")

# Options that say how a run executes, not what it computes: a resumed run may
# change them. Every other option is the training recipe, which a resume keeps.
RUN_OPTIONS = ("epochs", "max_steps", "out", "device", "backend", "progress", "log_every", "save_every",
               "eval_every_epoch", "workers", "index_checks", "cuda_graph", "graph_warmup", "deterministic")


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


def check_config(cfg: TrainConfig) -> None:
    """Refuse, naming the field, a value no run can take: a name outside its choices, a count out of range."""
    choices = {"distill": (*DISTILLERS, None), "impl": IMPLS, "sampling": SAMPLINGS, "mode": SAMPLING_MODES,
               "amp_dtype": ("bfloat16", "float16"), "backend": BACKENDS}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    check_counts(cfg)


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


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The reference's step schedule: x lr_decay_rate after each decay epoch
    (epochs counted from 0 here, from 1 there: ``epoch > 150`` there is ``epoch >= 150`` here)."""
    return cfg.lr * cfg.lr_decay_rate ** sum(epoch >= m for m in cfg.lr_decay_epochs)


def check_resume_kind(stored: TrainConfig, expect_distill: bool | None, path) -> None:
    """Refuse to continue a distillation as teacher training, or the reverse."""
    if expect_distill is None or expect_distill == (stored.distill is not None):
        return
    if stored.distill is not None:
        raise ResumeMismatch(f"{str(path)!r} is a distillation checkpoint (--distill {stored.distill}); "
                             f"continue it with `distill --resume {path}`")
    raise ResumeMismatch(f"{str(path)!r} is a teacher-training checkpoint; continue it with "
                         f"`train-teacher --resume {path}`")


WEIGHT_FIELDS = ("gamma", "alpha", "beta")   # TrainConfig.weights() order: CE, KD, distiller


def resume_config(stored: TrainConfig, path, overrides: dict, option_names: dict[str, str]) -> TrainConfig:
    """The stored config with the run options in ``overrides`` applied; a
    ResumeMismatch naming every recipe option in ``overrides`` that differs (the loss
    weights by the values they give, unset ones the method's)."""
    overrides = dict(overrides)
    loss = overrides.pop("loss", None) or {}
    if isinstance(loss, LossOptions):
        loss = dataclasses.asdict(loss)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields) + sorted(set(loss) - set(dataclasses.asdict(stored.loss)))
    if unknown:
        raise TypeError(f"Trainer.resume got unknown config fields {unknown}")
    # the loss weights by the values they give: -r 1 -b 0.8 spells out a CRD run's unset
    # defaults, and the same -a on a run whose unset -r was not 1 changes -r too
    weights = {name: overrides.pop(name) for name in WEIGHT_FIELDS if name in overrides}
    asked = dataclasses.replace(stored, **weights).weights()
    conflicts = [(name, value, had) for name, value, had in zip(WEIGHT_FIELDS, asked, stored.weights())
                 if value != had]
    conflicts += [(name, value, getattr(stored, name)) for name, value in overrides.items()
                  if name not in RUN_OPTIONS and not _same_setting(name, value, getattr(stored, name))]
    conflicts += [(f"loss.{name}", value, getattr(stored.loss, name)) for name, value in loss.items()
                  if value != getattr(stored.loss, name)]
    if conflicts:
        def label(name):  # a flag for the CLI (its loss flags are the bare field names)
            return option_names.get(name.removeprefix("loss."), name)
        def change(name, value, had):
            if name in WEIGHT_FIELDS and name not in weights:  # not typed: the typed weights moved it
                return (f"{label(name)} {_show(value)} (implied by {'/'.join(label(w) for w in weights)}; the "
                        f"checkpoint has {_show(had)}: give {label(name)} {_show(had)} to keep it)")
            return f"{label(name)} {_show(value)} (the checkpoint has {_show(had)})"
        changed = "; ".join(change(*conflict) for conflict in conflicts)
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
        return absolute_path(a) == absolute_path(b)
    if name == "lr_decay_epochs":
        return tuple(a) == tuple(b)
    return a == b


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def absolute_path(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def check_graphable(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse, with the reason, the runs whose step a CUDA graph cannot hold."""
    if device.type != "cuda":
        raise ValueError(f"cuda_graph (--cuda-graph) needs a CUDA device, got {device}")
    if cfg.amp and cfg.amp_dtype == "float16":
        raise ValueError("cuda_graph (--cuda-graph) does not work with float16 AMP: its GradScaler reads the inf "
                         "check on the host every step; use --amp-dtype bfloat16")
    reason = graph_blocker(cfg.distill, cfg.impl)
    if reason:
        raise ValueError(f"cuda_graph (--cuda-graph) cannot capture --distill {cfg.distill} --impl {cfg.impl}: "
                         f"{reason}")


def graph_blocker(distill: str | None, impl: str) -> str | None:
    """Why the step of (distill, impl) cannot be captured, or None if it can."""
    if impl == "reference" and distill in ("crd", "wcord"):
        return ("the reference formulation reads params[...].item() on the host every step (as the public "
                "code does)")
    return None
