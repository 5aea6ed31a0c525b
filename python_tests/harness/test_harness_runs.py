"""A run's bookkeeping: its log rows, eval.csv and summary.json across
interruptions and resumes, and the process-wide settings a Trainer touches."""
from __future__ import annotations

import csv
import os
import shutil
import time

import pytest
import torch

import rdkernels
from harness_helpers import require_loss, single_thread, tiny_config  # noqa: F401 (autouse fixture)
from rdkernels.harness.config import ResumeMismatch
from rdkernels.harness.train import Trainer


def _logged_steps(folder) -> list[int]:
    with open(folder / "log.csv", newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


def _interrupt_at(trainer: Trainer, step: int) -> None:
    """Make ``trainer`` raise KeyboardInterrupt (a Ctrl-C) when it starts step ``step``."""
    real = trainer.train_step

    def train_step(*args):
        if trainer.step == step - 1:
            raise KeyboardInterrupt
        return real(*args)

    trainer.train_step = train_step


def test_an_interrupted_run_resumes_with_every_log_row_once(tmp_path):
    # checkpoints every 3 steps but log rows every 10: the rows of steps 1-6 are
    # still pending in memory when the step-6 checkpoint is written
    trainer = Trainer(tiny_config(max_steps=12, save_every=3, log_every=10, out=str(tmp_path)))
    _interrupt_at(trainer, 8)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    resumed = Trainer.resume(tmp_path / "last.pt")
    assert resumed.step == 6
    resumed.run()
    assert _logged_steps(tmp_path) == list(range(1, 13))


def test_resuming_a_finished_run_keeps_its_summary(tmp_path):
    Trainer(tiny_config(max_steps=6, out=str(tmp_path))).run()
    files = {name: (tmp_path / name).read_bytes() for name in ("summary.json", "log.csv", "last.pt")}
    summary = Trainer.resume(tmp_path / "last.pt").run()
    assert summary["final_step"] == 6 and summary["steps"] == 6 and summary["last"]["step"] == 6
    for name, content in files.items():
        assert (tmp_path / name).read_bytes() == content, f"{name} was rewritten"


def test_eval_csv_has_a_header_and_each_epoch_once(tmp_path):
    cfg = tiny_config(max_steps=8, eval_every_epoch=True, out=str(tmp_path))  # 8 steps an epoch
    Trainer(cfg).run()
    shutil.copy(tmp_path / "last.pt", tmp_path / "step8.pt")
    Trainer.resume(tmp_path / "last.pt", max_steps=16).run()
    eval_csv = tmp_path / "eval.csv"
    with open(eval_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "step", "acc", "loss"]
    assert [(r["epoch"], r["step"]) for r in rows] == [("0", "8"), ("1", "16")]
    assert 0 <= float(rows[1]["acc"]) <= 100

    # a resume from the earlier checkpoint rewrites epoch 1 once; a file from
    # before eval.csv had a header gets one
    eval_csv.write_text("".join(line + "\n" for line in eval_csv.read_text().splitlines()[1:]))
    Trainer.resume(tmp_path / "step8.pt", max_steps=16).run()
    lines = eval_csv.read_text().splitlines()
    assert lines[0] == "epoch,step,acc,loss"
    assert [line.split(",")[:2] for line in lines[1:]] == [["0", "8"], ["1", "16"]]
    assert _logged_steps(tmp_path) == list(range(1, 17))


def test_a_trainer_restores_the_process_wide_settings(monkeypatch):
    require_loss("kd", "fused")
    monkeypatch.delenv("RDKERNELS_CHECK_INDICES", raising=False)
    backend = rdkernels.get_backend()
    trainer = Trainer(tiny_config(distill="kd", impl="fused", backend="torch", index_checks=False, max_steps=4))
    assert rdkernels.get_backend() == backend and "RDKERNELS_CHECK_INDICES" not in os.environ
    seen = []
    real = trainer.train_step

    def train_step(*args):
        seen.append((rdkernels.get_backend(), os.environ.get("RDKERNELS_CHECK_INDICES")))
        return real(*args)

    trainer.train_step = train_step
    trainer.run(2)
    assert seen == [("torch", "0")] * 2  # the run has its settings ...
    assert rdkernels.get_backend() == backend and "RDKERNELS_CHECK_INDICES" not in os.environ  # ... and only it
    # restored after an interrupted run too, and a value set before is put back
    monkeypatch.setenv("RDKERNELS_CHECK_INDICES", "1")
    _interrupt_at(trainer, 4)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert rdkernels.get_backend() == backend and os.environ["RDKERNELS_CHECK_INDICES"] == "1"


def test_resume_applies_run_options_and_refuses_recipe_changes(tmp_path):
    require_loss("crd", "fused")
    Trainer(tiny_config(distill="crd", max_steps=3, out=str(tmp_path))).run()
    ckpt = tmp_path / "last.pt"
    trainer = Trainer.resume(ckpt, expect_distill=True, max_steps=5, log_every=1, save_every=2, eval_every_epoch=True,
                             backend="torch", device="cpu", index_checks=False, batch_size=4, loss={"nce_k": 16})
    cfg = trainer.cfg
    assert (cfg.max_steps, cfg.log_every, cfg.save_every, cfg.eval_every_epoch, cfg.backend, cfg.index_checks) == \
        (5, 1, 2, True, "torch", False)
    with pytest.raises(ResumeMismatch, match=r"batch_size 8 \(the checkpoint has 4\); loss.nce_k 999 "
                                             r"\(the checkpoint has 16\)"):
        Trainer.resume(ckpt, batch_size=8, loss={"nce_k": 999})
    with pytest.raises(ResumeMismatch, match="distillation checkpoint"):
        Trainer.resume(ckpt, expect_distill=False)


def test_resume_compares_the_loss_weights_by_the_values_they_give(tmp_path):
    """An unset weight is the method's default (CRD: 1, 0, 0.8), and once alpha or
    beta is set an unset gamma is RepDistiller's 1: a KD run's 0.1 changes with -a alone."""
    require_loss("crd", "fused")
    Trainer(tiny_config(distill="kd", max_steps=2, out=str(tmp_path))).run()
    ckpt = tmp_path / "last.pt"
    assert Trainer.resume(ckpt, gamma=0.1, alpha=0.9, beta=0.0).cfg.weights() == (0.1, 0.9, 0.0)
    assert Trainer.resume(ckpt, gamma=0.1, alpha=0.9).cfg.gamma is None   # the stored config, unchanged
    with pytest.raises(ResumeMismatch, match=r": gamma 1.0 \(implied by alpha; the checkpoint has 0.1: "
                                             r"give gamma 0.1 to keep it\)\. Leave"):
        Trainer.resume(ckpt, alpha=0.9)   # -a alone: gamma becomes 1
    with pytest.raises(ResumeMismatch, match=r": beta 0.5 \(the checkpoint has 0.0\)\. Leave"):
        Trainer.resume(ckpt, beta=0.5, gamma=0.1)


def test_a_resume_on_another_device_type_restarts_the_sampling_stream(tmp_path):
    Trainer(tiny_config(max_steps=3, out=str(tmp_path))).run()
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    state["rng"]["sampler"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA (Philox) generator's state
    torch.save(state, tmp_path / "from_gpu.pt")
    with pytest.warns(UserWarning, match="another device type"):
        trainer = Trainer.resume(tmp_path / "from_gpu.pt", max_steps=5)
    trainer.run()
    assert trainer.step == 5


def test_an_interrupt_during_an_epochs_evaluation_keeps_its_eval_row(tmp_path):
    """With --save-every dividing the epoch, the epoch-end checkpoint comes after the
    epoch's evaluation, not before it: a Ctrl-C during the evaluation resumes from the
    checkpoint before, and the epoch's eval.csv row is written then."""
    trainer = Trainer(tiny_config(max_steps=16, save_every=4, eval_every_epoch=True, out=str(tmp_path)))
    real = trainer.evaluate

    def evaluate(*args, **kwargs):
        if trainer.step == 8:  # epoch 0's evaluation (8 steps an epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    trainer.evaluate = evaluate
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    resumed = Trainer.resume(tmp_path / "last.pt")
    assert resumed.step == 4
    resumed.run()
    with open(tmp_path / "eval.csv", newline="") as fh:
        assert [(r["epoch"], r["step"]) for r in csv.DictReader(fh)] == [("0", "8"), ("1", "16")]
    assert _logged_steps(tmp_path) == list(range(1, 17))


def _slowed(fn, seconds: float, calls: list):
    def slow(*args, **kwargs):
        time.sleep(seconds)
        calls.append(seconds)
        return fn(*args, **kwargs)
    return slow


def test_steps_per_s_leaves_out_evaluation_and_checkpoints(tmp_path):
    trainer = Trainer(tiny_config(max_steps=16, save_every=4, eval_every_epoch=True, out=str(tmp_path)))
    calls = []
    trainer.evaluate = _slowed(trainer.evaluate, 0.2, calls)  # stand-ins for 10 000 test images ...
    trainer.save_checkpoint = _slowed(trainer.save_checkpoint, 0.2, calls)  # ... and a large checkpoint
    summary = trainer.run()
    # evaluations at steps 8 and 16, checkpoints at 4, 8, 12, 16 (and the final one, after the clock stops)
    assert len(calls) == 7
    counted = summary["timed_steps"] / summary["steps_per_s"]
    assert summary["timed_steps"] == 16 and counted <= summary["wall_s"] - 6 * 0.2


def test_the_clock_counts_the_wait_for_the_first_batch():
    """The timed region starts before the first timed batch is fetched: a DataLoader
    starting its workers, or prefetching while the clock stood still, is step time."""
    trainer = Trainer(tiny_config(max_steps=4))
    real = trainer._batches

    def slow_start(epoch, start):
        time.sleep(0.5)  # a loader starting its workers
        yield from real(epoch, start)

    trainer._batches = slow_start
    summary = trainer.run(2)
    assert summary["timed_steps"] == 2 and 2 / summary["steps_per_s"] >= 0.5


@pytest.mark.parametrize("sampling,workers", [("device", 0), ("workers", 0), ("workers", 2)])
def test_runs_in_turns_carry_their_batch_stream_over(tmp_path, sampling, workers):
    """run(n) after run(n) (compare's turns) carries on with the batch stream, and so
    with a DataLoader's workers, instead of starting a new one each call; a new epoch
    or a checkpoint load starts a new one. The batches are the same either way."""
    require_loss("crd", "fused")
    cfg = tiny_config(distill="crd", sampling=sampling, workers=workers, max_steps=12)  # 8 steps an epoch
    straight = Trainer(cfg)
    straight.run()
    trainer = Trainer(cfg)
    streams = []
    real = trainer._batches

    def batches(epoch, start):
        streams.append((epoch, start))
        return real(epoch, start)

    trainer._batches = batches
    trainer.run(3)
    trainer.save_checkpoint(tmp_path / "step3.pt")
    for _ in range(3):
        trainer.run(3)
    assert streams == [(0, 0), (1, 0)]
    assert [r["loss"] for r in trainer.history] == [r["loss"] for r in straight.history]
    trainer.load_checkpoint(tmp_path / "step3.pt")
    trainer.run(3)
    assert streams[-1] == (0, 3)
    assert [r["loss"] for r in trainer.history[-3:]] == [r["loss"] for r in straight.history[3:6]]
    trainer.close()  # mid-epoch: the workers exit now, not at the garbage collector's leisure
    assert trainer._stream is None


def test_cuda_rng_is_saved_and_restored_for_the_training_gpu_only(monkeypatch):
    """get/set_rng_state_all stored every visible GPU's state and crashed when a resume saw
    another number of GPUs. Without a GPU here: torch.cuda's RNG functions stubbed."""
    trainer = Trainer(tiny_config(max_steps=2))
    gpu_states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(3)}
    restored = []

    def every_gpu(*args):
        raise AssertionError("the RNG of every visible GPU was read or set")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": gpu_states[device].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": restored.append((device, int(state[0]))))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_gpu)
    monkeypatch.setattr(trainer, "device", torch.device("cuda", 1))  # the run trains on the second GPU
    state = trainer.rng_state()
    assert torch.equal(state["cuda"], gpu_states[1])
    trainer.set_rng_state(state)
    assert restored == [(1, 1)]
    # an older checkpoint's list of every GPU's state: the training GPU's entry
    trainer.set_rng_state({**state, "cuda": [gpu_states[0], gpu_states[1], gpu_states[2]]})
    assert restored[-1] == (1, 1)
    # one from a machine with a single GPU has none for cuda:1: a warning, not a crash
    with pytest.warns(UserWarning, match="CUDA RNG states for 1 GPUs, none for cuda:1"):
        trainer.set_rng_state({**state, "cuda": [gpu_states[0]]})
    assert len(restored) == 2
    # a run on the CPU stores no CUDA state, and ignores a stored one
    monkeypatch.setattr(trainer, "device", torch.device("cpu"))
    assert "cuda" not in trainer.rng_state()
    trainer.set_rng_state(state)
    assert len(restored) == 2
