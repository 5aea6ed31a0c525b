"""The benchmark suite's plumbing on CPU with tiny sizes: every implementation
gets a row, the JSON record has its schema, plots are written, and an
implementation that computes the wrong thing is reported as wrong, not timed."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import __main__ as cli
from benchmarks import suite
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

    op.extra_impls += [Impl("fast_but_wrong", fast_but_wrong), Impl("slightly_off", slightly_off),
                       Impl("broken", broken)]
    case = op.cases("tiny", None)[0]
    rows = {r.impl: r for r in suite.run_case(op, case, CPU, CEILINGS, TINY)}
    for name in ("fast_but_wrong", "slightly_off"):
        assert rows[name].status == "wrong", rows[name]
        assert rows[name].time_ms is None and rows[name].speedup_vs_naive is None
        assert rows[name].max_rel_err > rows[name].tolerance
    assert rows["broken"].status == "error" and "kernel exploded" in rows["broken"].reason
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
    r = overhead.measure(lambda: x @ x, iters=5)
    assert set(r) == {"wall_ms", "host_ms", "gpu_ms", "graph_ms"} and all(v > 0 for v in r.values())
    # a call that reads a value on the host cannot be recorded: no graph time, no crash
    assert overhead.measure(lambda: float((x @ x).sum()), iters=3)["graph_ms"] is None
