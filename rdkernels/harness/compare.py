"""Full-training speed comparison: the same distillation with ``--impl reference``
and ``--impl fused``, plus a KD-only run, for a fixed number of steps.

Reports steps/s (after a warm-up), peak device memory, the distiller-step /
KD-step time ratio of each implementation, and both loss curves, with the
spread float rounding alone makes in them (``rounding_control_losses``), as a
JSON file and a PNG, both named with the device and the settings that differ
from the benchmark's (``result_stem``).

The timed steps are interleaved: the three runs take turns of ``turn_steps`` steps
(20 by default), so a drift of the machine's speed over the minutes the
comparison takes (clocks, other load, memory state) falls on all three alike
rather than on whichever ran last. On a 2-core CPU, the KD step timed in
separate processes varied by 20% (1.23 to 1.50 s), more than the 10% margin
the "fused CRD step <= 1.10 x the KD step" target is about.
"""
from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import re
from pathlib import Path

import torch

from rdkernels.harness import data as hdata
from rdkernels.harness.profiling import device_profile
from rdkernels.harness.config import TrainConfig, check_graphable, graph_blocker
from rdkernels.harness.runtime import command_line, device_name, progress_bar, resolve_device, versions
from rdkernels.harness.train import Trainer

TURN_STEPS = 20  # timed steps a run takes in its turn


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def compare(cfg: TrainConfig, steps: int = 200, warmup: int = 20, out_dir: str | Path = "benchmarks/results",
            plot: bool = True, turn_steps: int = TURN_STEPS, profile_steps: int = 0,
            rounding_control: bool = True) -> dict:
    """Run ``cfg.distill`` with both impls and a KD-only run for ``steps`` steps each.

    All three runs share the seed, data, batch order, teacher and student
    initialisation; the two impls also share the loss's initial state and the
    contrast indices, so their loss curves should lie on top of each other.

    Each run is built and takes its ``warmup`` steps in turn, which also measure
    its peak device memory (what it allocated at most, over what was allocated
    before it was built); then the timed steps are interleaved, ``turn_steps`` at
    a time, the order rotating every round. Each run keeps its own random state
    across the turns (the process-wide generators are swapped in and out with
    it), so it trains exactly as it would alone.

    With ``cfg.cuda_graph`` every run replays its step from a CUDA graph, except
    a reference whose step cannot be captured (CRD's and WCoRD's read values on
    the host every step): it runs eagerly, as its users run it, and the report
    says so.

    Each run is exactly ``steps`` steps: ``cfg.epochs`` and ``cfg.max_steps`` do
    not apply (the runs go on into further epochs as needed), and nothing is
    written but the report (no run folder, checkpoints or evaluation).

    ``profile_steps`` > 0: after the timed steps each run takes that many more
    under torch.profiler, and the report gives its device time per step and its
    costliest kernels (CPU ops on a CPU), which is where the distiller's
    step-time ratio to KD comes from. Those steps are not in the timing or the
    loss curves.

    ``rounding_control``: afterwards the fused run twice more, alone and untimed,
    with every initial student weight one ulp up, then one ulp down
    (:func:`rounding_control_losses`). How far their curves stray from the fused
    one is what float rounding alone does to these trainings, the yardstick for
    "the reference and fused curves agree to float tolerance": the report's
    ``loss_diff_vs_rounding`` is the largest reference/fused difference over the
    larger of the two spreads (two draws, since the largest difference between
    two chaotic trainings varies from one pair to the next).
    """
    _check_compare_args(cfg, steps, warmup, turn_steps, profile_steps)
    # epochs=0: no epoch limit, so max_steps alone sets the length and --steps N means N
    # (and the profiled steps come after them)
    cfg = dataclasses.replace(cfg, epochs=0, max_steps=steps + profile_steps, out=None, save_every=None,
                              eval_every_epoch=False)
    device = resolve_device(cfg.device)
    if cfg.cuda_graph:
        # the refusal the fused run's Trainer would make, made before the reference run
        # (eager where it cannot be captured) spends its steps for nothing
        check_graphable(dataclasses.replace(cfg, impl="fused"), device)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    train_set, test_set = hdata.load_dataset(
        cfg.data, synthetic_n=cfg.synthetic_n, synthetic_test_n=cfg.synthetic_test_n,
        num_classes=cfg.num_classes, image_size=cfg.image_size, seed=cfg.seed)
    runs = {
        "reference": dataclasses.replace(cfg, impl="reference"),
        "fused": dataclasses.replace(cfg, impl="fused"),
        "kd": dataclasses.replace(cfg, distill="kd", impl="fused", gamma=None, alpha=None, beta=None),
    }
    # one progress bar for the whole comparison, none per run and turn
    bar = progress_bar(total=steps * (len(runs) + len(NUDGES) * rounding_control), initial=0, enabled=cfg.progress,
                       desc=f"compare {cfg.distill}")
    started_runs = {name: _start_run(run_cfg, warmup, train_set, test_set, device, bar)
                    for name, run_cfg in runs.items()}
    trainers = {name: run.trainer for name, run in started_runs.items()}
    rng = {name: run.rng for name, run in started_runs.items()}
    turns = _interleave(trainers, rng, steps, turn_steps, bar)
    profiles = _profile_runs(trainers, rng, profile_steps, device) if profile_steps else {}
    for name in trainers:
        trainers[name].close()  # a DataLoader's workers (--sampling workers) exit now
    results = {name: _run_result(run, turns[name], steps, warmup, profiles.get(name))
               for name, run in started_runs.items()}
    fused_cfg = started_runs["fused"].trainer.cfg
    del trainers, started_runs  # their memory is free for the rounding control's runs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    controls = {}
    for name, direction in NUDGES.items() if rounding_control else ():
        controls[name] = rounding_control_losses(fused_cfg, steps, train_set, test_set, direction=direction)
        if bar is not None:
            bar.update(steps)
    if bar is not None:
        bar.close()
    _add_ratios_to_kd(results)

    dev_name = device_name(device)
    report = {
        "device": dev_name,
        "versions": versions(),
        "command": command_line(),
        "started_utc": started,
        "config": cfg.to_dict(),
        "steps": min(r["steps"] for r in results.values()),  # the steps run (each run runs ``steps``)
        "warmup": warmup,
        "timing": f"interleaved, {turn_steps} step{'' if turn_steps == 1 else 's'} a turn",
        **_agreement(results, controls),
        "runs": results,
    }
    return _write_report(report, Path(out_dir), result_stem(cfg, dev_name), plot)


def _check_compare_args(cfg: TrainConfig, steps: int, warmup: int, turn_steps: int, profile_steps: int) -> None:
    if cfg.distill in (None, "kd"):
        raise ValueError("compare needs a representation distiller: --distill crd|wcord|dcd|rrd")
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (got {warmup}): the warm-up steps also measure each run's peak "
                         "memory, before the runs' timed steps are interleaved")
    if steps <= warmup:
        raise ValueError(f"steps ({steps}) must exceed warmup ({warmup})")
    if turn_steps < 1:
        raise ValueError(f"turn_steps must be >= 1, got {turn_steps}")
    if profile_steps < 0:
        raise ValueError(f"profile_steps must be >= 0, got {profile_steps}")


@dataclasses.dataclass
class _StartedRun:
    trainer: Trainer
    eager_because: str | None      # why a --cuda-graph comparison runs this one eagerly
    peak_memory_bytes: int | None  # over what was allocated before it was built (None off a GPU)
    rng: dict                      # its random state, swapped in for each of its turns


def _start_run(cfg: TrainConfig, warmup: int, train_set, test_set, device: torch.device, bar) -> _StartedRun:
    """Build one of the compared runs and take its ``warmup`` steps, which also measure its peak memory."""
    eager_because = graph_blocker(cfg.distill, cfg.impl) if cfg.cuda_graph else None
    cfg = dataclasses.replace(cfg, progress=False, cuda_graph=cfg.cuda_graph and not eager_because)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    trainer = Trainer(cfg, train_set=train_set, test_set=test_set)
    summary = trainer.run(warmup)
    if bar is not None:
        bar.update(warmup)
    peak = summary["peak_memory_bytes"] - before if before is not None else None
    return _StartedRun(trainer, eager_because, peak, trainer.rng_state())


def _profile_runs(trainers: dict[str, Trainer], rng: dict[str, dict], steps: int, device: torch.device) -> dict:
    profiles = {}
    for name, trainer in trainers.items():
        trainer.set_rng_state(rng[name])
        try:
            profiles[name] = profile_kernels(trainer, steps, device)
        except Exception as exc:  # a profiler that cannot run here must not cost the timings above
            profiles[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return profiles


def _run_result(run: _StartedRun, turns: list[tuple[int, float]], steps: int, warmup: int,
                profile: dict | None) -> dict:
    """One run's entry in the report: its timing over its turns, memory and loss curves."""
    trainer = run.trainer
    timed, seconds = steps - warmup, sum(sec for _, sec in turns)
    history = trainer.history[:steps]
    result = {
        "impl": trainer.cfg.impl,
        "distill": trainer.cfg.distill,
        "cuda_graph": trainer.cfg.cuda_graph,
        "eager_because": run.eager_because,
        "steps": steps,
        "steps_per_s": timed / seconds,
        "ms_per_step": 1000.0 * seconds / timed,
        "turn_ms_per_step": [1000.0 * sec / n for n, sec in turns],
        "peak_memory_bytes": run.peak_memory_bytes,
        "loss": [row["loss"] for row in history],
        "loss_feat": [row.get("loss_feat", 0.0) for row in history],
        "loss_ce": [row["loss_ce"] for row in history],
    }
    if profile is not None:
        result["profile"] = profile
    return result


def _add_ratios_to_kd(results: dict) -> None:
    """Each distiller run's step time over the KD-only run's, overall and per round of turns."""
    kd_ms = results["kd"]["ms_per_step"]
    for name in ("reference", "fused"):
        ms = results[name]["ms_per_step"]
        results[name]["step_ratio_vs_kd"] = ms / kd_ms if ms and kd_ms else None
        # the same ratio within each round of turns: its spread says how far the machine's
        # speed moved during the comparison, i.e. what a difference in the ratio is worth
        results[name]["step_ratio_vs_kd_by_turn"] = [
            a / b for a, b in zip(results[name]["turn_ms_per_step"], results["kd"]["turn_ms_per_step"])]


def _agreement(results: dict, controls: dict) -> dict:
    """The report's speed-up and loss-agreement entries: reference against fused, and
    their largest loss difference against the rounding control's spread."""
    ref, fused = results["reference"], results["fused"]
    out = {
        "speedup_fused_vs_reference": (ref["ms_per_step"] / fused["ms_per_step"]
                                       if ref["ms_per_step"] and fused["ms_per_step"] else None),
        # step 1 runs both on the same weights and batch: its difference is the losses' arithmetic alone
        # (for CRD mostly the reference's float32 rounding of m*Pn + eps, README "Numerics"); later
        # steps add the drift of two trainings that started that far apart
        "first_step_loss_diff": (abs(ref["loss"][0] - fused["loss"][0]) if ref["loss"] and fused["loss"] else None),
        "max_abs_loss_diff": _max_abs_diff(ref["loss"], fused["loss"]),
    }
    if controls:
        spread = max(_max_abs_diff(loss, fused["loss"]) for loss in controls.values())
        out["rounding_control"] = {"run": ROUNDING_CONTROL, "loss": controls, "max_abs_loss_diff_vs_fused": spread}
        out["loss_diff_vs_rounding"] = (out["max_abs_loss_diff"] / spread
                                        if spread and out["max_abs_loss_diff"] is not None else None)
    return out


def _write_report(report: dict, out_dir: Path, stem: str, plot: bool) -> dict:
    """Save the report as ``<stem>.json`` (and its plot as ``<stem>.png``) in ``out_dir``, print it, return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    with open(json_path, "w") as fh:
        json.dump(report, fh, indent=2)
    report["json"] = str(json_path)
    if plot:
        report["png"] = str(plot_report(report, out_dir / f"{stem}.png"))
    print(format_report(report))
    print("wrote " + ", ".join(report[k] for k in ("json", "png") if k in report))
    return report


ROUNDING_CONTROL = ("fused, every initial student weight one ulp up, and again one ulp down (torch.nextafter); "
                    "alone and untimed")
NUDGES = {"up": 1, "down": -1}   # the rounding control's runs: which way the weights move


def _max_abs_diff(a: list[float], b: list[float]) -> float | None:
    return max((abs(x - y) for x, y in zip(a, b)), default=None)


def nudge_one_ulp_(model: torch.nn.Module, direction: int = 1) -> None:
    """Every floating-point parameter to the next representable value above it
    (``direction`` 1) or below it (-1)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be 1 or -1, got {direction!r}")
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_(torch.nextafter(p, torch.full_like(p, direction * float("inf"))))


def rounding_control_losses(cfg: TrainConfig, steps: int, train_set: hdata.ImageSet, test_set: hdata.ImageSet,
                            *, direction: int = 1) -> list[float]:
    """The loss curve of ``steps`` steps of the run ``cfg``, built afresh (same seed,
    data, batch order and initial state as compare's run of it) with every initial
    student weight one ulp up (``direction`` 1) or down (-1): the spread float
    rounding alone makes in a training
    curve. SGD on these networks amplifies a difference in the last bit to 1e-4 of
    the loss within ten steps and 1e-3 within fifty (resnet20 -> resnet8 on a CPU),
    so two correct float32 implementations of a loss are not expected to agree
    closer than this, and a curve that strays much further differs in its
    arithmetic, not in its rounding.
    ``direction=0`` reruns the run as it was (the tests check it repeats itself)."""
    trainer = Trainer(cfg, train_set=train_set, test_set=test_set)
    if direction:
        nudge_one_ulp_(trainer.model, direction)
    try:
        trainer.run(steps)
    finally:
        trainer.close()
    return [row["loss"] for row in trainer.history[:steps]]


def profile_kernels(trainer: Trainer, steps: int, device: torch.device, top: int = 12) -> dict:
    """``steps`` more steps of ``trainer`` under torch.profiler: device time per step
    (kernels, copies, memsets; on a CPU the ops' own CPU time) and the ``top``
    costliest entries, each with its time and calls per step."""
    what, ms, entries = device_profile(lambda: trainer.run(steps), steps, device)
    return {
        "steps": steps,
        "what": what,
        "ms_per_step": ms,
        "top": [{"name": e.name, "ms_per_step": e.ms, "calls_per_step": e.calls} for e in entries[:top]],
    }


def result_stem(cfg: TrainConfig, device: str) -> str:
    """The report files' name: distiller, models, device, AMP, CUDA graphs, then the
    settings that differ from the benchmark's (``setting_tags``), so that comparisons
    of other settings do not overwrite one another."""
    stem = f"train_{cfg.distill}_{cfg.teacher_arch}_{cfg.arch}_{_slug(device)}"
    stem += (f"_amp-{cfg.amp_dtype}" if cfg.amp else "") + ("_cuda-graph" if cfg.cuda_graph else "")
    return "".join([stem, *(f"_{tag}" for tag in setting_tags(cfg))])


# The settings a report's name leaves out: the benchmark's, as README's and benchmarks/targets.py's
# command runs it (``compare --distill crd --no-index-checks``, batch 64, K = 16384 on 50 000
# images), so its files keep the names they cite (train_crd_resnet32x4_resnet8x4_<device>.json).
BENCHMARK = TrainConfig(index_checks=False)


def setting_tags(cfg: TrainConfig) -> list[str]:
    """Short ``name-value`` tags for the settings of ``cfg`` that change what a comparison
    times or trains on and differ from ``BENCHMARK``'s, in a fixed order."""
    base = BENCHMARK
    tags = []
    if cfg.sampling != base.sampling:
        tags.append(f"sampling-{cfg.sampling}")
    if cfg.sampling == "workers" and cfg.workers != base.workers:
        tags.append(f"workers-{cfg.workers}")
    if cfg.mode != base.mode:
        tags.append(f"mode-{cfg.mode}")
    if cfg.batch_size != base.batch_size:
        tags.append(f"batch-{cfg.batch_size}")
    if cfg.loss.nce_k != base.loss.nce_k and cfg.distill in ("crd", "wcord", "rrd"):  # negatives, RRD's queue
        tags.append(f"k-{cfg.loss.nce_k}")
    if cfg.loss.feat_dim != base.loss.feat_dim:
        tags.append(f"dim-{cfg.loss.feat_dim}")
    if cfg.distill == "wcord" and cfg.loss.wcord_iters != base.loss.wcord_iters:
        tags.append(f"iters-{cfg.loss.wcord_iters}")
    if cfg.backend != base.backend:
        tags.append(f"backend-{cfg.backend}")
    if cfg.index_checks != base.index_checks:
        tags.append("index-checks" if cfg.index_checks else "no-index-checks")
    if cfg.deterministic != base.deterministic:
        tags.append("deterministic")
    tags += _data_tags(cfg, base)
    if cfg.seed != base.seed:
        tags.append(f"seed-{cfg.seed}")
    return [_slug(tag) for tag in tags]


def _data_tags(cfg: TrainConfig, base: TrainConfig) -> list[str]:
    """CIFAR-100, or the synthetic set's size, classes and image side where not CIFAR's."""
    if cfg.data:
        return ["cifar100"]
    sizes = (("n", cfg.synthetic_n, base.synthetic_n), ("classes", cfg.num_classes, base.num_classes),
             ("size", cfg.image_size, base.image_size))
    return [f"{name}-{value}" for name, value, default in sizes if value != default]


def _interleave(trainers: dict[str, Trainer], rng: dict[str, dict], steps: int, turn_steps: int,
                bar) -> dict[str, list[tuple[int, float]]]:
    """Run every trainer up to ``steps`` steps in turns of ``turn_steps``; each one's
    turns as (steps, seconds). Each turn restores the trainer's random state first
    and keeps it after, so the turns do not draw from one another's streams."""
    turns = {name: [] for name in trainers}
    names = list(trainers)
    turn = 0
    while any(t.step < steps for t in trainers.values()):
        for name in names[turn % len(names):] + names[:turn % len(names)]:  # who goes first rotates
            trainer = trainers[name]
            n = min(turn_steps, steps - trainer.step)
            if n <= 0:
                continue
            trainer.set_rng_state(rng[name])
            # timed from before its first batch is fetched (after a sync) to its last step (synced); the
            # trainer keeps its batch stream, so a loader's workers carry on across turns
            summary = trainer.run(n)
            rng[name] = trainer.rng_state()
            turns[name].append((n, n / summary["steps_per_s"]))
            if bar is not None:
                bar.update(n)
        turn += 1
    return turns


def _setting(cfg: dict) -> str:
    text = f"{cfg['teacher_arch']} -> {cfg['arch']}, batch {cfg['batch_size']}"
    if cfg["distill"] in ("crd", "wcord"):
        text += f", K={cfg['loss']['nce_k']}{_contrast_source(cfg)}"
    elif cfg["distill"] == "rrd":
        text += f", queue {cfg['loss']['nce_k']}"
    text += f", AMP {cfg['amp_dtype']}" if cfg["amp"] else ""
    return text + (", CUDA graphs" if cfg.get("cuda_graph") else "")


def _contrast_source(cfg: dict) -> str:
    """Where the runs' contrast_idx came from (``--sampling``, and ``--mode`` where a sampler
    of the harness drew them): the negatives, and the sampling's cost, differ between them."""
    sampling = cfg["sampling"]
    mode = f", {cfg['mode']} mode" if sampling != "loss" and cfg["mode"] != "exact" else ""
    return f", contrast_idx: {sampling} sampling{mode}"


def format_report(report: dict) -> str:
    """A small text table of the three runs."""
    cfg = report["config"]
    timing = f"; timed {report['timing']}" if report.get("timing") else ""
    lines = [f"{cfg['distill']}: {_setting(cfg)}, {report['steps']} steps ({report['warmup']} warm-up{timing}) "
             f"on {report['device']}",
             f"{'run':<10} {'steps/s':>9} {'ms/step':>9} {'peak MiB':>9} {'x KD step':>10}"]
    for name, r in report["runs"].items():
        sps = f"{r['steps_per_s']:.2f}" if r["steps_per_s"] else "-"
        ms = f"{r['ms_per_step']:.1f}" if r["ms_per_step"] else "-"
        mem = f"{r['peak_memory_bytes'] / 2**20:.0f}" if r["peak_memory_bytes"] else "-"
        ratio = f"{r['step_ratio_vs_kd']:.2f}" if r.get("step_ratio_vs_kd") else "-"
        by_turn = r.get("step_ratio_vs_kd_by_turn") or []
        spread = f" ({min(by_turn):.2f}-{max(by_turn):.2f} by turn)" if len(by_turn) > 1 else ""
        note = "  (eager: its step cannot be captured)" if r.get("eager_because") else ""
        lines.append(f"{name:<10} {sps:>9} {ms:>9} {mem:>9} {ratio:>10}{spread}{note}")
    if report["speedup_fused_vs_reference"]:
        lines.append(f"fused vs reference: step-time speed-up {report['speedup_fused_vs_reference']:.2f}x; "
                     f"|loss difference| at step 1 {report['first_step_loss_diff']:.3g}, "
                     f"at most {report['max_abs_loss_diff']:.3g} over the run")
    control = report.get("rounding_control")
    if control and control["max_abs_loss_diff_vs_fused"] is not None:
        ratio = report.get("loss_diff_vs_rounding")
        lines.append(f"float-rounding spread (fused, initial student weights one ulp up / down): |loss difference| "
                     f"at most {control['max_abs_loss_diff_vs_fused']:.3g}; reference vs fused is "
                     + (f"{ratio:.2f}x that" if ratio is not None else "not comparable (no spread)"))
    for name, r in report["runs"].items():
        prof = r.get("profile")
        if not prof:
            continue
        if "error" in prof:
            lines.append(f"{name}: not profiled ({prof['error']})")
            continue
        lines.append(f"{name}: {prof['ms_per_step']:.3f} ms of {prof['what']} per step, over {prof['steps']} "
                     "profiled steps; the costliest:")
        lines += [f"  {row['ms_per_step']:8.3f} ms  {row['calls_per_step']:6.1f}x  {row['name'][:90]}"
                  for row in prof["top"]]
    return "\n".join(lines)


def plot_report(report: dict, path: str | Path) -> Path:
    """Loss curves of both impls (total and distiller term), their distance from the
    fused curve beside the rounding control's, and the step times, one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    cfg = report["config"]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for name, style in (("reference", dict(color="tab:blue", lw=2.2, alpha=0.6)),
                        ("fused", dict(color="tab:orange", lw=1.0, ls="--"))):
        steps = range(1, len(runs[name]["loss"]) + 1)
        axes[0].plot(steps, runs[name]["loss"], label=f"{cfg['distill']} {name}", **style)
        axes[1].plot(steps, runs[name]["loss_feat"], label=f"{cfg['distill']} {name}", **style)
    axes[0].set(title="total training loss", xlabel="step", ylabel="loss")
    axes[1].set(title=f"{cfg['distill']} term", xlabel="step")
    # the curves lie on top of each other: their distance, against float rounding's (the control)
    fused = runs["fused"]["loss"]
    others = [("reference", runs["reference"]["loss"], dict(color="tab:blue"))]
    for name, loss in (report.get("rounding_control") or {}).get("loss", {}).items():
        others.append((f"fused, initial weights 1 ulp {name}", loss,
                       dict(color="tab:gray", ls=":" if name == "up" else "--")))
    for label, loss, style in others:
        axes[2].plot(range(1, len(loss) + 1), [abs(a - b) for a, b in zip(loss, fused)], label=label, **style)
    axes[2].set_yscale("symlog", linthresh=1e-6)
    axes[2].set(title="|total loss - fused's|", xlabel="step")
    for ax in axes[:3]:
        ax.legend()
        ax.grid(alpha=0.3)
    names = list(runs)
    ms = [runs[n]["ms_per_step"] or 0.0 for n in names]
    bars = axes[3].bar(names, ms, color=["tab:blue", "tab:orange", "tab:gray"])
    for bar, n in zip(bars, names):
        mem = runs[n]["peak_memory_bytes"]
        label = f"{bar.get_height():.1f} ms" + (f"\n{mem / 2**20:.0f} MiB" if mem else "")
        axes[3].annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=9)
    axes[3].set(title="time per training step", ylabel="ms")
    axes[3].margins(y=0.25)
    fig.suptitle(f"{cfg['distill']}: {_setting(cfg)}, on {report['device']}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
