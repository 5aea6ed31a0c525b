"""Command line: ``python -m rdkernels.harness train-teacher|distill|compare ...``.

Flag names follow RepDistiller's train_teacher.py / train_student.py where they
exist (``--model_s``/``--model_t`` as ``--arch``/``--teacher-arch``; ``-r``, ``-a``,
``-b`` for the CE, KD and distiller weights; ``--nce_k``, ``--nce_t``, ...).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from rdkernels._cli import BriefErrorParser, device as device_arg, float_at_least, int_at_least
from rdkernels.backend import BackendUnavailable
from rdkernels.harness.compare import TURN_STEPS
from rdkernels.harness.distillers import DISTILLERS, IMPLS, LossOptions
from rdkernels.harness.models import MODELS
from rdkernels.harness.config import RUN_OPTIONS, SAMPLINGS, ResumeMismatch, TrainConfig
from rdkernels.harness.train import Trainer

# the errors a user's input causes (a missing file, a bad value, a backend this machine
# lacks, a resume that would change the run): main() prints them as one line, not a traceback
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, BackendUnavailable, ResumeMismatch)

# on/off options: each takes --name and --no-name, so that a resume can set it either way
_ON_OFF = argparse.BooleanOptionalAction
_LOSS_FIELDS = {f.name for f in dataclasses.fields(LossOptions)}


_POSITIVE, _NON_NEGATIVE = int_at_least(1), int_at_least(0)
_RATE, _SCALE = float_at_least(0), float_at_least(0, strictly=True)   # >= 0 (rates, weights); > 0 (temperatures)


def _common(p: argparse.ArgumentParser, *, training: bool = True) -> None:
    """Data, optimisation and run options; ``training=False`` (compare) leaves out
    those that only a training run uses: its length, run folder, logs, checkpoints,
    evaluation and resume."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="CIFAR-100 python-pickle folder (cifar-100-python or its parent); "
                   "default: a synthetic CIFAR-shaped dataset")
    g.add_argument("--synthetic-n", type=_POSITIVE, default=50_000, help="synthetic training images (default 50000)")
    g.add_argument("--synthetic-test-n", type=_NON_NEGATIVE, default=10_000)
    g.add_argument("--num-classes", type=_POSITIVE, default=100, help="synthetic classes (default 100)")
    g.add_argument("--image-size", type=_POSITIVE, default=32, help="synthetic image side (default 32)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", "--batch_size", type=_POSITIVE, default=64)
    if training:
        g.add_argument("--epochs", type=_NON_NEGATIVE, default=None,
                       help="default 240; 0: no epoch limit (needs --max-steps)")
        g.add_argument("--max-steps", type=_POSITIVE, default=None, help="stop after this many steps in total")
    g.add_argument("--lr", "--learning_rate", type=_RATE, default=0.05)
    g.add_argument("--momentum", type=_RATE, default=0.9)
    g.add_argument("--weight-decay", "--weight_decay", type=_RATE, default=5e-4)
    g.add_argument("--lr-decay-epochs", "--lr_decay_epochs", default="150,180,210")
    g.add_argument("--lr-decay-rate", "--lr_decay_rate", type=_RATE, default=0.1)
    g.add_argument("--amp", action="store_true", help="mixed precision (autocast)")
    g.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default="bfloat16")
    g.add_argument("--cuda-graph", action=_ON_OFF, default=False,
                   help="record each training step once as a CUDA graph and replay it (takes host time out of "
                   "the step; float16 AMP and the reference CRD/WCoRD losses cannot be captured)")
    g.add_argument("--graph-warmup", type=_POSITIVE, default=3, help="eager steps before the step is captured")
    g = p.add_argument_group("run")
    g.add_argument("--device", type=device_arg, default="auto",
                   help="auto (a GPU if torch sees one), cpu, cuda or cuda:N")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action=_ON_OFF, default=False,
                   help="deterministic cuDNN kernels (off: cudnn.benchmark, as the reference)")
    g.add_argument("--progress", action=_ON_OFF, default=True, help="tqdm progress bar")
    if not training:
        return
    g.add_argument("--out", default=None, help="run folder for log.csv, eval.csv, summary.json and last.pt "
                   "(on --resume: default the checkpoint's folder)")
    g.add_argument("--log-every", type=_POSITIVE, default=10)
    g.add_argument("--save-every", type=_POSITIVE, default=None,
                   help="checkpoint every N steps (and at every epoch end, after its evaluation); needs --out")
    g.add_argument("--eval", dest="eval_every_epoch", action=_ON_OFF, default=True,
                   help="the test-set evaluation after each epoch")
    g.add_argument("--resume", default=None)  # help: _resume_help, once every option exists


def _distill_args(p: argparse.ArgumentParser, *, compare: bool = False) -> None:
    g = p.add_argument_group("distillation")
    g.add_argument("--arch", "--model_s", default="resnet8x4", choices=sorted(MODELS), help="student")
    g.add_argument("--teacher-arch", "--model_t", default="resnet32x4", choices=sorted(MODELS))
    g.add_argument("--teacher", "--path_t", default=None,
                   help="teacher checkpoint from train-teacher; default: a randomly initialised teacher "
                        "(BatchNorm statistics from the first 512 training images; timing only)")
    if compare:
        g.add_argument("--distill", default="crd", type=_distill_list,
                       help="crd|wcord|dcd|rrd, or a comma-separated list to compare several in one go")
    else:
        g.add_argument("--distill", choices=DISTILLERS, default="crd")
    if not compare:
        g.add_argument("--impl", choices=IMPLS, default="fused")
    g.add_argument("--backend", choices=("auto", "cuda", "triton", "torch"), default="auto",
                   help="rdkernels backend for the fused losses")
    g.add_argument("-r", "--gamma", type=_RATE, default=None,
                   help="CE weight (default: 1, RepDistiller's default, once -a or -b is given; with none of "
                   "-r/-a/-b, the weights the reference scripts use for the method, e.g. kd: -r 0.1 -a 0.9 -b 0)")
    g.add_argument("-a", "--alpha", type=_RATE, default=None, help="KD weight (default: the method's)")
    g.add_argument("-b", "--beta", type=_RATE, default=None, help="distiller weight (default: the method's)")
    g.add_argument("--kd_T", type=_SCALE, default=4.0)
    g.add_argument("--feat_dim", type=_POSITIVE, default=128)
    g.add_argument("--nce_k", type=_POSITIVE, default=16384, help="CRD/WCoRD negatives; RRD queue size")
    g.add_argument("--nce_t", type=_SCALE, default=0.07)
    g.add_argument("--nce_m", type=float_at_least(0, most=1), default=0.5)
    g.add_argument("--rrd-tau-s", type=_SCALE, default=0.02)
    g.add_argument("--rrd-tau-t", type=_SCALE, default=0.1)
    g.add_argument("--wcord-lambda-local", type=_RATE, default=1.0, help="WCoRD local (OT) term weight")
    g.add_argument("--wcord-eps", type=_SCALE, default=0.05, help="WCoRD Sinkhorn entropic eps")
    g.add_argument("--wcord-iters", type=_POSITIVE, default=100, help="WCoRD Sinkhorn iterations")
    g.add_argument("--mode", choices=("exact", "relax"), default="exact", help="contrast sampling mode")
    g.add_argument("--sampling", choices=SAMPLINGS, default="device",
                   help="contrast_idx source: device (batched on the GPU), workers (numpy in DataLoader "
                   "workers, as the reference), loss (contrast_idx=None: the loss's own uniform sampling)")
    g.add_argument("--workers", type=_NON_NEGATIVE, default=8, help="DataLoader workers for --sampling workers")
    g.add_argument("--index-checks", action=_ON_OFF, default=True,
                   help="the fused losses' host-synced checks, one sync per call each: index ranges (the "
                   "harness's samplers only produce valid indices) and WCoRD's finite-cost check")


def _config(args, **extra) -> TrainConfig:
    loss = LossOptions()
    if hasattr(args, "nce_k"):
        loss = LossOptions(kd_T=args.kd_T, feat_dim=args.feat_dim, nce_k=args.nce_k, nce_t=args.nce_t,
                           nce_m=args.nce_m, rrd_tau_s=args.rrd_tau_s, rrd_tau_t=args.rrd_tau_t,
                           wcord_lambda_local=args.wcord_lambda_local, wcord_eps=args.wcord_eps,
                           wcord_iters=args.wcord_iters)
    fields = dict(
        data=args.data, synthetic_n=args.synthetic_n, synthetic_test_n=args.synthetic_test_n,
        num_classes=args.num_classes, image_size=args.image_size, batch_size=args.batch_size,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        lr_decay_epochs=_epoch_list(args.lr_decay_epochs),
        lr_decay_rate=args.lr_decay_rate, amp=args.amp, amp_dtype=args.amp_dtype, device=args.device,
        seed=args.seed, deterministic=args.deterministic, cuda_graph=args.cuda_graph,
        graph_warmup=args.graph_warmup, progress=args.progress, loss=loss)
    if hasattr(args, "resume"):  # the training commands (compare sets its own length and writes no run folder)
        fields.update(epochs=240 if args.epochs is None else args.epochs, max_steps=args.max_steps, out=args.out,
                      log_every=args.log_every, save_every=args.save_every, eval_every_epoch=args.eval_every_epoch)
    for name in ("arch", "teacher_arch", "teacher", "distill", "impl", "backend", "gamma", "alpha", "beta",
                 "mode", "sampling", "workers", "index_checks"):
        if hasattr(args, name):
            fields[name] = getattr(args, name)
    fields.update(extra)
    return TrainConfig(**fields)


def _epoch_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(e) for e in text.split(",") if e.strip())
    except ValueError:
        raise ValueError(f"--lr-decay-epochs takes comma-separated epochs such as 150,180,210, got {text!r}") from None


def _typed_options(parser: argparse.ArgumentParser, argv: list[str], dests) -> set[str]:
    """The option dests that ``argv`` (the command's arguments) sets, as opposed to
    those left at their defaults: parsed into a namespace pre-filled with a marker,
    which argparse overwrites only for the options it sees."""
    unset = object()
    ns = parser.parse_args(argv, namespace=argparse.Namespace(**{d: unset for d in dests}))
    return {d for d, v in vars(ns).items() if v is not unset}


def _option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """TrainConfig field -> the flag that sets it, for error messages."""
    names = {}
    for action in parser._actions:  # argparse has no public list of a parser's options
        if action.option_strings:
            long = [o for o in action.option_strings if o.startswith("--")] or action.option_strings
            # an on/off option by both its spellings: --[no-]eval
            names[action.dest] = f"--[no-]{long[0][2:]}" if isinstance(action, _ON_OFF) else long[0]
    return names


def _resume_overrides(cfg: TrainConfig, typed: set[str]) -> dict:
    """The TrainConfig fields of the options typed on the command line, with the
    values ``cfg`` (built from those options) gives them."""
    overrides, loss = {}, {}
    for name in sorted(typed):  # a stable order for the error message
        if name in _LOSS_FIELDS:
            loss[name] = getattr(cfg.loss, name)
        elif hasattr(cfg, name) and name != "loss":
            overrides[name] = getattr(cfg, name)
    if loss:
        overrides["loss"] = loss
    return overrides


def _train(args, cfg: TrainConfig, parser: argparse.ArgumentParser, typed: set[str]) -> None:
    if args.resume:
        trainer = Trainer.resume(args.resume, expect_distill=args.command == "distill",
                                 option_names=_option_names(parser), **_resume_overrides(cfg, typed - {"resume"}))
        if trainer.step >= trainer.total_steps:
            # the run is complete: keep its summary.json rather than write one of 0 steps
            print(f"nothing to do: {args.resume} is at step {trainer.step}, the end of its run "
                  f"({trainer.total_steps} steps); pass a larger --max-steps or --epochs to train on")
            return
    else:
        _check_run_length_and_folder(args)
        _note_synthetic_data(cfg.data)
        if cfg.distill is not None and not cfg.teacher:
            print("note: no --teacher given, distilling from a randomly initialised teacher "
                  "(fine for timing, not for accuracy)", file=sys.stderr)
        if not cfg.out:
            print("note: no --out given, nothing is saved (no log, checkpoint or summary)", file=sys.stderr)
        trainer = Trainer(cfg)
    summary = trainer.run()
    last = summary["last"] or {}
    msg = f"done: step {summary['final_step']}, loss {last.get('loss', float('nan')):.4f}"
    if summary["eval"]:
        msg += f", test acc {summary['eval']['acc']:.2f}% (epoch {summary['eval']['epoch']})"
    if summary["steps_per_s"]:
        msg += f", {summary['steps_per_s']:.2f} steps/s"
    print(msg)


def _check_run_length_and_folder(args) -> None:
    """Refuse a new run that would train nothing, or checkpoint nowhere. (A resume has
    the checkpoint's length, and writes next to the checkpoint without --out.)"""
    if args.epochs == 0 and args.max_steps is None:
        raise ValueError("--epochs 0 means no epoch limit: give --max-steps to set the run's length "
                         "(as it is, the run would train nothing)")
    if args.save_every is not None and args.out is None:
        raise ValueError("--save-every needs --out: checkpoints go to the run folder")


def _note_synthetic_data(data: str | None) -> None:
    """Say so when a run trains on synthetic data: leaving out --data is easy to miss."""
    if not data:
        print("note: no --data given, training on a synthetic CIFAR-shaped dataset "
              "(fine for timing, not for accuracy)", file=sys.stderr)


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and its sub-parsers by command."""
    parser = BriefErrorParser(prog="python -m rdkernels.harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-teacher", help="train a model with cross-entropy (the teacher)")
    p.add_argument("--arch", "--model", default="resnet32x4", choices=sorted(MODELS))
    _common(p)

    p = sub.add_parser("distill", help="distil a student from a trained teacher")
    _distill_args(p)
    _common(p)

    # compare has its own option set: a fixed number of steps, no run folder, no resume
    p = sub.add_parser("compare", help="reference vs fused vs KD-only for a fixed number of steps")
    _distill_args(p, compare=True)
    _common(p, training=False)
    p.add_argument("--steps", type=_POSITIVE, default=200, help="training steps per run (whatever the epoch length)")
    p.add_argument("--warmup", type=_POSITIVE, default=20, help="steps excluded from the timing")
    p.add_argument("--profile-steps", type=_NON_NEGATIVE, default=0,
                   help="after the timed steps, profile this many more of each run and report its costliest "
                        "kernels (default 0: none)")
    p.add_argument("--turn-steps", type=_POSITIVE, default=TURN_STEPS,
                   help="timed steps a run takes in its turn: the runs' timed steps are interleaved")
    p.add_argument("--rounding-control", action=_ON_OFF, default=True,
                   help="afterwards, the fused run twice more (untimed), its initial student weights one ulp up, "
                        "then one ulp down: "
                        "the spread float rounding alone makes in the loss curves, the yardstick for the "
                        "reference/fused difference (default: on)")
    p.add_argument("--results", default="benchmarks/results",
                   help="folder for the JSON and PNG (default: benchmarks/results under the current folder, "
                        "as in a checkout)")
    p.add_argument("--no-plot", action="store_true")
    for name in ("train-teacher", "distill"):
        _resume_help(sub.choices[name])
    return parser, dict(sub.choices)


def _resume_help(parser: argparse.ArgumentParser) -> None:
    """--resume's help, naming the options a resume may change (config.RUN_OPTIONS)."""
    names = _option_names(parser)
    allowed = ", ".join(names[n] for n in RUN_OPTIONS if n in names)
    resume = next(a for a in parser._actions if a.dest == "resume")
    resume.help = (f"checkpoint to continue from, with its stored config; only {allowed} may change; "
                   "other options given must match the checkpoint")


def _distill_list(text: str) -> str:
    """compare's --distill: one distiller or a comma-separated list, checked while parsing."""
    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names or any(d not in DISTILLERS or d == "kd" for d in names):
        raise argparse.ArgumentTypeError(
            f"takes crd, wcord, dcd, rrd or a comma-separated list of them, got {text!r}")
    return ",".join(names)


def _compare(args) -> None:
    from rdkernels.harness.compare import compare
    _note_synthetic_data(args.data)
    for name in args.distill.split(","):
        cfg = _config(args, impl="fused", distill=name)
        compare(cfg, steps=args.steps, warmup=args.warmup, out_dir=args.results, plot=not args.no_plot,
                turn_steps=args.turn_steps, profile_steps=args.profile_steps, rounding_control=args.rounding_control)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "compare":
            _compare(args)
        else:
            sub = commands[args.command]
            # the command name is argv[0]: the top-level parser has no options of its own
            typed = _typed_options(sub, argv[1:], vars(args)) if args.resume else set()
            cfg = _config(args, distill=None) if args.command == "train-teacher" else _config(args)
            _train(args, cfg, sub, typed)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
