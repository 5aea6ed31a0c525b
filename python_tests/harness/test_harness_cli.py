"""The command line: where a resumed run writes, which options a resume may
change, compare's own options, and user errors as one line."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from harness_helpers import TINY_LOSS, require_loss, single_thread, tiny_config  # noqa: F401 (autouse fixture)
from rdkernels.harness import __main__ as cli
from rdkernels.harness.__main__ import main
from rdkernels.harness import data as hdata
from rdkernels.harness.compare import compare, format_report, nudge_one_ulp_, result_stem, rounding_control_losses
from rdkernels.harness.models import build_model
from rdkernels.harness.train import Trainer

TINY = ["--synthetic-n", "32", "--synthetic-test-n", "8", "--num-classes", "2", "--image-size", "16",
        "--batch-size", "4", "--device", "cpu", "--no-progress"]
TEACHER = ["train-teacher", "--arch", "resnet8_tiny", *TINY]
DISTILL = ["distill", "--arch", "resnet8_tiny", "--teacher-arch", "resnet8_tiny", "--distill", "crd",
           "--nce_k", "16", "--feat_dim", "16", *TINY]


def _logged_steps(folder) -> list[int]:
    with open(folder / "log.csv", newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


def _final_step(folder) -> int:
    return json.loads((folder / "summary.json").read_text())["final_step"]


def test_resume_writes_next_to_the_checkpoint(tmp_path, monkeypatch):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    assert main([*TEACHER, "--max-steps", "3", "--out", "runs/t"]) == 0
    monkeypatch.chdir(b)
    assert main(["train-teacher", "--resume", "../A/runs/t/last.pt", "--max-steps", "6"]) == 0
    assert not (b / "runs").exists()
    run = a / "runs" / "t"
    assert _final_step(run) == 6 and _logged_steps(run) == list(range(1, 7))
    # new checkpoints hold the run folder as an absolute path
    assert torch.load(run / "last.pt", weights_only=False)["config"]["out"] == str(run.resolve())


def test_resume_refuses_another_recipe_or_command(tmp_path, capsys):
    require_loss("crd", "fused")
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert main([*TEACHER, "--max-steps", "2", "--out", str(teacher)]) == 0
    assert main([*DISTILL, "--max-steps", "2", "--out", str(student)]) == 0
    capsys.readouterr()

    assert main(["train-teacher", "--resume", str(student / "last.pt")]) == 2
    assert "distillation checkpoint (--distill crd); continue it with `distill --resume" in capsys.readouterr().err
    assert main(["distill", "--resume", str(teacher / "last.pt")]) == 2
    assert "teacher-training checkpoint; continue it with `train-teacher --resume" in capsys.readouterr().err
    assert main(["distill", "--resume", str(student / "last.pt"), "--distill", "rrd", "--nce_k", "999",
                 "--batch-size", "8", "--max-steps", "4", "-b", "0.5"]) == 2
    err = capsys.readouterr().err
    for part in ("--distill rrd (the checkpoint has crd)", "--nce_k 999 (the checkpoint has 16)",
                 "--batch-size 8 (the checkpoint has 4)", "--beta 0.5 (the checkpoint has 0.8)"):
        assert part in err
    assert _final_step(student) == 2  # nothing ran

    # the stored values typed again (the loss weights as the values they give: CRD's -r 1 -b 0.8
    # where the run left them unset), and the run options, are accepted
    assert main(["distill", "--resume", str(student / "last.pt"), "--distill", "crd", "--nce_k", "16",
                 "-r", "1", "-a", "0", "-b", "0.8",
                 "--batch_size", "4", "--max-steps", "4", "--log-every", "1", "--save-every", "3", "--no-eval",
                 "--backend", "torch", "--device", "cpu", "--no-index-checks"]) == 0
    cfg = json.loads((student / "summary.json").read_text())["config"]
    assert (cfg["max_steps"], cfg["log_every"], cfg["save_every"], cfg["eval_every_epoch"], cfg["backend"],
            cfg["index_checks"]) == (4, 1, 3, False, "torch", False)
    assert _logged_steps(student) == [1, 2, 3, 4]


def test_resume_of_a_finished_run_says_so_and_keeps_its_summary(tmp_path, capsys):
    assert main([*TEACHER, "--max-steps", "3", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.json").read_text()
    capsys.readouterr()
    assert main(["train-teacher", "--resume", str(tmp_path / "last.pt")]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "summary.json").read_text() == summary


@pytest.mark.parametrize("option", [["--out", "x"], ["--resume", "x.pt"], ["--max-steps", "3"], ["--epochs", "1"],
                                    ["--save-every", "2"], ["--no-eval"], ["--log-every", "2"]])
def test_compare_takes_only_its_own_options(option, capsys):
    with pytest.raises(SystemExit) as exc:  # --steps 1 --warmup 1: fail fast should the option be taken
        main(["compare", *option, "--steps", "1", "--warmup", "1"])
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("names", ["crd,foo", "kd", ",", "crd;dcd"])
def test_compare_checks_its_distillers_while_parsing(names, capsys):
    with pytest.raises(SystemExit) as exc:  # a usage error before any model is built
        main(["compare", "--distill", names, "--steps", "1", "--warmup", "1"])
    assert exc.value.code == 2
    assert f"argument --distill: takes crd, wcord, dcd, rrd or a comma-separated list of them, got {names!r}" \
        in capsys.readouterr().err


def test_compare_runs_the_steps_asked_for_whatever_the_epochs(tmp_path):
    require_loss("dcd", "fused")
    require_loss("dcd", "reference")
    # 8 steps an epoch and 1 epoch: compare still runs 12 steps
    report = compare(tiny_config(distill="dcd", epochs=1), steps=12, warmup=2, out_dir=tmp_path, plot=False)
    assert [len(run["loss"]) for run in report["runs"].values()] == [12, 12, 12]
    assert report["steps"] == 12 and all(run["steps"] == 12 for run in report["runs"].values())
    assert json.loads(Path(report["json"]).read_text())["steps"] == 12


@pytest.mark.parametrize("name", ["crd", "dcd"])
def test_rounding_control_is_the_fused_run_with_its_last_bits_moved(tmp_path, name):
    """The control repeats compare's fused run exactly without a nudge (same seed,
    data, initial state: nothing else differs), and strays from it with one; the
    report sets the reference/fused difference against the larger of its two spreads."""
    require_loss(name, "fused")
    require_loss(name, "reference")
    cfg = tiny_config(distill=name)
    report = compare(cfg, steps=12, warmup=2, out_dir=tmp_path, plot=True)
    fused = report["runs"]["fused"]["loss"]
    train_set, test_set = hdata.load_dataset(None, synthetic_n=cfg.synthetic_n, synthetic_test_n=cfg.synthetic_test_n,
                                             num_classes=cfg.num_classes, image_size=cfg.image_size, seed=cfg.seed)
    fused_cfg = dataclasses.replace(cfg, impl="fused", epochs=0, max_steps=12, out=None, save_every=None,
                                    eval_every_epoch=False)
    assert rounding_control_losses(fused_cfg, 12, train_set, test_set, direction=0) == fused
    control = report["rounding_control"]
    assert set(control["loss"]) == {"up", "down"}
    spreads = []
    for label, direction in (("up", 1), ("down", -1)):
        loss = control["loss"][label]
        assert loss == rounding_control_losses(fused_cfg, 12, train_set, test_set, direction=direction)
        spreads.append(max(abs(a - b) for a, b in zip(loss, fused)))
    assert control["loss"]["up"] != control["loss"]["down"] and min(spreads) > 0
    assert control["max_abs_loss_diff_vs_fused"] == max(spreads)
    assert report["loss_diff_vs_rounding"] == pytest.approx(report["max_abs_loss_diff"] / max(spreads))
    assert json.loads(Path(report["json"]).read_text())["rounding_control"] == control
    assert "float-rounding spread" in format_report(report)
    off = compare(cfg, steps=4, warmup=1, out_dir=tmp_path, plot=False, rounding_control=False)
    assert "rounding_control" not in off and "loss_diff_vs_rounding" not in off


@pytest.mark.parametrize("direction", [1, -1])
def test_nudge_moves_every_weight_by_one_ulp(direction):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    before = [p.detach().clone() for p in model.parameters()]
    nudge_one_ulp_(model, direction)
    for old, new in zip(before, model.parameters()):
        assert ((new - old) * direction > 0).all()
        assert torch.equal(torch.nextafter(new, torch.full_like(new, -direction * float("inf"))), old)
    with pytest.raises(ValueError, match="direction must be 1 or -1"):
        nudge_one_ulp_(model, 0)


def test_compare_refuses_a_step_it_cannot_capture_before_any_run(monkeypatch, capsys):
    """--cuda-graph where the fused step cannot be recorded (no GPU; float16 AMP) is
    refused up front: the reference CRD run, eager since its own step cannot be
    captured, used to train all its steps before the fused run was refused."""
    require_loss("crd", "fused")
    started = []

    class NoRun:
        def __init__(self, cfg, **kwargs):
            started.append(cfg.impl)
            raise AssertionError(f"the {cfg.impl} run started")

    monkeypatch.setattr("rdkernels.harness.compare.Trainer", NoRun)
    refusals = [(dict(device="cpu"), "needs a CUDA device")]
    if torch.cuda.is_available():
        refusals.append((dict(device="cuda", amp=True, amp_dtype="float16"), "float16"))
    for options, reason in refusals:
        with pytest.raises(ValueError, match=reason):
            compare(tiny_config(distill="crd", cuda_graph=True, **options), steps=4, warmup=1, plot=False)
    assert main(["compare", "--distill", "crd", "--cuda-graph", "--steps", "4", "--warmup", "1", *TINY]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: cuda_graph") and started == []


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    require_loss("crd", "fused")
    cases = [
        ([*TEACHER, "--data", str(tmp_path / "nowhere"), "--max-steps", "1"], "error: no CIFAR-100"),
        (["train-teacher", "--resume", str(tmp_path / "missing.pt")], "error: "),
        ([*TEACHER, "--lr-decay-epochs", "150;180", "--max-steps", "1"], "error: --lr-decay-epochs"),
        ([*DISTILL, "--backend", "cuda", "--max-steps", "1"], "error: backend 'cuda'"),  # BackendUnavailable
        ([*DISTILL, "--teacher", str(tmp_path / "none.pt"), "--max-steps", "1"],
         f"error: --teacher {str(tmp_path / 'none.pt')!r} not found"),
    ]
    for argv, start in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert last.startswith(start) and "Traceback" not in err, err

    def broken(self, *args, **kwargs):
        raise RuntimeError("an unexpected failure")

    monkeypatch.setattr(cli.Trainer, "run", broken)
    with pytest.raises(RuntimeError, match="unexpected failure"):
        main([*TEACHER, "--max-steps", "1"])


def test_unreadable_checkpoints_are_one_error_line_naming_the_option(tmp_path, capsys):
    text, folder, weights = tmp_path / "notes.pt", tmp_path / "runs", tmp_path / "weights.pt"
    text.write_text("not a checkpoint")
    folder.mkdir()
    torch.save({"model": build_model("resnet8_tiny", num_classes=2).state_dict()}, weights)
    cases = [
        (["distill", "--resume", str(text)], f"error: --resume {str(text)!r} is not a checkpoint torch.load can read"),
        (["distill", "--resume", str(folder)], f"error: --resume {str(folder)!r} is a folder"),
        (["train-teacher", "--resume", str(weights)], f"error: --resume {str(weights)!r} holds no run config"),
        ([*DISTILL, "--teacher", str(text), "--max-steps", "1"],
         f"error: --teacher {str(text)!r} is not a checkpoint torch.load can read"),
    ]
    for argv, start in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err   # (after a note on the synthetic data where the run got that far)
        assert err.strip().splitlines()[-1].startswith(start) and "Traceback" not in err, err


def test_a_run_is_not_started_over_another_runs_folder(tmp_path, capsys):
    """A fresh run, or a resumed one sent to another run's folder with --out, is refused
    before it writes anything there; a resumed run goes on in its own folder."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*TEACHER, "--max-steps", "3", "--out", str(first)]) == 0
    assert main([*TEACHER, "--max-steps", "2", "--out", str(second)]) == 0
    files = {p.name: p.read_bytes() for p in first.iterdir()}
    capsys.readouterr()
    assert main([*TEACHER, "--max-steps", "2", "--out", str(first)]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"error: --out {first} already holds a run (last.pt, log.csv) that this run would overwrite; "
        "continue it with --resume ")
    assert main(["train-teacher", "--resume", str(second / "last.pt"), "--max-steps", "4", "--out", str(first)]) == 2
    assert "give another --out or delete the folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in first.iterdir()} == files
    assert main(["train-teacher", "--resume", str(first / "last.pt"), "--max-steps", "5"]) == 0
    assert _logged_steps(first) == list(range(1, 6))


def test_interleaved_runs_train_as_they_would_alone(tmp_path):
    """compare times its runs in turns; each keeps its own random state across
    turns. With the loss sampling its negatives from the process-wide generator
    (``sampling="loss"``), a run that drew from another's stream would see other
    negatives: every run's losses must equal those of the same run made alone."""
    require_loss("crd", "fused")
    require_loss("crd", "reference")
    cfg = tiny_config(distill="crd", sampling="loss", epochs=1)
    report = compare(cfg, steps=8, warmup=2, out_dir=tmp_path, plot=False, turn_steps=3)
    assert report["timing"] == "interleaved, 3 steps a turn"
    for name in ("reference", "fused"):  # 6 timed steps: two turns, a ratio to the KD step for each
        run = report["runs"][name]
        assert len(run["turn_ms_per_step"]) == len(run["step_ratio_vs_kd_by_turn"]) == 2
        assert min(run["step_ratio_vs_kd_by_turn"]) <= run["step_ratio_vs_kd"] <= max(run["step_ratio_vs_kd_by_turn"])
    alone_cfg = dataclasses.replace(cfg, epochs=0, max_steps=8)
    for name, run_cfg in (("reference", dataclasses.replace(alone_cfg, impl="reference")),
                          ("fused", dataclasses.replace(alone_cfg, impl="fused")),
                          ("kd", dataclasses.replace(alone_cfg, distill="kd", impl="fused", gamma=None, alpha=None,
                                                       beta=None))):
        alone = Trainer(run_cfg)
        alone.run()
        assert report["runs"][name]["loss"] == [row["loss"] for row in alone.history], name
        assert report["runs"][name]["steps"] == 8 and report["runs"][name]["steps_per_s"] > 0


def test_compare_profiles_extra_steps_apart_from_the_timed_ones(tmp_path):
    """--profile-steps: each run takes that many more steps under the profiler,
    after the timed ones; the loss curves and step counts are the unprofiled run's."""
    require_loss("dcd", "fused")
    require_loss("dcd", "reference")
    cfg = tiny_config(distill="dcd")
    plain = compare(cfg, steps=5, warmup=2, out_dir=tmp_path, plot=False)
    profiled = compare(cfg, steps=5, warmup=2, out_dir=tmp_path, plot=False, profile_steps=2)
    for name, run in profiled["runs"].items():
        assert run["loss"] == plain["runs"][name]["loss"] and run["steps"] == 5
        prof = run["profile"]
        assert prof["steps"] == 2 and prof["ms_per_step"] > 0 and prof["top"]
        assert sum(row["ms_per_step"] for row in prof["top"]) <= prof["ms_per_step"] * (1 + 1e-9)
        assert "profile" not in plain["runs"][name]
    text = format_report(profiled)
    assert "profiled steps; the costliest:" in text and "ms of CPU time of the ops themselves" in text
    with pytest.raises(ValueError, match="profile_steps must be >= 0"):
        compare(cfg, steps=5, warmup=2, plot=False, profile_steps=-1)


def test_a_profiler_failure_keeps_the_comparison(tmp_path, monkeypatch):
    """The profile comes after the timed steps: if it cannot run, the timings and loss
    curves are still reported, with the reason in place of the profile."""
    require_loss("dcd", "fused")
    require_loss("dcd", "reference")

    def broken(*args, **kwargs):
        raise RuntimeError("CUPTI unavailable")

    monkeypatch.setattr("rdkernels.harness.compare.profile_kernels", broken)
    report = compare(tiny_config(distill="dcd"), steps=4, warmup=1, out_dir=tmp_path, plot=False, profile_steps=2)
    saved = json.loads(Path(report["json"]).read_text())
    for run in saved["runs"].values():
        assert run["profile"] == {"error": "RuntimeError: CUPTI unavailable"} and len(run["loss"]) == 4
    assert "not profiled (RuntimeError: CUPTI unavailable)" in format_report(report)


def test_compare_needs_a_warmup_step():
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        compare(tiny_config(distill="dcd"), steps=4, warmup=0, plot=False)


SYNTHETIC_NOTE = "note: no --data given, training on a synthetic CIFAR-shaped dataset"


def test_a_run_without_data_says_it_trains_on_synthetic_data(tmp_path, capsys):
    require_loss("dcd", "fused")
    require_loss("dcd", "reference")
    teacher = tmp_path / "teacher"
    runs = [[*TEACHER, "--max-steps", "1", "--out", str(teacher)],
            ["distill", "--arch", "resnet8_tiny", "--teacher-arch", "resnet8_tiny", "--distill", "dcd",
             "--feat_dim", "16", "--max-steps", "1", *TINY],
            ["compare", "--arch", "resnet8_tiny", "--teacher-arch", "resnet8_tiny", "--distill", "dcd",
             "--feat_dim", "16", "--steps", "2", "--warmup", "1", "--no-plot", "--results", str(tmp_path), *TINY]]
    for argv in runs:
        assert main(argv) == 0, argv
        err = capsys.readouterr().err
        assert err.count(SYNTHETIC_NOTE) == 1 and len(err.strip().splitlines()) <= 3, err  # --teacher's, --out's
        assert ("note: no --out given, nothing is saved" in err) == (argv[0] == "distill"), err
    # a resume trains on the checkpoint's data; a run given --data has nothing to note
    assert main(["train-teacher", "--resume", str(teacher / "last.pt"), "--max-steps", "2"]) == 0
    assert SYNTHETIC_NOTE not in capsys.readouterr().err
    assert main([*TEACHER, "--data", str(tmp_path / "nowhere"), "--max-steps", "1"]) == 2
    assert SYNTHETIC_NOTE not in capsys.readouterr().err


def test_the_compare_report_says_how_contrast_idx_was_sampled():
    def headline(**options):
        report = {"config": tiny_config(**options).to_dict(), "steps": 4, "warmup": 1, "device": "cpu",
                  "runs": {}, "speedup_fused_vs_reference": None}
        return format_report(report).splitlines()[0]

    assert headline(distill="crd").endswith("K=16, contrast_idx: device sampling, 4 steps (1 warm-up) on cpu")
    assert "K=16, contrast_idx: workers sampling, relax mode," in headline(distill="wcord", sampling="workers",
                                                                            mode="relax")
    assert "contrast_idx: loss sampling," in headline(distill="crd", sampling="loss", mode="relax")
    assert "contrast_idx" not in headline(distill="dcd") + headline(distill="rrd")


def test_a_teacher_checkpoint_of_another_arch_is_one_error_line(tmp_path, capsys):
    require_loss("crd", "fused")
    path = tmp_path / "resnet8x4_vanilla" / "ckpt.pth"  # RepDistiller's folder naming
    path.parent.mkdir()
    torch.save({"model": build_model("resnet8x4", num_classes=2).state_dict()}, path)
    assert main([*DISTILL, "--teacher", str(path), "--teacher-arch", "resnet32x4", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err
    assert "does not fit teacher_arch 'resnet32x4'" in errors[0] and "pass --teacher-arch resnet8x4" in errors[0]


ON_OFF = {"cuda-graph": "cuda_graph", "deterministic": "deterministic", "progress": "progress",
          "eval": "eval_every_epoch", "index-checks": "index_checks"}


def test_on_off_options_take_both_spellings_and_a_resume_can_set_them_either_way(tmp_path, capsys):
    parser, _ = cli._build_parser()
    for flag, field in ON_OFF.items():
        for argv, value in (([f"--{flag}"], True), ([f"--no-{flag}"], False)):
            assert getattr(cli._config(parser.parse_args(["distill", *argv])), field) is value, argv

    def stored(name):
        return json.loads((tmp_path / "summary.json").read_text())["config"][name]

    ckpt = str(tmp_path / "last.pt")
    assert main([*TEACHER, "--max-steps", "2", "--out", str(tmp_path), "--no-eval"]) == 0
    assert main(["train-teacher", "--resume", ckpt, "--max-steps", "3"]) == 0
    assert stored("eval_every_epoch") is False  # not given: the checkpoint's value
    assert main(["train-teacher", "--resume", ckpt, "--max-steps", "4", "--eval", "--deterministic"]) == 0
    assert (stored("eval_every_epoch"), stored("deterministic")) == (True, True)
    assert main(["train-teacher", "--resume", ckpt, "--max-steps", "5", "--no-eval", "--no-deterministic"]) == 0
    assert (stored("eval_every_epoch"), stored("deterministic")) == (False, False)
    # a run started with --cuda-graph on a GPU continues on a CPU without it
    state = torch.load(ckpt, weights_only=False)
    state["config"]["cuda_graph"] = True
    torch.save(state, tmp_path / "gpu.pt")
    capsys.readouterr()
    assert main(["train-teacher", "--resume", str(tmp_path / "gpu.pt"), "--max-steps", "6"]) == 2
    assert "cuda_graph (--cuda-graph) needs a CUDA device" in capsys.readouterr().err
    assert main(["train-teacher", "--resume", str(tmp_path / "gpu.pt"), "--max-steps", "6", "--no-cuda-graph"]) == 0
    assert stored("cuda_graph") is False and _final_step(tmp_path) == 6
    # the recipe still may not change, and the error lists the on/off run options by both spellings
    assert main(["train-teacher", "--resume", ckpt, "--max-steps", "7", "--amp"]) == 2
    err = capsys.readouterr().err
    assert "--amp True (the checkpoint has False)" in err and "--[no-]eval, " in err


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "argument --batch-size/--batch_size: must be >= 1, got 0"),
    (["--epochs", "-1"], "argument --epochs: must be >= 0, got -1"),
    (["--max-steps", "0"], "argument --max-steps: must be >= 1, got 0"),
    (["--log-every", "0"], "argument --log-every: must be >= 1, got 0"),
    (["--save-every", "0"], "argument --save-every: must be >= 1, got 0"),
    (["--synthetic-n", "0"], "argument --synthetic-n: must be >= 1, got 0"),
    (["--graph-warmup", "zero"], "argument --graph-warmup: takes an integer, got 'zero'"),
    (["--lr", "-0.1"], "argument --lr/--learning_rate: must be a finite number >= 0, got -0.1"),
    (["--weight-decay", "inf"], "argument --weight-decay/--weight_decay: must be a finite number >= 0, got inf"),
    (["--momentum", "fast"], "argument --momentum: takes a number, got 'fast'"),
    (["--device", "gpu"], "argument --device: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    (["--device", "cuda:99"], "argument --device: device 'cuda:99': torch sees "),
])
def test_a_count_below_its_least_is_a_usage_error_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*TEACHER, *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    # the error and where the options are listed, not the usage block of every option
    assert message in err and "usage:" not in err and "(see python -m rdkernels.harness train-teacher --help)" in err


def test_worker_and_loss_counts_are_checked_too(capsys):
    for argv, message in ((["--workers", "-1"], "argument --workers: must be >= 0, got -1"),
                          (["--nce_k", "0"], "argument --nce_k: must be >= 1, got 0"),
                          (["--nce_t", "0"], "argument --nce_t: must be a finite number > 0, got 0"),
                          (["--kd_T", "nan"], "argument --kd_T: must be a finite number > 0, got nan"),
                          (["-b", "inf"], "argument -b/--beta: must be a finite number >= 0, got inf"),
                          (["--nce_m", "1.5"], "argument --nce_m: must be a finite number >= 0 and <= 1, got 1.5"),
                          (["--turn-steps", "0"], "argument --turn-steps: must be >= 1, got 0")):
        command = ["compare", "--steps", "2", "--warmup", "1"] if argv[0] == "--turn-steps" else DISTILL
        with pytest.raises(SystemExit) as exc:
            main([*command, *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_run_that_would_train_nothing_or_checkpoint_nowhere_is_refused(tmp_path, capsys):
    assert main([*TEACHER, "--epochs", "0"]) == 2
    assert "error: --epochs 0 means no epoch limit: give --max-steps" in capsys.readouterr().err
    assert main([*TEACHER, "--max-steps", "2", "--save-every", "1"]) == 2
    assert "error: --save-every needs --out" in capsys.readouterr().err
    assert main([*TEACHER, "--epochs", "0", "--max-steps", "2", "--save-every", "1", "--out", str(tmp_path)]) == 0
    assert _final_step(tmp_path) == 2
    # the Python API names the field
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        Trainer(tiny_config(batch_size=0))
    with pytest.raises(ValueError, match="loss.nce_k must be an integer >= 1, got 0"):
        Trainer(tiny_config(loss=dataclasses.replace(TINY_LOSS, nce_k=0)))
    with pytest.raises(ValueError, match="epochs=0 means no epoch limit"):
        Trainer(tiny_config(epochs=0))
    with pytest.warns(UserWarning, match="save_every=2 is ignored"):
        Trainer(tiny_config(save_every=2, max_steps=1))


def test_compare_reports_of_other_settings_do_not_overwrite_one_another(tmp_path):
    require_loss("crd", "fused")
    require_loss("crd", "reference")
    paths = set()
    for sampling in ("device", "loss"):
        report = compare(tiny_config(distill="crd", sampling=sampling), steps=2, warmup=1, out_dir=tmp_path,
                         plot=False)
        paths.add(report["json"])
    assert len(paths) == 2 and all(Path(p).exists() for p in paths)


def test_the_benchmark_settings_keep_the_report_name_readme_cites():
    device = "NVIDIA H100 80GB HBM3"
    stem = "train_crd_resnet32x4_resnet8x4_nvidia-h100-80gb-hbm3"
    parser, _ = cli._build_parser()
    # README's (and benchmarks/targets.py's) command: compare --distill crd ... --no-index-checks
    args = parser.parse_args(["compare", "--distill", "crd", "--steps", "200", "--warmup", "20", "--no-index-checks"])
    cfg = cli._config(args, impl="fused", distill="crd")
    assert result_stem(cfg, device) == stem
    assert result_stem(dataclasses.replace(cfg, amp=True, cuda_graph=True), device) == \
        f"{stem}_amp-bfloat16_cuda-graph"
    other = dataclasses.replace(cfg, sampling="workers", workers=4, mode="relax", batch_size=128, backend="triton",
                                index_checks=True, loss=dataclasses.replace(cfg.loss, nce_k=4096))
    assert result_stem(other, device) == \
        f"{stem}_sampling-workers_workers-4_mode-relax_batch-128_k-4096_backend-triton_index-checks"
    assert result_stem(dataclasses.replace(cfg, data="/data/cifar", seed=1), device) == f"{stem}_cifar100_seed-1"
    # --nce_k is CRD's and WCoRD's negatives and RRD's queue; DCD has neither, so it names no k
    dcd = dataclasses.replace(other, distill="dcd", sampling="device", mode="exact", batch_size=64)
    assert result_stem(dcd, device) == \
        "train_dcd_resnet32x4_resnet8x4_nvidia-h100-80gb-hbm3_backend-triton_index-checks"


def test_device_profile_counts_per_unit_of_work():
    """The profiling helper that compare and benchmarks.overhead share: entries per
    unit of work (a step, a call), costliest first, summing to the total."""
    from rdkernels.harness.profiling import device_profile
    x = torch.randn(64, 64)

    def work():
        for _ in range(3):
            torch.mm(x, x)
            torch.relu(x)
    what, ms, entries = device_profile(work, 3, torch.device("cpu"))
    assert what == "CPU time of the ops themselves"
    calls = {e.name: e.calls for e in entries}
    assert calls["aten::mm"] == 1 and calls["aten::relu"] == 1
    assert [e.ms for e in entries] == sorted((e.ms for e in entries), reverse=True)
    assert ms == pytest.approx(sum(e.ms for e in entries)) and ms > 0
