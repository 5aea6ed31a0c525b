import dataclasses
import json

import pytest
import torch

import rdkernels
from harness_helpers import require_loss, single_thread, tiny_config  # noqa: F401 (autouse fixture)
from rdkernels.backend import triton_interpreter_enabled, triton_unavailable_reason
from rdkernels.harness import __main__ as cli
from rdkernels.harness.__main__ import main
from rdkernels.harness.distillers import DEFAULT_WEIGHTS, DISTILLERS, build_distiller
from rdkernels.harness import teacher as teacher_mod
from rdkernels.harness.config import TrainConfig, lr_at
from rdkernels.harness.compare import nudge_one_ulp_
from rdkernels.harness.train import Trainer


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("name", DISTILLERS)
def test_each_distiller_trains(name, impl):
    require_loss(name, impl)
    trainer = Trainer(tiny_config(distill=name, impl=impl, max_steps=3))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    state_before = {k: v.clone() for k, v in trainer.criterion.state_dict().items()}
    trainer.run()
    assert trainer.step == 3 and len(trainer.history) == 3
    for row in trainer.history:
        assert all(torch.isfinite(torch.tensor(v)) for k, v in row.items() if k.startswith("loss"))
    if name != "kd":
        assert all(row["loss_feat"] != 0 for row in trainer.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    # banks / queues move during training; the teacher does not
    changed = [k for k, v in trainer.criterion.state_dict().items() if not torch.equal(v, state_before[k])]
    if name in ("crd", "wcord"):
        assert any("memory" in k for k in changed), changed
    if name == "rrd":
        assert any("queue" in k for k in changed), changed


def test_a_random_teacher_takes_batch_norm_statistics_from_the_first_training_images():
    """Without them (mean 0, variance 1 at initialisation) a random teacher's eval-mode
    logits grow through the layers and its softmax is one-hot (teacher.calibrate_random_teacher_)."""
    from rdkernels.harness import data as hdata
    trainer = Trainer(tiny_config(distill="kd", max_steps=1))
    teacher = trainer.teacher
    assert not teacher.training
    images = trainer.train_set.images[:teacher_mod.TEACHER_CALIBRATION_IMAGES]
    with torch.no_grad():
        first = teacher.conv1(hdata.augment(images, train=False))   # what the stem's BatchNorm saw
    # 32 images in batches of 4: the cumulative average of the batch means is the mean over all of them
    torch.testing.assert_close(teacher.bn1.running_mean, first.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    again = Trainer(tiny_config(distill="kd", max_steps=1)).teacher.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in teacher.state_dict().items())   # deterministic


def test_a_teacher_from_a_checkpoint_keeps_its_batch_norm_statistics(tmp_path):
    from rdkernels.harness.models import build_model
    saved = build_model("resnet8_tiny", 2)
    saved.bn1.running_mean.fill_(7.0)
    torch.save(saved.state_dict(), tmp_path / "teacher.pth")
    teacher = Trainer(tiny_config(distill="kd", max_steps=1, teacher=str(tmp_path / "teacher.pth"))).teacher
    assert torch.equal(teacher.bn1.running_mean, saved.bn1.running_mean)


@pytest.mark.parametrize("name", ["crd", "wcord", "dcd", "rrd"])
def test_fused_and_reference_losses_start_from_the_same_state(name):
    require_loss(name, "fused")
    require_loss(name, "reference")
    a = build_distiller(name, "reference", s_dim=8, t_dim=8, n_data=32, seed=4)
    b = build_distiller(name, "fused", s_dim=8, t_dim=8, n_data=32, seed=4)
    c = build_distiller(name, "fused", s_dim=8, t_dim=8, n_data=32, seed=5)
    sa, sb, sc = a.feature_loss.state_dict(), b.feature_loss.state_dict(), c.feature_loss.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)  # the seed matters
    assert a.needs_contrast_idx == b.needs_contrast_idx == (name in ("crd", "wcord"))


def _params(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()] + \
           [v.clone() for v in trainer.criterion.state_dict().values()]


@pytest.mark.parametrize("name,sampling,amp", [("crd", "device", None), ("crd", "workers", None),
                                               ("crd", "loss", None), ("crd", "device", "float16"),
                                               ("rrd", "device", None), ("dcd", "device", "bfloat16"),
                                               ("wcord", "device", None)])
def test_resume_continues_bit_for_bit(tmp_path, name, sampling, amp):
    require_loss(name, "fused")
    # steps_per_epoch = 8: stop mid-epoch (5) so the resume also restarts the batch order mid-way
    cfg = tiny_config(distill=name, impl="fused", sampling=sampling, max_steps=7, amp=amp is not None,
                      amp_dtype=amp or "bfloat16")
    straight = Trainer(cfg)
    straight.run(7)
    first = Trainer(dataclasses.replace(cfg, out=str(tmp_path)))
    first.run(5)
    ckpt = tmp_path / "last.pt"
    assert ckpt.exists()
    del first
    torch.manual_seed(12345)  # a fresh process would not share the RNG position
    resumed = Trainer.resume(ckpt)
    assert resumed.step == 5
    resumed.run(2)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history[5:]]
    for a, b in zip(_params(straight), _params(resumed)):
        assert torch.equal(a, b)
    for (k, a), b in zip(straight.optimizer.state_dict()["state"].items(),
                         resumed.optimizer.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    # the CSV log holds each step once
    steps = [int(line.split(",")[0]) for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 8))


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_worker_sampling_does_not_depend_on_worker_count(mode):
    require_loss("crd", "fused")
    runs = []
    for workers in (0, 2):
        trainer = Trainer(tiny_config(distill="crd", sampling="workers", mode=mode, workers=workers, max_steps=3))
        trainer.run()
        runs.append([r["loss"] for r in trainer.history])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_amp_training_is_finite(impl):
    require_loss("crd", impl)
    trainer = Trainer(tiny_config(distill="crd", impl=impl, amp=True, max_steps=3))
    trainer.run()
    assert all(torch.isfinite(torch.tensor([r["loss"], r["loss_feat"]])).all() for r in trainer.history)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_amp_runs_the_criterion_in_float32_outside_autocast(impl):
    """AMP covers the models; the loss runs in float32, as RepDistiller's does, so that
    reference and fused runs under --amp differ by their implementations only."""
    require_loss("crd", impl)
    trainer = Trainer(tiny_config(distill="crd", impl=impl, amp=True, amp_dtype="bfloat16", max_steps=2))
    models_autocast, criterion_calls = [], []
    for model in (trainer.model, trainer.teacher):
        model.register_forward_pre_hook(lambda module, args: models_autocast.append(torch.is_autocast_enabled("cpu")))
    forward = trainer.criterion.forward

    def recording_forward(feat_s, feat_t, logit_s, logit_t, *rest):
        dtypes = [t.dtype for t in (feat_s, feat_t, logit_s, logit_t)]
        criterion_calls.append((torch.is_autocast_enabled("cpu"), dtypes))
        return forward(feat_s, feat_t, logit_s, logit_t, *rest)

    trainer.criterion.forward = recording_forward
    trainer.run()
    assert models_autocast == [True] * 4
    assert criterion_calls == [(False, [torch.float32] * 4)] * 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in trainer.history)


def test_gamma_is_repdistillers_default_once_alpha_or_beta_is_given():
    # RepDistiller's train_student.py: -r defaults to 1; -a and -b have no default
    assert TrainConfig(distill="kd", alpha=0.9, beta=0.0).weights() == (1.0, 0.9, 0.0)
    assert TrainConfig(distill="crd", beta=0.5).weights() == (1.0, 0.0, 0.5)
    assert TrainConfig(distill="kd", alpha=0.5).weights() == (1.0, 0.5, DEFAULT_WEIGHTS["kd"][2])
    assert TrainConfig(distill="kd", gamma=0.3, alpha=0.9).weights() == (0.3, 0.9, 0.0)
    # with no weight given: the reference scripts' weights for the method
    for name in DISTILLERS:
        assert TrainConfig(distill=name).weights() == DEFAULT_WEIGHTS[name]
    assert TrainConfig(distill="kd").weights() == (0.1, 0.9, 0.0)
    # and from the command line
    parser, _ = cli._build_parser()
    args = parser.parse_args(["distill", "--distill", "kd", "-a", "0.9", "-b", "0"])
    assert cli._config(args).weights() == (1.0, 0.9, 0.0)
    args = parser.parse_args(["distill", "--distill", "kd"])
    assert cli._config(args).weights() == (0.1, 0.9, 0.0)


def test_resume_across_an_epoch_boundary(tmp_path):
    require_loss("crd", "fused")
    cfg = tiny_config(distill="crd", max_steps=10, save_every=4)
    straight = Trainer(dataclasses.replace(cfg, save_every=None))  # no run folder to checkpoint to
    straight.run()
    Trainer(dataclasses.replace(cfg, out=str(tmp_path))).run(8)  # exactly one epoch
    resumed = Trainer.resume(tmp_path / "last.pt")
    resumed.run()
    assert resumed.step == 10
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history[8:]]


def _loss_curves(cfg: TrainConfig, nudge: int = 0) -> torch.Tensor:
    """[steps, 2]: the run's total and feature loss a step; ``nudge`` 1 or -1 moves
    every initial student weight one ulp up or down first."""
    trainer = Trainer(cfg)
    if nudge:
        nudge_one_ulp_(trainer.model, nudge)
    trainer.run()
    rdkernels.set_backend("auto")
    return torch.tensor([[r["loss"], r["loss_feat"]] for r in trainer.history])


@pytest.mark.parametrize("name", ["crd", "dcd", "rrd", "wcord"])
def test_reference_and_fused_training_agree_under_the_interpreter(name, monkeypatch):
    """20 training steps, fused losses on the Triton kernels (the interpreter on CPU,
    compiled kernels on a GPU)."""
    require_loss(name, "fused")
    require_loss(name, "reference")
    on_gpu = torch.cuda.is_available()
    reason = triton_unavailable_reason(torch.device("cuda" if on_gpu else "cpu"))
    if reason:
        pytest.skip(reason)
    launches = []
    if triton_interpreter_enabled():  # count kernel launches, to know the Triton path really ran
        from triton.runtime.interpreter import InterpretedFunction
        run = InterpretedFunction.run
        monkeypatch.setattr(InterpretedFunction, "run",
                            lambda self, *a, **k: (launches.append(1), run(self, *a, **k))[1])
    if on_gpu:  # float32 convolutions, as on the CPU: TF32 turns a last-bit difference into a 1e-3 one
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    configs = {impl: tiny_config(distill=name, impl=impl, max_steps=20, epochs=3, device="auto",
                                 backend="triton" if impl == "fused" else "auto", deterministic=on_gpu)
               for impl in ("reference", "fused")}
    ref, fused = (_loss_curves(configs[impl]) for impl in ("reference", "fused"))
    assert ref.shape == (20, 2)
    # the first step's losses come from the same weights and batch: only the loss's own rounding differs
    torch.testing.assert_close(fused[0], ref[0], rtol=2e-4, atol=2e-4)
    if not on_gpu:
        torch.testing.assert_close(fused, ref, rtol=2e-4, atol=2e-4)
    else:
        # The GPU's other reduction orders can still flip a rounding that SGD then amplifies over
        # 20 steps (0.04 seen on an H100 with TF32 on). The yardstick is the harness's: the fused
        # run's own spread when its initial weights move one ulp, as far as it has grown by each
        # step, so the steps before any rounding shows keep the 2e-4
        spread = torch.stack([(_loss_curves(configs["fused"], nudge) - fused).abs() for nudge in (1, -1)])
        allowed = 2 * spread.amax(0).cummax(0).values + 2e-4
        difference = (fused - ref).abs()
        assert (difference <= allowed).all(), f"|fused - reference| by step\n{difference}\nallowed\n{allowed}"
    if triton_interpreter_enabled():
        assert len(launches) >= 20, "the fused run launched no Triton kernels"


def test_lr_schedule_is_the_reference_step_schedule():
    cfg = tiny_config()
    assert [lr_at(cfg, e) for e in (0, 149)] == [0.05, 0.05]
    assert lr_at(cfg, 150) == pytest.approx(0.005)
    assert lr_at(cfg, 180) == pytest.approx(0.0005)
    assert lr_at(cfg, 239) == pytest.approx(0.00005)


@pytest.mark.parametrize("field,value", [("distill", "fitnet"), ("impl", "eager"), ("sampling", "host"),
                                         ("mode", "loose"), ("amp_dtype", "float8"), ("backend", "cudnn")])
def test_a_name_outside_its_choices_is_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be one of .*got '{value}'"):
        Trainer(tiny_config(**{"distill": "crd", field: value}))


def test_cli_teacher_then_distill_then_compare(tmp_path, capsys):
    require_loss("crd", "fused")
    require_loss("crd", "reference")
    tiny = ["--synthetic-n", "32", "--synthetic-test-n", "8", "--num-classes", "2", "--image-size", "16",
            "--batch-size", "4", "--device", "cpu", "--no-progress"]
    teacher = tmp_path / "teacher"
    assert main(["train-teacher", "--arch", "resnet8_tiny", "--epochs", "1", "--out", str(teacher), *tiny]) == 0
    assert (teacher / "last.pt").exists() and (teacher / "eval.csv").exists()
    summary = json.loads((teacher / "summary.json").read_text())
    assert summary["final_step"] == 8 and summary["eval"]["epoch"] == 0   # epochs count from 0, as logged
    done = capsys.readouterr().out.splitlines()[-1]
    assert done.startswith("done: step 8") and "% (epoch 0)" in done   # the test accuracy says whose it is
    student = tmp_path / "student"
    distill = ["distill", "--arch", "resnet8_tiny", "--teacher-arch", "resnet8_tiny", "--teacher",
               str(teacher / "last.pt"), "--distill", "crd", "--nce_k", "16", "--feat_dim", "16", *tiny]
    assert main([*distill, "--max-steps", "3", "--out", str(student)]) == 0
    assert main(["distill", "--resume", str(student / "last.pt"), "--max-steps", "5", "--no-progress"]) == 0
    assert json.loads((student / "summary.json").read_text())["final_step"] == 5
    capsys.readouterr()
    assert main([*distill, "--teacher-arch", "resnet8", "--max-steps", "1"]) == 2  # a user error: one line
    assert "error: teacher checkpoint" in capsys.readouterr().err
    results = tmp_path / "results"
    assert main(["compare", "--arch", "resnet8_tiny", "--teacher-arch", "resnet8_tiny", "--distill", "crd,dcd",
                 "--nce_k", "16", "--feat_dim", "16", "--steps", "6", "--warmup", "2",
                 "--results", str(results), *tiny]) == 0
    (json_path,) = results.glob("train_crd_resnet8_tiny_resnet8_tiny_cpu*.json")
    report = json.loads(json_path.read_text())
    assert set(report["runs"]) == {"reference", "fused", "kd"}
    for run in report["runs"].values():
        assert len(run["loss"]) == 6 and run["steps_per_s"] > 0
    assert report["runs"]["fused"]["step_ratio_vs_kd"] > 0
    assert report["first_step_loss_diff"] <= report["max_abs_loss_diff"] < 1e-3
    assert json_path.with_suffix(".png").stat().st_size > 10_000
    assert "fused vs reference" in capsys.readouterr().out
    assert len(list(results.glob("train_dcd_*.png"))) == 1
    with pytest.raises(SystemExit):
        main(["compare", "--distill", "crd,fitnet"])
