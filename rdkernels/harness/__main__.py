"""Command line: ``python -m rdkernels.harness train-teacher|distill|compare ...``.

Flag names follow RepDistiller's train_teacher.py / train_student.py where they
exist (``--model_s``/``--model_t`` as ``--arch``/``--teacher-arch``; ``-r``, ``-a``,
``-b`` for the CE, KD and distiller weights; ``--nce_k``, ``--nce_t``, ...).
"""
from __future__ import annotations

import argparse
import sys

from rdkernels.harness.distillers import DISTILLERS, IMPLS, LossOptions
from rdkernels.harness.models import MODELS
from rdkernels.harness.train import SAMPLINGS, Trainer, TrainConfig


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="CIFAR-100 python-pickle folder (cifar-100-python or its parent); "
                   "default: a synthetic CIFAR-shaped dataset")
    g.add_argument("--synthetic-n", type=int, default=50_000, help="synthetic training images (default 50000)")
    g.add_argument("--synthetic-test-n", type=int, default=10_000)
    g.add_argument("--num-classes", type=int, default=100, help="synthetic classes (default 100)")
    g.add_argument("--image-size", type=int, default=32, help="synthetic image side (default 32)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", "--batch_size", type=int, default=64)
    g.add_argument("--epochs", type=int, default=None, help="default 240")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total")
    g.add_argument("--lr", "--learning_rate", type=float, default=0.05)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", "--weight_decay", type=float, default=5e-4)
    g.add_argument("--lr-decay-epochs", "--lr_decay_epochs", default="150,180,210")
    g.add_argument("--lr-decay-rate", "--lr_decay_rate", type=float, default=0.1)
    g.add_argument("--amp", action="store_true", help="mixed precision (autocast)")
    g.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default="bfloat16")
    g.add_argument("--cuda-graph", action="store_true",
                   help="record each training step once as a CUDA graph and replay it (takes host time out of "
                   "the step; float16 AMP and the reference CRD/WCoRD losses cannot be captured)")
    g.add_argument("--graph-warmup", type=int, default=3, help="eager steps before the step is captured")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic cuDNN kernels (default: cudnn.benchmark, as the reference)")
    g.add_argument("--out", default=None, help="run folder for log.csv, eval.csv, summary.json and last.pt")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (and at every epoch end)")
    g.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation after each epoch")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--resume", default=None, help="checkpoint to continue from (its config is used; "
                   "--epochs/--max-steps/--out given here override it)")


def _distill_args(p: argparse.ArgumentParser, *, compare: bool = False) -> None:
    g = p.add_argument_group("distillation")
    g.add_argument("--arch", "--model_s", default="resnet8x4", choices=sorted(MODELS), help="student")
    g.add_argument("--teacher-arch", "--model_t", default="resnet32x4", choices=sorted(MODELS))
    g.add_argument("--teacher", "--path_t", default=None,
                   help="teacher checkpoint from train-teacher; default: a randomly initialised teacher (timing only)")
    if compare:
        g.add_argument("--distill", default="crd",
                       help="crd|wcord|dcd|rrd, or a comma-separated list to compare several in one go")
    else:
        g.add_argument("--distill", choices=DISTILLERS, default="crd")
    if not compare:
        g.add_argument("--impl", choices=IMPLS, default="fused")
    g.add_argument("--backend", choices=("auto", "cuda", "triton", "torch"), default="auto",
                   help="rdkernels backend for the fused losses")
    g.add_argument("-r", "--gamma", type=float, default=None, help="CE weight (default: the reference's per method)")
    g.add_argument("-a", "--alpha", type=float, default=None, help="KD weight")
    g.add_argument("-b", "--beta", type=float, default=None, help="distiller weight")
    g.add_argument("--kd_T", type=float, default=4.0)
    g.add_argument("--feat_dim", type=int, default=128)
    g.add_argument("--nce_k", type=int, default=16384, help="CRD/WCoRD negatives; RRD queue size")
    g.add_argument("--nce_t", type=float, default=0.07)
    g.add_argument("--nce_m", type=float, default=0.5)
    g.add_argument("--rrd-tau-s", type=float, default=0.02)
    g.add_argument("--rrd-tau-t", type=float, default=0.1)
    g.add_argument("--wcord-lambda-local", type=float, default=1.0, help="WCoRD local (OT) term weight")
    g.add_argument("--wcord-eps", type=float, default=0.05, help="WCoRD Sinkhorn entropic eps")
    g.add_argument("--wcord-iters", type=int, default=100, help="WCoRD Sinkhorn iterations")
    g.add_argument("--mode", choices=("exact", "relax"), default="exact", help="contrast sampling mode")
    g.add_argument("--sampling", choices=SAMPLINGS, default="device",
                   help="contrast_idx source: device (batched on the GPU), workers (numpy in DataLoader "
                   "workers, as the reference), loss (contrast_idx=None: the loss's own uniform sampling)")
    g.add_argument("--workers", type=int, default=8, help="DataLoader workers for --sampling workers")
    g.add_argument("--no-index-checks", action="store_true",
                   help="skip the fused losses' host-synced checks, one sync per call each: index ranges (the "
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
        epochs=240 if args.epochs is None else args.epochs, max_steps=args.max_steps,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        lr_decay_epochs=tuple(int(e) for e in args.lr_decay_epochs.split(",") if e.strip()),
        lr_decay_rate=args.lr_decay_rate, amp=args.amp, amp_dtype=args.amp_dtype, device=args.device,
        seed=args.seed, deterministic=args.deterministic, out=args.out, log_every=args.log_every,
        save_every=args.save_every, cuda_graph=args.cuda_graph, graph_warmup=args.graph_warmup,
        eval_every_epoch=not args.no_eval, progress=not args.no_progress, loss=loss)
    for name in ("arch", "teacher_arch", "teacher", "distill", "impl", "backend", "gamma", "alpha", "beta",
                 "mode", "sampling", "workers"):
        if hasattr(args, name):
            fields[name] = getattr(args, name)
    if hasattr(args, "no_index_checks"):
        fields["index_checks"] = not args.no_index_checks
    fields.update(extra)
    return TrainConfig(**fields)


def _train(args, cfg: TrainConfig) -> None:
    if args.resume:
        overrides = {k: v for k, v in (("epochs", args.epochs), ("max_steps", args.max_steps), ("out", args.out))
                     if v is not None}
        trainer = Trainer.resume(args.resume, **overrides)
    else:
        if cfg.distill is not None and not cfg.teacher:
            print("note: no --teacher given, distilling from a randomly initialised teacher "
                  "(fine for timing, not for accuracy)", file=sys.stderr)
        trainer = Trainer(cfg)
    summary = trainer.run()
    last = summary["last"] or {}
    msg = f"done: step {summary['final_step']}, loss {last.get('loss', float('nan')):.4f}"
    if summary["eval"]:
        msg += f", test acc {summary['eval']['acc']:.2f}%"
    if summary["steps_per_s"]:
        msg += f", {summary['steps_per_s']:.2f} steps/s"
    print(msg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdkernels.harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-teacher", help="train a model with cross-entropy (the teacher)")
    p.add_argument("--arch", "--model", default="resnet32x4", choices=sorted(MODELS))
    _common(p)

    p = sub.add_parser("distill", help="distil a student from a trained teacher")
    _distill_args(p)
    _common(p)

    p = sub.add_parser("compare", help="reference vs fused vs KD-only for a fixed number of steps")
    _distill_args(p, compare=True)
    _common(p)
    p.add_argument("--steps", type=int, default=200, help="training steps per run")
    p.add_argument("--warmup", type=int, default=20, help="steps excluded from the timing")
    p.add_argument("--results", default="benchmarks/results", help="folder for the JSON and PNG")
    p.add_argument("--no-plot", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "train-teacher":
        _train(args, _config(args, distill=None))
    elif args.command == "distill":
        _train(args, _config(args))
    else:
        from rdkernels.harness.compare import compare
        names = [d.strip() for d in args.distill.split(",") if d.strip()]
        bad = [d for d in names if d not in DISTILLERS or d == "kd"]
        if bad or not names:
            parser.error("--distill takes crd, wcord, dcd, rrd or a comma-separated list of them, "
                         f"got {args.distill!r}")
        for name in names:
            cfg = _config(args, impl="fused", distill=name)
            compare(cfg, steps=args.steps, warmup=args.warmup, out_dir=args.results, plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
