"""--cuda-graph: the captured training step must train exactly as the eager one.

Without a GPU the graph is replaced by a recorder that records nothing and
replays by calling the step on the static inputs, which checks the harness's
side (warm-up steps, inputs copied into the static tensors, outputs copied out,
a new capture when the learning rate changes). On a GPU the real capture runs.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from harness_helpers import require_loss, single_thread, tiny_config  # noqa: F401
from rdkernels.harness.graphs import GraphedStep
from rdkernels.ops.bank_contrast.cost_model import graph_replay_assumed
from rdkernels.harness.config import graph_blocker
from rdkernels.harness.train import Trainer


class DeferredRecorder:
    """Stands in for CUDA graph capture on a CPU: recording runs nothing; a
    replay runs the function on the static inputs and writes its output in place."""

    def __init__(self):
        self.records = 0

    def record(self, fn, static_inputs):
        self.records += 1
        out = torch.empty(0)

        def replay():
            result = fn(*static_inputs)
            out.resize_(result.shape).copy_(result)

        return replay, out


def _losses(trainer: Trainer) -> torch.Tensor:
    return torch.tensor([[row[k] for k in trainer.term_names] for row in trainer.history])


@pytest.mark.parametrize("name,amp", [("crd", False), ("rrd", False), ("dcd", False), ("kd", False), ("crd", True)])
def test_replayed_steps_train_exactly_as_eager_steps(name, amp):
    require_loss(name, "fused")
    # amp: the captured step holds the autocast models and the float32 loss outside autocast
    cfg = tiny_config(distill=name, impl="fused", max_steps=10, amp=amp, amp_dtype="bfloat16")
    eager = Trainer(cfg)
    eager.run()
    graphed = Trainer(cfg)
    recorder = DeferredRecorder()
    graphed.graphed = GraphedStep(graphed._step, warmup=2, recorder=recorder)
    graphed.run()
    assert recorder.records == 1 and graphed.graphed.eager_calls == 2
    assert torch.equal(_losses(eager), _losses(graphed))
    for a, b in zip(eager.model.parameters(), graphed.model.parameters()):
        assert torch.equal(a, b)


def test_a_new_learning_rate_records_the_step_again():
    # 32 images / batch 4 = 8 steps an epoch; the rate drops after epoch 1
    cfg = tiny_config(distill="kd", impl="fused", max_steps=20, epochs=3, lr_decay_epochs=(1, 2))
    trainer = Trainer(cfg)
    recorder = DeferredRecorder()
    trainer.graphed = GraphedStep(trainer._step, warmup=1, recorder=recorder)
    trainer.run()
    assert recorder.records == 3
    assert sorted({row["lr"] for row in trainer.history}, reverse=True) == pytest.approx([0.05, 0.005, 0.0005])


def test_graph_options_are_checked():
    with pytest.raises(ValueError, match="warmup"):
        GraphedStep(lambda x: x, warmup=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            Trainer(tiny_config(distill="kd", cuda_graph=True))
    assert graph_blocker("crd", "reference") and graph_blocker("wcord", "reference")
    for name in ("crd", "wcord", "dcd", "rrd", "kd"):
        assert graph_blocker(name, "fused") is None
    assert graph_blocker("rrd", "reference") is None and graph_blocker("dcd", "reference") is None


@pytest.mark.gpu
def test_amp_float16_cannot_be_captured():
    with pytest.raises(ValueError, match="float16"):
        Trainer(tiny_config(distill="kd", device="cuda", cuda_graph=True, amp=True, amp_dtype="float16"))
    with pytest.raises(ValueError, match="reference"):
        Trainer(tiny_config(distill="crd", impl="reference", device="cuda", cuda_graph=True))


@pytest.mark.gpu
@pytest.mark.parametrize("name,impl", [("crd", "fused"), ("wcord", "fused"), ("rrd", "fused"),
                                       ("rrd", "reference"), ("dcd", "fused"), ("kd", "fused")])
def test_cuda_graph_training_matches_eager_on_a_gpu(name, impl):
    require_loss(name, impl)
    cfg = tiny_config(distill=name, impl=impl, device="cuda", max_steps=12, deterministic=True,
                      index_checks=False)
    eager = Trainer(cfg)
    eager.run()
    graphed = Trainer(dataclasses.replace(cfg, cuda_graph=True))
    graphed.run()
    assert graphed.graphed.captures == 1
    torch.testing.assert_close(_losses(graphed), _losses(eager), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_compare_replays_what_it_can_and_says_what_ran_eagerly(tmp_path):
    require_loss("crd", "fused")
    require_loss("crd", "reference")
    from rdkernels.harness.compare import compare, result_stem
    cfg = tiny_config(distill="crd", device="cuda", cuda_graph=True, index_checks=False)
    report = compare(cfg, steps=8, warmup=4, out_dir=tmp_path, plot=False)
    runs = report["runs"]
    assert not runs["reference"]["cuda_graph"] and "host" in runs["reference"]["eager_because"]
    assert runs["fused"]["cuda_graph"] and runs["kd"]["cuda_graph"]
    assert all(r["steps"] == 8 and r["steps_per_s"] for r in runs.values())
    # the name marks CUDA graphs, then the tiny settings that differ from the benchmark's
    assert report["device"] == torch.cuda.get_device_name()
    assert Path(report["json"]).name == result_stem(cfg, report["device"]) + ".json"
    assert "_cuda-graph_" in Path(report["json"]).name


def test_warm_up_and_capture_choose_kernels_as_for_a_replay():
    """The eager warm-up steps and the recording run under assume_graph_replay, so
    bank_contrast's auto strategy warms up (compiles, tunes) what the capture records."""
    seen = []

    def step(x):
        seen.append(graph_replay_assumed())
        return x * 2

    class RecordOnce:
        def record(self, fn, static_inputs):
            return (lambda: None), fn(*static_inputs)

    graphed = GraphedStep(step, warmup=2, recorder=RecordOnce())
    for _ in range(4):
        graphed(0.1, torch.ones(1))
    assert seen == [True, True, True]    # two warm-up steps and the recording; replays run no Python
    assert not graph_replay_assumed()
