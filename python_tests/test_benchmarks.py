"""The benchmark suite's plumbing on CPU with tiny sizes: every implementation
gets a row, the JSON record has its schema, plots are written, and an
implementation that computes the wrong thing is reported as wrong, not timed."""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import __main__ as cli
from benchmarks import suite
from benchmarks.suite import lowest_floor
from benchmarks.ceilings import Ceilings
from benchmarks.registry import OP_MODULES, Impl, load_ops
from benchmarks.timing import TINY

CPU = torch.device("cpu")
CEILINGS = Ceilings(bandwidth_gbps=10.0, matmul_tflops={"float32": 0.05})
ROW_KEYS = {"op", "case", "params", "impl", "kind", "mode", "status", "reason", "time_ms", "p20_ms", "p80_ms",
            "peak_mem_bytes", "floor_ms", "floor_bytes", "floor_flops", "frac_of_floor", "speedup_vs_naive",
            "max_rel_err", "tolerance", "checked"}


@pytest.fixture(autouse=True)
def _one_thread():
    # Intra-op threads spin badly on a busy 2-core machine; one is steadier.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_cli_tiny_writes_json_and_plots(tmp_path):
    assert cli.main(["--tiny", "--out", str(tmp_path), "--no-progress", "--threads", "1"]) == 0
    record = json.loads((tmp_path / "tiny.json").read_text())
    assert record["schema"] == "rdkernels-bench/1"
    assert record["command"].startswith("python -m benchmarks")
    for key in ("name", "type", "slug"):
        assert record["device"][key]
    for key in ("torch", "triton", "cuda", "python"):
        assert key in record["versions"]
    assert record["ceilings"]["bandwidth_gbps"] > 0 and record["ceilings"]["matmul_tflops"]["float32"] > 0
    rows = record["rows"]
    assert rows and all(ROW_KEYS <= set(r) for r in rows)

    ops, skipped = load_ops(None)
    assert {o.name for o in ops} | {s["op"] for s in skipped} == set(OP_MODULES)
    assert [s["op"] for s in record["skipped_ops"]] == [s["op"] for s in skipped]
    for op in ops:
        for case in op.cases("tiny", None):
            for impl in op.all_implementations():
                modes = {r["mode"] for r in rows if r["op"] == op.name and r["case"] == case.label
                         and r["impl"] == impl.name}
                assert modes == set(op.modes()), (op.name, case.label, impl.name)
        ok = [r for r in rows if r["op"] == op.name and r["status"] == "ok"]
        # naive and torch run everywhere and must agree with the reference.
        assert {r["impl"] for r in ok} >= {"naive", "torch"}, op.name
        for r in ok:
            assert r["time_ms"] > 0 and r["floor_ms"] > 0 and r["frac_of_floor"] > 0
            assert r["speedup_vs_naive"] > 0
        assert (tmp_path / f"tiny-{op.name}.png").stat().st_size > 1000
    # The Triton interpreter is never timed: on CPU, Triton rows are unavailable.
    triton_rows = [r for r in rows if r["impl"] == "triton"]
    assert triton_rows
    if not torch.cuda.is_available():
        assert all(r["status"] == "unavailable" and r["time_ms"] is None for r in triton_rows)
        assert all("interpreter" in r["reason"] for r in triton_rows)


def _bank_update():
    ops, skipped = load_ops(["bank_update"])
    assert ops, skipped
    return ops[0]


def test_wrong_implementation_is_reported_not_timed():
    op = _bank_update()

    def fast_but_wrong(inp):        # skips the renormalisation: cheap and wrong
        bank, index, values = inp["bank"], inp["index"], inp["values"]

        def run():
            bank.index_copy_(0, index, 0.5 * bank.index_select(0, index) + 0.5 * values)
            return {"bank": bank}
        return run

    def slightly_off(inp):          # right except for a 1% error on one element
        bank, index, values = inp["bank"], inp["index"], inp["values"]

        def run():
            from rdkernels.ops import bank_update_
            bank_update_(bank, index, values, 0.5, backend="torch")
            bank[index[0], 0] += 0.01
            return {"bank": bank}
        return run

    def broken(inp):
        def run():
            raise RuntimeError("kernel exploded")
        return run

    def declines(inp):              # a backend that refuses this shape, as CUDA DCD past B = 1024
        from rdkernels.backend import BackendUnavailable

        def run():
            raise BackendUnavailable("backend 'x' cannot run this shape")
        return run

    op.extra_impls += [Impl("fast_but_wrong", fast_but_wrong), Impl("slightly_off", slightly_off),
                       Impl("broken", broken), Impl("declines", declines)]
    case = op.cases("tiny", None)[0]
    rows = {r.impl: r for r in suite.run_case(op, case, CPU, CEILINGS, TINY)}
    for name in ("fast_but_wrong", "slightly_off"):
        assert rows[name].status == "wrong", rows[name]
        assert rows[name].time_ms is None and rows[name].speedup_vs_naive is None
        assert rows[name].max_rel_err > rows[name].tolerance
    assert rows["broken"].status == "error" and "kernel exploded" in rows["broken"].reason
    assert rows["declines"].status == "unavailable" and "cannot run this shape" in rows["declines"].reason
    assert rows["naive"].status == "ok" and rows["torch"].status == "ok"
    assert rows["naive"].time_ms > 0 and rows["naive"].speedup_vs_naive == pytest.approx(1.0)


def test_wrong_gradient_is_reported():
    """A forward that is right with a backward that is wrong is caught too."""
    ops, skipped = load_ops(["dcd"])
    if not ops:
        pytest.skip(skipped[0]["reason"])
    op = ops[0]

    class HalfGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 0.5 * g

    def wrong_grad(inp):
        from benchmarks import naive
        z_s, z_t, tau, bias = inp["z_s"], inp["z_t"], inp["tau"], inp["bias"]
        return lambda: {"loss": naive.dcd_loss(HalfGrad.apply(z_s), z_t, tau, bias)}

    op.extra_impls.append(Impl("wrong_grad", wrong_grad))
    rows = [r for r in suite.run_case(op, op.cases("tiny", None)[0], CPU, CEILINGS, TINY) if r.impl == "wrong_grad"]
    assert {r.mode for r in rows} == {"fwd", "bwd", "fwd+bwd"}
    assert all(r.status == "wrong" and r.time_ms is None and "grad[0]" in r.reason for r in rows)


def test_unavailable_backends_get_reasons():
    op = _bank_update()
    rows = suite.run_case(op, op.cases("tiny", None)[0], CPU, CEILINGS, TINY)
    cuda = [r for r in rows if r.impl == "cuda"]
    assert cuda and all(r.status == "unavailable" and r.reason and r.time_ms is None for r in cuda)


def test_floor_counts_bytes_and_flops():
    op = _bank_update()
    case = op.cases("tiny", None)[0]
    p = case.params
    fl = op.floor(case, "fwd")
    assert fl.nbytes == p["B"] * p["d"] * (2 * 4 + 4) + p["B"] * 8
    # floor_ms is the larger of the two bounds
    expected = max(fl.nbytes / 10e9, fl.flops / 0.05e12) * 1e3
    assert CEILINGS.floor_ms(fl.nbytes, fl.flops, fl.dtype) == pytest.approx(expected)


def test_cpu_timer_takes_several_samples_of_a_slow_call_and_warms_every_set():
    """A call longer than the whole budget still gets several timed samples (one
    sample is no median), and every input set runs before timing starts."""
    from benchmarks.timing import QUICK, time_cpu
    import time

    calls = []

    def slow(name):
        def fn():
            calls.append(name)
            time.sleep(QUICK.cpu_min_run_s * 1.5)
        return fn

    t = time_cpu([slow("a"), slow("b"), slow("c")], QUICK)
    assert QUICK.cpu_min_samples >= 3 and t.reps >= QUICK.cpu_min_samples
    assert t.median_ms >= QUICK.cpu_min_run_s * 1.5e3
    assert calls[:3] == ["a", "b", "c"]     # each set warmed before the first timed run


def test_two_contrast_directions_read_their_shared_index_once():
    from benchmarks.ops.bank_contrast import bank_contrast_floor

    p = dict(B=4, K=16, N=64, d=32, dtype="float32")
    ids = p["B"] * (p["K"] + 1) * 8
    for mode in ("fwd", "fwd+bwd"):
        for one, two in zip(bank_contrast_floor(p, mode), bank_contrast_floor(p, mode, directions=2)):
            assert two.nbytes == 2 * one.nbytes - ids and two.flops == 2 * one.flops


def test_naive_crd_matches_the_reference_module():
    """The naive CRD step (RepDistiller's forward, scalars read up front) computes
    what rdkernels.losses.reference.crd.CRDLoss computes: loss, Z and both banks."""
    from benchmarks import naive
    from rdkernels.losses.reference.crd import CRDLoss

    torch.manual_seed(0)
    ref = CRDLoss(s_dim=24, t_dim=40, n_data=64, feat_dim=32, nce_k=16).double()
    ours = CRDLoss(s_dim=24, t_dim=40, n_data=64, feat_dim=32, nce_k=16).double()
    ours.load_state_dict(ref.state_dict())
    f_s, f_t = torch.randn(4, 24, dtype=torch.float64), torch.randn(4, 40, dtype=torch.float64)
    idx = torch.randperm(64)[:4]
    cidx = torch.randint(0, 64, (4, 17))
    cidx[:, 0] = idx
    for _ in range(2):      # the first call sets Z, the second reads it
        torch.testing.assert_close(naive.crd_loss(ours, f_s, f_t, idx, cidx), ref(f_s, f_t, idx, cidx))
    for name, buf in ref.contrast.state_dict().items():
        torch.testing.assert_close(ours.contrast.state_dict()[name], buf, msg=name)


@pytest.mark.parametrize("argv,message", [
    (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["--max-sets", "0"], "argument --max-sets: must be >= 1, got 0"),
    (["--device", "gpu"], "argument --device: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
])
def test_a_bad_option_is_a_usage_error_naming_it(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_missing_saved_run_is_one_error_line(capsys):
    assert cli.main(["--from-json", "no/such/run.json"]) == 2
    assert capsys.readouterr().err == "python -m benchmarks: error: argument --from-json: no such file: 'no/such/run.json'\n"


def test_unknown_op_is_an_error():
    with pytest.raises(ValueError, match="unknown op"):
        load_ops(["nope"])


@pytest.mark.parametrize("size,preset", [("tiny", None), ("quick", None), ("full", None), ("full", "cifar"),
                                         ("full", "imagenet")])
def test_case_labels_are_unique(size, preset):
    ops, _ = load_ops(None)
    for op in ops:
        labels = [c.label for c in op.cases(size, preset)]
        assert labels and len(labels) == len(set(labels)), (op.name, labels)
        for case in op.cases(size, preset):
            assert op.x_param in case.params, (op.name, case.label)


def test_replay_and_list(tmp_path, capsys):
    assert cli.main(["--tiny", "--op", "bank_update", "--out", str(tmp_path), "--no-progress", "--no-plots",
                     "--threads", "1"]) == 0
    path = tmp_path / "tiny-bank_update.json"
    capsys.readouterr()
    assert cli.main(["--from-json", str(path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| bank_update | B=8 N=256 d=32 float32 | naive |" in out
    assert ("not run: triton" in out) == (not torch.cuda.is_available())
    assert (tmp_path / "tiny-bank_update.png").exists()
    assert cli.main(["--list", "--quick"]) == 0
    assert "bank_update: " in capsys.readouterr().out


def test_overhead_tool_measures_a_callable_or_says_it_needs_a_gpu():
    from benchmarks import overhead
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA device"):
            overhead.main(["--op", "dcd"])
        return
    x = torch.randn(256, 256, device="cuda")
    r = overhead.measure(lambda: x.exp(), iters=5)
    kernels = r.pop("kernels")
    assert set(r) == {"wall_ms", "host_ms", "gpu_ms", "graph_ms"} and all(v > 0 for v in r.values())
    # one elementwise kernel a call, and it is the whole device time (not a GEMM: cuBLAS may
    # split K into a GEMM and a reduction kernel, as it did at 256 x 256 on an H100)
    assert len(kernels) == 1 and kernels[0]["launches"] == 1, kernels
    assert kernels[0]["us"] == pytest.approx(r["gpu_ms"] * 1e3)
    # a call that reads a value on the host cannot be recorded: no graph time, no crash,
    # and later work runs on the stream it ran on before (not the failed capture's)
    stream = torch.cuda.current_stream()
    assert overhead.measure(lambda: float((x @ x).sum()), iters=3)["graph_ms"] is None
    assert torch.cuda.current_stream() == stream
    # a fwd+bwd whose loss is a [P] vector (a non-scalar upstream gradient, made once
    # and not copied from the host on every call) can be recorded
    ops, _ = load_ops(["sinkhorn"])
    ops[0].extra_impls.append(Impl("squares", lambda inp: lambda: {"cost": (inp["C"] ** 2).sum(dim=(1, 2))}))
    args = overhead.parse_args(["--impl", "squares", "--match", "P=16", "--iters", "3"])
    rows = overhead.measure_ops(ops, torch.device("cuda"), args)
    assert len(rows) == 1 and rows[0]["graph_ms"] is not None, rows


def _fake_timer(fn, iters):
    fn()   # the plumbing runs for real, on a CPU
    return {"wall_ms": 2.0, "host_ms": 1.0, "gpu_ms": 0.5, "graph_ms": None,
            "kernels": [{"name": "some_kernel_name", "us": 400.0, "launches": 2.0}]}


def _split_counts_allocated(monkeypatch, module) -> list:
    """For benchmarks.splits on CPU under the interpreter: the split count of every
    call's partials (``module.split_buffers``'s third argument, recorded), with the
    sweep's CUDA-graph timer replaced by one call; skips without the interpreter."""
    from benchmarks import overhead
    from rdkernels.backend import triton_unavailable_reason
    if triton_unavailable_reason(CPU) is not None:
        pytest.skip("Triton's interpreter is unavailable")
    counts, real = [], module.split_buffers

    def recording(*args, **kwargs):
        counts.append(args[2])
        return real(*args, **kwargs)
    monkeypatch.setattr(module, "split_buffers", recording)
    monkeypatch.setattr(overhead, "_graph_ms", lambda fn, iters: (fn(), 0.5)[1])
    monkeypatch.setattr(overhead, "_kernels", lambda fn, iters: (fn(), (0.5, [{"name": "k", "us": 500.0,
                                                                             "launches": 1.0}]))[1])
    return counts


def test_split_sweep_runs_each_count_and_marks_the_heuristics(monkeypatch, capsys):
    """benchmarks.splits on CPU under the interpreter, its CUDA-graph timer replaced by
    a call: each count reaches the op (a count it ignored would not change the scratch
    it allocates), and the heuristic's own count is marked."""
    from benchmarks import splits
    from rdkernels.ops.shared_bank_contrast import triton as sbc_triton
    seen = _split_counts_allocated(monkeypatch, sbc_triton)
    args = splits.parse_args(["--batch", "4", "--rows", "64", "--dim", "32", "--iters", "1"])
    rows = splits.sweep(4, args, CPU)
    counts = [r["splits"] for r in rows]
    assert len(counts) >= 2 and sum(r["default"] for r in rows) == 1
    assert set(seen) == set(counts) and all(r["graph_ms"] == 0.5 for r in rows)
    assert all(r["config"] == "b16n16w4" for r in rows)   # the interpreter's launch, named in each row
    assert all(r["kernels"][0]["us"] == 500.0 for r in rows)
    assert "(heuristic)" in capsys.readouterr().out


def test_dense_split_sweep_forces_each_count_on_the_kernel(monkeypatch, capsys):
    """benchmarks.splits' dense bank-contrast sweep on CPU under the interpreter: each
    count reaches the Triton dense kernel's launch grid, the heuristic's own is marked,
    and the op's loss does not depend on the count."""
    from benchmarks import splits
    from rdkernels.ops import bank_contrast
    from rdkernels.ops.bank_contrast import dense
    grids = _split_counts_allocated(monkeypatch, dense)
    args = splits.parse_args(["--op", "bank_contrast_dense", "--backend", "triton", "--batch", "4", "--bank", "256",
                              "--negatives", "40", "--dim", "32", "--iters", "1", "--splits", "1", "2", "5"])
    rows = splits.sweep_dense(4, "triton", args, CPU)
    # 16 bank tiles under the interpreter: 5 splits of whole tiles are 4 (4 tiles each)
    assert [r["splits"] for r in rows] == [1, 2, 4] and all(r["graph_ms"] == 0.5 for r in rows)
    # the candidate launched, named in each row: an fp32 bank's shipped one (its tile loaded twice)
    assert [r["config"] for r in rows] == ["x2", "x2", "x2"]
    from rdkernels.ops._splits import INTERPRETER_SPLITS
    assert set(grids) == {1, 2, 4, INTERPRETER_SPLITS}   # the swept counts and the heuristic's first call
    assert not any(r["default"] for r in rows)            # the heuristic's 3 was not asked for
    q = torch.randn(4, 32)
    bank, idx = torch.randn(256, 32), torch.randint(0, 256, (4, 41))
    losses = []
    for count in (1, 3, None):
        with dense.dense_split_count(count) as used:
            losses.append(bank_contrast(q, bank, idx, temperature=0.1, epilogue="softmax", backend="triton",
                                        strategy="dense"))
        assert len(used) == 1 and (count is None or used[0] == count)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)   # 3 splits as 1
    torch.testing.assert_close(losses[2], losses[0], rtol=1e-6, atol=1e-6)   # the heuristic's as 1
    assert not dense._sweep.active   # the block restores the heuristic


def test_overhead_rows_and_record_on_cpu(tmp_path, capsys):
    """The overhead tool's loop and JSON, with its CUDA timer replaced: every
    implementation that runs here gets a row, and the record names the device."""
    from benchmarks import overhead
    ops, _ = load_ops(["dcd", "bank_update"])
    args = overhead.parse_args(["--op", "dcd", "--op", "bank_update", "--size", "quick", "--match", "B=64",
                                "--iters", "2", "--json", str(tmp_path / "deep" / "overhead.json")])
    ceilings = Ceilings(bandwidth_gbps=1000.0, matmul_tflops={"float32": 10.0})
    rows = overhead.measure_ops(ops, CPU, args, timer=_fake_timer, ceilings=ceilings)
    assert {(r["op"], r["impl"], r["mode"]) for r in rows} >= {("dcd", "naive", "fwd+bwd"), ("dcd", "torch", "fwd+bwd"),
                                                                ("bank_update", "torch", "fwd")}
    # each row says which case it measured and what its bytes floor is (benchmarks.targets reads both)
    by_op = {op.name: op for op in ops}
    for r in rows:
        (case,) = [c for c in by_op[r["op"]].cases("quick", None) if c.label == r["case"]]
        assert r["params"] == case.params and r["params"]["B"] == 64
        assert r["floor_bytes"] == lowest_floor(by_op[r["op"]], case, r["mode"], ceilings).nbytes > 0
    out = capsys.readouterr().out
    assert "failed" not in out
    assert out.count("400.0 us   2.0x  some_kernel_name") == len(rows)  # each row's kernels under it
    path = overhead.write_record(args.json, rows, "Some GPU", args, ceilings)
    record = json.loads(path.read_text())
    assert record["device"] == "Some GPU" and record["rows"] == rows and record["iters"] == 2
    assert record["schema"] == overhead.SCHEMA and record["ceilings"]["bandwidth_gbps"] == 1000.0
    # --forward-only: the forward alone, as the suite's fwd rows
    args = overhead.parse_args(["--op", "dcd", "--match", "B=64", "--iters", "2", "--forward-only"])
    rows = overhead.measure_ops(ops[:1], CPU, args, timer=_fake_timer)
    assert rows and all(r["mode"] == "fwd" for r in rows)
    assert record["versions"]["torch"] == torch.__version__ and "git_commit" in record["versions"]


def test_fwd_bwd_makes_its_upstream_gradient_once(monkeypatch):
    """A non-scalar loss's upstream gradient is made on the first call, not on every
    timed one: on a GPU each was built on the host and copied to the device, a stream
    sync per call (inflated fwd+bwd times, no CUDA graph capture)."""
    ops, _ = load_ops(["sinkhorn"])
    op = ops[0]
    case = op.cases("tiny", None)[0]
    assert case.params["P"] > 1            # the loss is a [P] vector of costs
    impl = next(i for i in op.all_implementations() if i.name == "torch")
    made = []
    make = suite._grad_out
    monkeypatch.setattr(suite, "_grad_out", lambda t, *a: made.append(tuple(t.shape)) or make(t, *a))
    fn = suite._mode_fn(op, impl, op.make_inputs(case, CPU, seed=1), "fwd+bwd")
    first = fn()
    for _ in range(3):
        again = fn()
    assert made == [(case.params["P"],)]
    torch.testing.assert_close(again, first)


def test_sinkhorn_baselines_time_their_forward_without_recording_a_graph():
    """The naive loop's forward-only rows record no unrolled graph (rdkernels records
    none through its iterations); its fwd+bwd rows still differentiate through it."""
    ops, _ = load_ops(["sinkhorn"])
    op = ops[0]
    case = op.cases("tiny", None)[0]
    impls = {i.name: i for i in op.all_implementations()}
    assert impls["naive"].fwd_no_grad and impls["pot"].fwd_no_grad and not impls["torch"].fwd_no_grad
    inputs = op.make_inputs(case, CPU, seed=1)
    assert inputs["C"].requires_grad
    assert suite._mode_fn(op, impls["naive"], inputs, "fwd")()["cost"].grad_fn is None
    (grad,) = suite._mode_fn(op, impls["naive"], inputs, "fwd+bwd")()
    assert grad.shape == inputs["C"].shape


def test_git_commit_is_none_without_a_commit(tmp_path):
    from benchmarks.report import git_commit
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    assert git_commit(tmp_path) is None                       # not a repository
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert git_commit(tmp_path) is None                       # a repository without a commit: not "HEAD"


# --- tools/gpu_session.sh, run with a stand-in for python --------------------------

SESSION = Path(__file__).resolve().parent.parent / "tools" / "gpu_session.sh"
FAKE_PYTHON = r"""#!/usr/bin/env bash
{ printf '%s\x1f' "$@"; printf '\x1e'; } >> "$FAKE_CALLS"
if [ "$1" = -c ]; then
  case "$2" in *device_info*) echo "$FAKE_RESULTS";; esac
  exit 0
fi
case "$*" in *"$FAKE_FAIL"*) echo "fake failure"; exit 1;; esac
exit 0
"""


def _session(tmp_path, *phases, fail_on="no such argument"):
    """Run the session script's phases with ``python`` replaced by a stand-in that
    records its arguments (and fails the calls that contain ``fail_on``)."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", LOGS=str(tmp_path / "logs"),
               FAKE_CALLS=str(calls), FAKE_RESULTS=str(tmp_path / "results" / "some-gpu"), FAKE_FAIL=fail_on)
    done = subprocess.run(["bash", str(SESSION), *phases], env=env, capture_output=True, text=True, timeout=60)
    argvs = [call.split("\x1f")[:-1] for call in calls.read_text().split("\x1e")[:-1]]
    return done, argvs


def test_session_test_phase_spreads_the_suite_over_workers(tmp_path):
    """The test phase runs the whole suite on 8 xdist workers that steal queued tests
    from one another (a worker left with the slow GPU sweeps held the run up)."""
    done, argvs = _session(tmp_path, "test")   # the stand-in answers every version check yes
    assert done.returncode == 0, done.stdout + done.stderr
    (argv,) = [a for a in argvs if a[:2] == ["-m", "pytest"]]
    assert argv[argv.index("-n") + 1] == "8" and argv[argv.index("--dist") + 1] == "worksteal"
    assert argv[-1] == "python_tests"


def test_session_script_passes_flags_its_tools_take(tmp_path):
    from benchmarks import overhead, profile
    from rdkernels.harness.__main__ import _build_parser

    from benchmarks import fit_cost_model, splits, targets

    done, argvs = _session(tmp_path, "overhead", "bench", "train", "targets", "costmodel")
    assert done.returncode == 0, done.stdout + done.stderr
    results = str(tmp_path / "results" / "some-gpu")
    modules = [argv[1] for argv in argvs if argv[0] == "-m"]
    assert modules.count("benchmarks.overhead") == 5 and modules.count("benchmarks.profile") == 1
    assert modules.count("benchmarks") == 4 and modules.count("rdkernels.harness") == 9
    assert modules.count("benchmarks.targets") == 1 and modules.count("benchmarks.fit_cost_model") == 2
    assert modules.count("benchmarks.splits") == 2
    suites, overheads, fits, swept = [], [], [], []
    harness = _build_parser()[0]
    distillers = []
    for argv in argvs:
        if argv[0] != "-m":
            continue
        module, rest = argv[1], argv[2:]
        if module == "benchmarks.overhead":
            args = overhead.parse_args(rest)
            assert args.json.startswith(results + "/")
            overheads.append((tuple(args.op), args.size, args.preset, args.match, args.forward_only))
        elif module == "benchmarks.profile":
            profile.parse_args(rest)
        elif module == "benchmarks":
            args = cli.parse_args(rest)
            suites.append((args.quick, args.preset, tuple(args.op or ())))
        elif module == "benchmarks.fit_cost_model":
            args = fit_cost_model.parse_args(rest)
            assert str(args.json).startswith(results + "/")
            fits.append(args.backend)
        elif module == "benchmarks.splits":
            args = splits.parse_args(rest)
            assert str(args.json).startswith(results + "/")
            swept.append(tuple(args.op))
        elif module == "benchmarks.targets":
            args = targets.parse_args(rest)
            assert [str(p) for p in args.paths] == [results] and str(args.json).startswith(results + "/")
        else:
            args = harness.parse_args(rest)
            assert args.command == "compare" and args.results == results and args.steps > args.warmup
            distillers.append((args.distill, args.cuda_graph, args.amp))
    assert sorted(distillers) == sorted([(d, g, False) for d in ("crd", "dcd", "rrd", "wcord") for g in (False, True)]
                                        + [("crd", True, True)])
    assert (tmp_path / "results" / "some-gpu" / "profile-bank_contrast.txt").exists()
    assert fits == ["cuda", "triton"]
    assert swept == [("shared_bank_contrast",), ("bank_contrast_dense",)]
    # the quick sweep, and the sizes the issues' targets name that it leaves out
    assert suites == [(True, None, ()), (False, "cifar", ("crd_step", "bank_contrast")),
                      (False, "imagenet", ("crd_step", "bank_contrast")), (False, None, ("dcd",))]
    # kernel time at the sizes the targets name (benchmarks/targets.py's [kernel time] rows)
    assert overheads == [(("shared_bank_contrast", "bank_contrast"), "quick", None, None, False),
                         (("dcd",), "full", None, "float32", False), (("sinkhorn",), "quick", None, None, True),
                         (("crd_step",), "quick", "cifar", None, False),
                         (("crd_step",), "quick", "imagenet", None, False)]


def test_session_script_fails_a_phase_when_any_command_fails(tmp_path):
    # the first of the overhead phase's commands fails; the rest of the phase and the next phase still run
    done, argvs = _session(tmp_path, "overhead", "bench", fail_on="--op sinkhorn")
    assert done.returncode == 1
    assert "=== overhead:" in done.stdout and "FAILED" in done.stdout.split("=== overhead:")[1].splitlines()[0]
    modules = [argv[1] for argv in argvs if argv[0] == "-m"]
    assert modules == ["benchmarks.overhead"] * 2 + ["benchmarks.splits"] * 2 + ["benchmarks.overhead"] * 3 \
        + ["benchmarks.profile"] + ["benchmarks"] * 4
    # one failing compare does not hide the others
    done, argvs = _session(tmp_path, "train", fail_on="--distill dcd --cuda-graph")
    assert done.returncode == 1
    assert sum(argv[1] == "rdkernels.harness" for argv in argvs if argv[0] == "-m") == 9


def test_session_script_refuses_an_unknown_phase_before_running_any(tmp_path):
    done, argvs = _session(tmp_path, "bench", "benchh")
    assert done.returncode == 2 and "unknown phase: benchh" in done.stdout
    assert argvs == []


def test_a_non_finite_reference_fails_the_check():
    """err = |a - NaN| is NaN, and NaN > worst is False: a NaN reference must not pass."""
    from benchmarks.suite import _compare
    err, where = _compare({"loss": torch.tensor(12345.0)}, {"loss": torch.tensor(float("nan"), dtype=torch.float64)},
                          2e-3)
    assert err == math.inf and "reference is not finite" in where


def test_float32_floors_count_tf32_tensor_cores():
    """The fused kernels run float32 dots on TF32 tensor cores: a floor at the plain
    float32 rate would be one they beat."""
    c = Ceilings(bandwidth_gbps=3000.0, matmul_tflops={"float32": 50.0, "tfloat32": 400.0, "bfloat16": 700.0})
    assert c.rate(torch.float32) == 400e12 and c.rate("bfloat16") == 700e12
    assert Ceilings(bandwidth_gbps=1.0, matmul_tflops={"float32": 0.05}).rate(torch.float32) == 0.05e12  # a CPU


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
                    reason="benchmarks.host stubs the launches of Triton's interpreter")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_host_cost_stubs_every_launch_and_counts_it(backend):
    """benchmarks.host: each loss's step runs with its kernels stubbed, and the row counts
    what a GPU would launch (the CUDA backend on the extension where it is built);
    the stubs come off afterwards."""
    from benchmarks import host
    from rdkernels import backend as _backend
    if backend == "cuda" and host._available("cuda") is not None:
        pytest.skip(host._available("cuda"))
    reason = _backend.cuda_unavailable_reason
    rows = {name: host.measure(name, backend, steps=2) for name in host.LOSSES}
    assert _backend.cuda_unavailable_reason is reason
    rrd = rows["rrd"]["launches_by_kernel"]
    assert rrd["triton:fifo_enqueue_kernel"] == 1 and rrd["triton:l2_normalize_fwd_kernel"] == 2
    assert rrd["triton:l2_normalize_bwd_kernel"] == 1    # the teacher's head gets no gradient
    scoring = {"triton": ("triton:shared_bank_contrast_kernel", "triton:shared_bank_merge_kernel"),
               "cuda": ("cuda:shared_bank_contrast",)}[backend]
    assert all(rrd[k] == 1 for k in scoring) and rows["rrd"]["launches"] == 4 + len(scoring)
    dcd = rows["dcd"]["launches_by_kernel"]
    assert any(k.startswith(f"{backend}:dcd") for k in dcd)
    for name in ("crd", "wcord"):
        launched = rows[name]["launches_by_kernel"]
        assert launched[f"{backend}:bank_update" + ("_kernel" if backend == "triton" else "")] == 2
    assert any("sinkhorn" in k for k in rows["wcord"]["launches_by_kernel"])
    for row in rows.values():
        assert row["host_us"] > 0 and row["python_calls"] > 0 and row["torch_ops"] > 0


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
                    reason="benchmarks.host stubs the launches of Triton's interpreter")
def test_host_cost_of_each_op_beside_its_naive_formulation():
    """--op: each op alone, fused with its launches stubbed, and its naive formulation,
    which launches nothing of ours and runs more torch ops."""
    from benchmarks import host
    for name in host.OPS:
        fused = host.measure(name, "triton", steps=2, op="fused")
        naive = host.measure(name, "torch", steps=2, op="naive")
        assert fused["loss"] == f"{name}:fused" and naive["loss"] == f"{name}:naive"
        assert fused["launches"] >= 1 and naive["launches"] == 0
        assert naive["torch_ops"] > fused["torch_ops"] > 0


def test_host_cost_tool_parses_its_arguments():
    from benchmarks import host
    assert host.parse_args(["--loss", "rrd", "dcd", "--backend", "cuda"]).loss == ["rrd", "dcd"]
    assert host.parse_args([]).op is None and host.parse_args(["--op"]).op == []
    assert host.parse_args(["--op", "dcd"]).op == ["dcd"]
    with pytest.raises(SystemExit):
        host.parse_args(["--steps", "0"])


# ------------------------------------------------------------------ cost-model fit

def test_nonnegative_least_squares_is_exact_and_keeps_to_nonnegative_values():
    from benchmarks.fit_cost_model import nonnegative_lstsq
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 1.0, (20, 3))
    np.testing.assert_allclose(nonnegative_lstsq(a, a @ np.array([2.0, 0.5, 3.0])), [2.0, 0.5, 3.0], rtol=1e-9)
    # the unconstrained optimum has a negative entry: the constrained one puts it at 0
    x = nonnegative_lstsq(a, a @ np.array([2.0, -1.0, 3.0]))
    assert np.all(x >= 0) and x[1] == 0.0


def test_fit_recovers_the_rates_that_made_the_times():
    """Times made by the model itself from known constants (plus a fixed cost both
    strategies share) are fitted back to those constants."""
    from benchmarks.fit_cost_model import fit_rates, picks
    from rdkernels.ops.bank_contrast.cost_model import DeviceRates, estimate_times
    cpu, shared = torch.device("cpu"), 3e-4
    truth = DeviceRates(bw_gather=3e9, bw_stream=2e10, flops=4e11, t_index=1e-8, t_launch=2e-4, t_graph=1e-4)
    shapes = []
    for b, k, n in itertools.product((8, 64, 256), (128, 1024, 4096), (5_000, 50_000, 200_000)):
        t_gather, t_dense = estimate_times(b, k + 1, n, 128, torch.float32, cpu, "torch", rates=truth)
        shapes.append({"batch": b, "k": k, "n": n, "gather": t_gather + shared, "dense": t_dense + shared})
    fitted, shared_fit = fit_rates(shapes, 128, torch.float32, "torch", truth)
    for field in ("bw_gather", "bw_stream", "flops", "t_index", "t_launch"):
        assert getattr(fitted, field) == pytest.approx(getattr(truth, field), rel=1e-6), field
    assert shared_fit == pytest.approx(shared, rel=1e-6)
    assert all(p["cost_of_pick"] == 1.0 for p in picks(shapes, 128, torch.float32, cpu, "torch", fitted))


def test_fit_command_times_both_strategies_and_saves_the_fit(tmp_path, capsys):
    from benchmarks import fit_cost_model
    out = tmp_path / "fit.json"
    assert fit_cost_model.main(["--device", "cpu", "--backend", "torch", "--batch", "2", "--k", "4", "16",
                                "--n", "64", "--dim", "8", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["schema"] == fit_cost_model.SCHEMA and record["backend"] == "torch"
    assert [(s["batch"], s["k"], s["n"]) for s in record["shapes"]] == [(2, 4, 64), (2, 16, 64)]
    assert all(s["gather"] > 0 and s["dense"] > 0 for s in record["shapes"])
    assert set(record["fitted"]["rates"]) == set(record["current"]["rates"])
    assert "of 2 shapes get the faster strategy" in capsys.readouterr().out
