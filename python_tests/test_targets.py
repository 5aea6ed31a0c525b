"""benchmarks/targets.py: each issue target read off result files, on the device it names."""
from __future__ import annotations

import json

import pytest

from benchmarks import targets

H100 = "NVIDIA H100 80GB HBM3"
EPYC = "AMD EPYC"
CIFAR = dict(N=50_000, K=16_384, B=64, d=128, s_dim=256, t_dim=256, dtype="float32")
IMAGENET = dict(N=1_281_167, K=16_384, B=256, d=128, s_dim=512, t_dim=512, dtype="float32")
SINKHORN = dict(d=32, dtype="float32", P=64, n=128, m=128, eps=0.05, iters=100)
DENSE_CASE = dict(B=64, K=4096, N=50_000, d=128, dtype="float32", epilogue="nce")


def _row(op, params, impl, mode, time_ms, **extra):
    return dict(op=op, case="", params=params, impl=impl, mode=mode, status="ok", time_ms=time_ms, **extra)


def _bench(tmp_path, name, device, rows, bandwidth_gbps=3000.0):
    kind = "cpu" if device == EPYC else "cuda"
    record = dict(schema=targets.BENCH_SCHEMA, device=dict(name=device, type=kind), rows=rows,
                  ceilings=dict(bandwidth_gbps=bandwidth_gbps, matmul_tflops={"float32": 50.0}))
    path = tmp_path / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _training(tmp_path, name, device, ratio_vs_kd, speedup, report_fields=None, **config):
    cfg = dict(dict(distill="crd", arch="resnet8x4", teacher_arch="resnet32x4", batch_size=64,
                    loss=dict(nce_k=16_384), synthetic_n=50_000, data=None, cuda_graph=False, amp=False), **config)
    report = dict(dict(device=device, config=cfg, speedup_fused_vs_reference=speedup,
                       runs=dict(fused=dict(step_ratio_vs_kd=ratio_vs_kd))), **(report_fields or {}))
    (tmp_path / f"{name}.json").write_text(json.dumps(report))


@pytest.fixture
def results(tmp_path):
    _bench(tmp_path, "cifar", H100, [
        _row("crd_step", CIFAR, "naive", "fwd+bwd", 100.0, peak_mem_bytes=1e9),
        _row("crd_step", CIFAR, "torch", "fwd+bwd", 10.0, peak_mem_bytes=2e8),
        # floor_ms is max(bytes, flops) floors; the target reads the bytes floor: 1.5e9 B at 3000 GB/s = 0.5 ms
        _row("crd_step", CIFAR, "triton", "fwd+bwd", 1.5, peak_mem_bytes=5e6, frac_of_floor=0.6, floor_ms=0.9,
             floor_bytes=1.5e9),
        _row("crd_step", CIFAR, "cuda", "fwd+bwd", 2.0, peak_mem_bytes=4e6, frac_of_floor=0.45, floor_ms=0.9,
             floor_bytes=1.5e9),
        _row("crd_step", CIFAR, "triton", "fwd", 0.5),  # another mode: never compared with fwd+bwd rows
        _row("crd_step", IMAGENET, "naive", "fwd+bwd", 300.0),
        _row("crd_step", IMAGENET, "cuda", "fwd+bwd", 20.0),
        _row("sinkhorn", SINKHORN, "naive", "fwd", 60.0),
        _row("sinkhorn", SINKHORN, "triton", "fwd", 1.5),
        *[r for b in (64, 128, 256, 512) for r in (
            _row("dcd", dict(B=b, d=128, dtype="float32"), "naive", "fwd+bwd", 1.0),
            _row("dcd", dict(B=b, d=128, dtype="float32"), "cuda", "fwd+bwd", 0.25 if b != 256 else 0.5))],
    ])
    # the same CIFAR case, slower, on a GPU the targets do not name: the H100's rows win
    _bench(tmp_path, "other-gpu", "NVIDIA A100-SXM4-80GB", [
        _row("crd_step", CIFAR, "naive", "fwd+bwd", 100.0), _row("crd_step", CIFAR, "triton", "fwd+bwd", 1.0)])
    _bench(tmp_path, "cpu", EPYC, [
        _row("bank_contrast", DENSE_CASE, "naive", "fwd+bwd", 98.0),
        _row("bank_contrast", DENSE_CASE, "torch:dense", "fwd+bwd", 16.9),
        _row("shared_bank_contrast", dict(B=64, N=16_384, d=128, dtype="float32"), "naive", "fwd+bwd", 12.0),
        _row("shared_bank_contrast", dict(B=64, N=16_384, d=128, dtype="float32"), "triton", "fwd+bwd", 1.0),
    ])
    _training(tmp_path, "train_eager", H100, 1.16, 1.21)
    _training(tmp_path, "train_graph", H100, 1.05, 1.9, cuda_graph=True)
    _training(tmp_path, "train_other", H100, 1.0, 9.0, batch_size=128)  # not the issue's configuration
    _training(tmp_path, "train_small", H100, 1.0, 9.0, synthetic_n=1000)  # nor is a smaller dataset
    _training(tmp_path, "train_cpu", "cpu AMD EPYC (2 cores)", 1.0, 9.0)  # better, but not on a target GPU
    (tmp_path / "overhead.json").write_text(json.dumps({"rows": []}))  # another tool's record: ignored
    return {r["target"]: r for r in targets.evaluate(targets.Results(sorted(tmp_path.glob("*.json"))))}


def _find(results, words):
    """The one target whose text holds ``words`` (its kernel-time twin only if they say so)."""
    in_kernel_time = targets.KERNEL_TIME in words
    (row,) = [r for text, r in results.items() if words in text and (targets.KERNEL_TIME in text) == in_kernel_time]
    return row


def _overhead(tmp_path, name, device, rows, bandwidth_gbps=3000.0):
    """A ``benchmarks.overhead --json`` record: rows with device (gpu_ms) and host times."""
    record = dict(schema=targets.OVERHEAD_SCHEMA, device=device, rows=rows,
                  ceilings=dict(bandwidth_gbps=bandwidth_gbps, matmul_tflops={"float32": 50.0}))
    (tmp_path / f"{name}.json").write_text(json.dumps(record))


def _device_row(op, params, impl, gpu_ms, graph_ms=None, mode="fwd+bwd", **extra):
    return dict(op=op, case="", params=params, impl=impl, mode=mode, wall_ms=1.0, host_ms=1.0, gpu_ms=gpu_ms,
                graph_ms=graph_ms, kernels=[], **extra)


def test_every_op_target_is_also_judged_in_kernel_time(tmp_path):
    """The overhead records' kernel time per call, paired within one record, beside the
    eager rows of the suite (which it never mixes with)."""
    _bench(tmp_path, "cifar", H100, [_row("crd_step", CIFAR, "naive", "fwd+bwd", 4.0),
                                     _row("crd_step", CIFAR, "cuda", "fwd+bwd", 2.0)])
    _overhead(tmp_path, "overhead-crd_step-cifar", H100, [
        _device_row("crd_step", CIFAR, "naive", 2.5),                 # its host reads: no graph
        _device_row("crd_step", CIFAR, "torch:dense", 0.3, graph_ms=0.35),
        _device_row("crd_step", CIFAR, "cuda", 0.05, graph_ms=0.06, floor_bytes=6e7),
        _device_row("crd_step", CIFAR, "triton", None)])             # no kernel time: not a row
    _overhead(tmp_path, "overhead", H100, [
        _device_row("shared_bank_contrast", dict(B=64, N=16_384, d=128, dtype="float32"), "naive", 0.08),
        _device_row("shared_bank_contrast", dict(B=64, N=16_384, d=128, dtype="float32"), "cuda", 0.12)])
    # Sinkhorn's target times the solve alone: a record of fwd+bwd rows does not answer it
    _overhead(tmp_path, "overhead-sinkhorn", H100, [_device_row("sinkhorn", SINKHORN, "naive", 12.0),
                                                    _device_row("sinkhorn", SINKHORN, "cuda", 0.1)])
    assert _find(_evaluate(tmp_path), "logsumexp updates [kernel time]")["status"] == "not measured"
    _overhead(tmp_path, "overhead-sinkhorn-fwd", H100, [_device_row("sinkhorn", SINKHORN, "naive", 12.0, mode="fwd"),
                                                        _device_row("sinkhorn", SINKHORN, "cuda", 0.6, mode="fwd")])
    results = _evaluate(tmp_path)
    assert _find(results, "logsumexp updates [kernel time]")["value"] == pytest.approx(20)
    assert _find(results, ">= 50x the RepDistiller")["value"] == pytest.approx(2)
    row = _find(results, ">= 50x the RepDistiller formulation [kernel time]")
    assert row["value"] == pytest.approx(50) and row["status"] == "met"
    assert row["source"] == "overhead-crd_step-cifar.json" and "naive 2.5 ms / cuda 0.05 ms" in row["detail"]
    assert _find(results, "best pure-PyTorch formulation (torch backend, fastest strategy) [kernel time]")[
        "value"] == pytest.approx(6)
    # 6e7 B at 3000 GB/s = 0.02 ms
    row = _find(results, "bytes floor (bytes that must move / measured bandwidth) [kernel time]")
    assert row["value"] == pytest.approx(2.5) and row["status"] == "not met"
    row = _find(results, ">= 5x the reference formulation [kernel time]")
    assert row["value"] == pytest.approx(0.08 / 0.12) and row["status"] == "not met"
    row = _find(results, "ImageNet CRD step >= 20x the RepDistiller formulation [kernel time]")
    assert row["status"] == "not measured" and "benchmarks.overhead --op crd_step --preset imagenet" in row["detail"]
    assert _find(results, "DCD, B = 64 ... 1024, fwd+bwd: >= 3x the reference formulation at every B [kernel time]")[
        "status"] == "not measured"
    # targets with no kernel-time twin: memory, the CPU one, the peers, training
    assert len(targets.TARGETS) == 14 + 7 and sum(targets.KERNEL_TIME in t.text for t in targets.TARGETS) == 7


def test_speed_ups_memory_and_floor(results):
    row = _find(results, ">= 50x the RepDistiller")
    assert row["status"] == "met" and row["value"] == pytest.approx(100 / 1.5) and row["device"] == H100
    assert _find(results, "best pure-PyTorch")["value"] == pytest.approx(10 / 1.5)
    assert _find(results, "within 2x of its bytes floor")["value"] == pytest.approx(1.5 / 0.5)
    assert _find(results, "extra device memory")["value"] == pytest.approx(5e6 / 1e9)
    row = _find(results, "ImageNet")
    assert row["status"] == "not met" and row["value"] == pytest.approx(15)
    assert _find(results, "torch loop of logsumexp")["value"] == pytest.approx(40)


def test_unmeasured_targets_say_how_to_measure_them(results):
    row = _find(results, "POT")
    assert row["status"] == "not measured" and row["value"] is None and "--op sinkhorn" in row["detail"]


def test_a_gpu_target_measured_elsewhere_is_shown_but_not_counted(results):
    row = _find(results, ">= 5x the reference formulation")  # RRD, measured on the CPU only
    assert row["status"] == "off-target device" and row["value"] == pytest.approx(12)
    row = _find(results, "CPU: torch backend")  # the one CPU target
    assert row["status"] == "met" and row["value"] == pytest.approx(98 / 16.9)


def test_dcd_takes_the_worst_batch_and_names_the_missing_ones(results):
    row = _find(results, "DCD")
    assert row["value"] == pytest.approx(2) and row["status"] == "not met"
    assert "[1024] not measured" in row["detail"]


def test_training_targets_take_the_best_run_of_the_issue_configuration(results):
    row = _find(results, "1.10x the KD-only step")
    assert row["value"] == pytest.approx(1.05) and row["status"] == "met" and "CUDA graphs" in row["detail"]
    row = _find(results, "2x faster than the reference CRD step")
    assert row["value"] == pytest.approx(1.9) and row["status"] == "not met"


def test_a_graphed_speed_up_over_an_eager_reference_says_so(tmp_path):
    runs = dict(fused=dict(step_ratio_vs_kd=1.2), reference=dict(eager_because="host reads"))
    _training(tmp_path, "train_graph", H100, 1.2, 4.0, dict(runs=runs), cuda_graph=True)
    rows = {r["target"]: r for r in targets.evaluate(targets.Results(sorted(tmp_path.glob("*.json"))))}
    assert "(the reference eager: its step cannot be captured)" in _find(rows, "2x faster than the reference")["detail"]
    assert "reference eager" not in _find(rows, "1.10x the KD-only step")["detail"]


def test_curves_agree_against_the_rounding_spread_of_a_200_step_run(tmp_path):
    words = "loss curves agree to float tolerance"
    _training(tmp_path, "train_eager", H100, 1.2, 3.0, dict(steps=200, loss_diff_vs_rounding=2.6))
    _training(tmp_path, "train_graph", H100, 1.2, 3.0, dict(steps=200, loss_diff_vs_rounding=0.7), cuda_graph=True)
    _training(tmp_path, "train_short", H100, 1.2, 3.0, dict(steps=30, loss_diff_vs_rounding=0.1))  # too few steps
    _training(tmp_path, "train_old", H100, 1.2, 3.0, dict(steps=200))  # before the control existed
    row = _find({r["target"]: r for r in targets.evaluate(targets.Results(sorted(tmp_path.glob("*.json"))))}, words)
    assert row["value"] == pytest.approx(0.7) and row["status"] == "met" and "CUDA graphs" in row["detail"]
    (tmp_path / "train_graph.json").unlink()
    row = _find({r["target"]: r for r in targets.evaluate(targets.Results(sorted(tmp_path.glob("*.json"))))}, words)
    assert row["value"] == pytest.approx(2.6) and row["status"] == "not met"


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys):
    _bench(tmp_path, "quick", H100, [_row("sinkhorn", SINKHORN, "naive", "fwd", 60.0),
                                     _row("sinkhorn", SINKHORN, "cuda", "fwd", 3.0)])
    assert targets.main([str(tmp_path), "--json", str(tmp_path / "targets.json")]) == 0
    out = capsys.readouterr().out
    assert "| #4 | Sinkhorn, 64 problems" in out and "| 20x | not met |" in out
    rows = json.loads((tmp_path / "targets.json").read_text())
    assert len(rows) == len(targets.TARGETS)
    # run again on the folder that now holds its own --json output (a list, not a record)
    assert targets.main([str(tmp_path)]) == 0 and "| 20x | not met |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        targets.main([str(tmp_path / "nowhere")])


def test_dcd_met_where_measured_but_not_at_every_batch_is_incomplete(tmp_path):
    """The target holds at every B from 64 to 1024: 4x at the B measured is not "met"."""
    def rows(batches, device):
        return [r for b in batches for r in (_row("dcd", dict(B=b, d=128, dtype="float32"), "naive", "fwd+bwd", 1.0),
                                             _row("dcd", dict(B=b, d=128, dtype="float32"), "cuda", "fwd+bwd", 0.25))]
    _bench(tmp_path / "a", "quick", H100, rows((64, 256), H100))
    row = next(r for r in targets.evaluate(targets.Results(sorted(tmp_path.rglob("*.json"))))
               if r["target"].startswith("DCD"))
    assert row["value"] == pytest.approx(4) and row["status"] == "incomplete" and "[128, 512, 1024]" in row["detail"]
    _bench(tmp_path / "b", "sweep", H100, rows((128, 512, 1024), H100))
    row = next(r for r in targets.evaluate(targets.Results(sorted(tmp_path.rglob("*.json"))))
               if r["target"].startswith("DCD"))
    assert row["status"] == "met"


def _evaluate(tmp_path):
    paths = sorted(tmp_path.rglob("*.json"))
    return {r["target"]: r for r in targets.evaluate(targets.Results(paths))}


def test_ratios_pair_rows_of_one_file_and_take_the_best_file(tmp_path):
    """Another run (another commit, another load) is never the other side of a ratio."""
    _bench(tmp_path, "before", H100, [
        _row("crd_step", CIFAR, "naive", "fwd+bwd", 100.0, peak_mem_bytes=1e9),
        _row("crd_step", CIFAR, "triton", "fwd+bwd", 10.0, peak_mem_bytes=1e7)])
    _bench(tmp_path, "after", H100, [
        _row("crd_step", CIFAR, "naive", "fwd+bwd", 20.0, peak_mem_bytes=1e8),
        _row("crd_step", CIFAR, "triton", "fwd+bwd", 1.0, peak_mem_bytes=5e6)])
    results = _evaluate(tmp_path)
    row = _find(results, ">= 50x the RepDistiller")
    assert row["value"] == pytest.approx(20) and row["source"] == "after.json"   # not 100 / 1
    row = _find(results, "extra device memory")
    assert row["value"] == pytest.approx(0.01) and row["source"] == "before.json"  # not 5e6 / 1e9


def test_files_of_the_same_name_in_two_folders_are_not_paired(tmp_path):
    _bench(tmp_path / "a", "quick", H100, [_row("crd_step", CIFAR, "naive", "fwd+bwd", 100.0)])
    _bench(tmp_path / "b", "quick", H100, [_row("crd_step", CIFAR, "triton", "fwd+bwd", 1.0)])
    assert _find(_evaluate(tmp_path), ">= 50x the RepDistiller")["status"] == "not measured"


def test_pure_pytorch_target_takes_the_fastest_torch_strategy(tmp_path):
    _bench(tmp_path, "quick", H100, [
        _row("crd_step", CIFAR, "torch", "fwd+bwd", 10.0),
        _row("crd_step", CIFAR, "torch:gather", "fwd+bwd", 12.0),
        _row("crd_step", CIFAR, "torch:dense", "fwd+bwd", 4.0),
        _row("crd_step", CIFAR, "triton", "fwd+bwd", 1.0)])
    row = _find(_evaluate(tmp_path), "best pure-PyTorch")
    assert row["value"] == pytest.approx(4) and "torch:dense" in row["detail"]


def test_cpu_target_reads_cpu_rows_of_its_own_case_only(tmp_path):
    _bench(tmp_path / "gpu", "quick", H100, [   # a GPU's rows of the same case: not the CPU target's
        _row("bank_contrast", DENSE_CASE, "naive", "fwd+bwd", 98.0),
        _row("bank_contrast", DENSE_CASE, "torch:dense", "fwd+bwd", 1.0)])
    _bench(tmp_path / "cpu", "quick", EPYC, [
        _row("bank_contrast", DENSE_CASE, "naive", "fwd+bwd", 60.0),
        _row("bank_contrast", DENSE_CASE, "torch:dense", "fwd+bwd", 30.0),
        # another case (bfloat16, softmax) of the same sizes: never paired with the float32 nce naive
        _row("bank_contrast", dict(DENSE_CASE, dtype="bfloat16"), "torch:dense", "fwd+bwd", 5.0),
        _row("bank_contrast", dict(DENSE_CASE, epilogue="softmax"), "torch:dense", "fwd+bwd", 5.0)])
    row = _find(_evaluate(tmp_path), "CPU: torch backend")
    assert row["value"] == pytest.approx(2) and row["device"] == EPYC and row["status"] == "not met"


def test_floor_target_reads_the_bytes_floor_at_the_runs_bandwidth(tmp_path):
    # flops would put the floor at 0.9 ms; the target counts bytes only: 1e9 B at 2000 GB/s = 0.5 ms
    _bench(tmp_path, "quick", H100, [
        _row("crd_step", CIFAR, "cuda", "fwd+bwd", 0.8, floor_ms=0.9, frac_of_floor=0.9 / 0.8, floor_bytes=1e9)],
        bandwidth_gbps=2000.0)
    row = _find(_evaluate(tmp_path), "bytes floor")
    assert row["value"] == pytest.approx(1.6) and row["status"] == "met" and "bytes floor 0.5 ms" in row["detail"]
