"""A run's bookkeeping: its log rows, eval.csv and summary.json across
interruptions and resumes, and the process-wide settings a Trainer touches."""
from __future__ import annotations

import csv
import os
import shutil

import pytest
import torch

import rdkernels
from harness_helpers import require_loss, single_thread, tiny_config  # noqa: F401 (autouse fixture)
from rdkernels.harness.train import ResumeMismatch, Trainer


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


def test_a_resume_on_another_device_type_restarts_the_sampling_stream(tmp_path):
    Trainer(tiny_config(max_steps=3, out=str(tmp_path))).run()
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    state["rng"]["sampler"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA (Philox) generator's state
    torch.save(state, tmp_path / "from_gpu.pt")
    with pytest.warns(UserWarning, match="another device type"):
        trainer = Trainer.resume(tmp_path / "from_gpu.pt", max_steps=5)
    trainer.run()
    assert trainer.step == 5
