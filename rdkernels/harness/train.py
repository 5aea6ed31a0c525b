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

import contextlib
import dataclasses
import json
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from rdkernels.backend import cuda_index
from rdkernels.harness import data as hdata
from rdkernels.harness.config import (RUN_OPTIONS, SAMPLINGS, ResumeMismatch, TrainConfig, absolute_path,
                                      check_config, check_graphable, check_resume_kind, graph_blocker, lr_at,
                                      resume_config)
from rdkernels.harness.distillers import build_distiller
from rdkernels.harness.graphs import GraphedStep
from rdkernels.harness.models import build_model
from rdkernels.harness.run_files import (append_eval_row, append_log_rows, check_run_folder, read_checkpoint,
                                         truncate_eval, truncate_log)
from rdkernels.harness.runtime import command_line, device_name, progress_bar, resolve_device, versions
from rdkernels.harness.teacher import build_teacher

# names other modules and scripts import from here, where they were first defined
__all__ = ["RUN_OPTIONS", "SAMPLINGS", "ResumeMismatch", "StepClock", "TrainConfig", "Trainer", "graph_blocker",
           "lr_at"]


class Trainer:
    """One training run: ``Trainer(cfg).run()``; ``load_checkpoint`` to resume."""

    def __init__(self, cfg: TrainConfig, *, train_set: hdata.ImageSet | None = None,
                 test_set: hdata.ImageSet | None = None):
        check_config(cfg)
        if cfg.save_every is not None and not cfg.out:
            warnings.warn(f"save_every={cfg.save_every} is ignored: checkpoints go to the run folder, and out is "
                          "not set", stacklevel=2)
        # absolute paths, so that a checkpoint resumed from another folder still finds them
        cfg = dataclasses.replace(cfg, out=absolute_path(cfg.out), teacher=absolute_path(cfg.teacher),
                                  data=absolute_path(cfg.data))
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self._own_folder: Path | None = None   # where this run's files are: it may go on writing there
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
            self.teacher = build_teacher(cfg, self.num_classes, train_set, self.device)
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
            check_run_folder(out_dir, self._own_folder)
            out_dir.mkdir(parents=True, exist_ok=True)
            self._own_folder = out_dir.resolve()
            # a resumed run rewrites what came after its checkpoint, so no row appears twice
            truncate_log(out_dir / "log.csv", self.step)
            truncate_eval(out_dir / "eval.csv", self.step)
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
                        eval_result = dict(self.evaluate(), epoch=epoch)   # the summary says which epoch
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
            append_log_rows(out_dir / "log.csv", rows)
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
            append_eval_row(out_dir / "eval.csv", epoch, self.step, result)

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
        state = read_checkpoint(path, "checkpoint")
        self.load_state_dict(_to_device(state, self.device))
        self._own_folder = Path(path).resolve().parent

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
        state = read_checkpoint(path, "--resume")
        if not isinstance(state, dict) or "config" not in state:
            raise ValueError(f"--resume {str(path)!r} holds no run config: it is not a checkpoint of train-teacher "
                             "or distill (a teacher's bare weights go to --teacher)")
        stored = TrainConfig.from_dict(state["config"])
        check_resume_kind(stored, expect_distill, path)
        cfg = resume_config(stored, path, overrides, option_names or {})
        if state.get("teacher") is not None:
            # the checkpoint carries the teacher's weights: the teacher file is not read again
            # (it may have moved, or a relative path may now name another file)
            trainer = cls(dataclasses.replace(cfg, teacher=None))
            trainer.cfg = dataclasses.replace(trainer.cfg, teacher=cfg.teacher)
        else:
            trainer = cls(cfg)
        trainer.load_state_dict(_to_device(state, trainer.device))
        trainer._own_folder = Path(path).resolve().parent
        return trainer




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


def _to_device(state, device):
    """Move tensors to ``device`` except RNG states, which must stay CPU ByteTensors."""
    out = dict(state)
    for key in ("model", "teacher", "criterion"):
        if out.get(key) is not None:
            out[key] = {k: v.to(device) if torch.is_tensor(v) else v for k, v in out[key].items()}
    return out


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
