"""When a tuned kernel times its candidates, and what it launches otherwise.

The timing itself needs a GPU; here a stand-in autotuner records what it is
asked to run, so the choice between timing and the fixed configuration (the
interpreter, a capture whose shapes were never timed, RDKERNELS_AUTOTUNE=0, a
forced config) is checked on any machine.
"""
import pytest
import torch
import triton

from rdkernels.ops import _autotune
from rdkernels.ops._autotune import TunedKernel
from rdkernels.ops.shared_bank_contrast import triton as sbc_triton

CONFIGS = [triton.Config(dict(BLOCK=16), num_warps=4, num_stages=2),
           triton.Config(dict(BLOCK=32), num_warps=8, num_stages=2)]


class FakeLaunch:
    """Stands in for ``kernel[grid]`` and ``autotuner[grid]``: records each launch."""

    def __init__(self, log, what, best=None):
        self.log, self.what, self.best_config = log, what, best
        self.arg_names = ["x", "n", "BLOCK"]

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            shape = grid if isinstance(grid, tuple) else grid(self.best_config.all_kwargs())
            self.log.append((self.what, shape, kwargs))
        return launch


@pytest.fixture
def tuned(monkeypatch):
    """A TunedKernel whose kernel and autotuner are stand-ins, on a "GPU"."""
    log = []
    tk = TunedKernel.__new__(TunedKernel)
    tk.kernel = FakeLaunch(log, "kernel")
    tk.configs, tk.key, tk._prune, tk._timed = list(CONFIGS), ("n",), None, set()
    tk.tuner = FakeLaunch(log, "timed", best=CONFIGS[1])
    monkeypatch.setattr(_autotune, "timing_possible", lambda probe: _autotune.autotune_enabled())
    return tk, log


def _grid(meta):
    return (64 // meta["BLOCK"],)


def test_eager_call_times_and_reuses(tuned, monkeypatch):
    """The first eager call times and records its key; a later call of that key goes to
    the tuner (which reuses its choice) even where a fresh timing is not allowed."""
    tk, log = tuned
    x = torch.zeros(4)
    used = tk.launch(_grid, x, 64)
    assert log[-1][0] == "timed" and used["BLOCK"] == 32 and log[-1][1] == (2,)
    assert tk._timing_key((x, 64), {}) in tk._timed
    monkeypatch.setattr(_autotune, "host_reads_allowed", lambda probe: False)
    tk.launch(_grid, x, 64)
    assert [entry[0] for entry in log] == ["timed", "timed"]


def test_forgotten_timings_are_timed_again_and_not_reused_in_a_capture(tuned, monkeypatch):
    tk, log = tuned
    tk.tuner.cache = {("64",): CONFIGS[1]}          # what triton's autotuner keeps per key
    tk.launch(_grid, torch.zeros(4), 64)
    tk.forget_timings()
    assert tk._timed == set() and tk.tuner.cache == {}
    monkeypatch.setattr(_autotune, "host_reads_allowed", lambda t: False)
    tk.launch(_grid, torch.zeros(4), 64)            # a capture: no timing, so the default
    assert log[-1][0] == "kernel"


def test_capture_of_an_untimed_shape_runs_the_default(tuned, monkeypatch):
    tk, log = tuned
    monkeypatch.setattr(_autotune, "host_reads_allowed", lambda t: False)
    used = tk.launch(_grid, torch.zeros(4), 64)
    assert log[-1][0] == "kernel" and used["BLOCK"] == 16 and used["num_warps"] == 4
    assert log[-1][1] == (4,)


def test_capture_after_an_eager_call_reuses_the_timed_choice(tuned, monkeypatch):
    tk, log = tuned
    tk.launch(_grid, torch.zeros(4), 64)
    monkeypatch.setattr(_autotune, "host_reads_allowed", lambda t: False)
    tk.launch(_grid, torch.zeros(4), 64)
    assert log[-1][0] == "timed"
    tk.launch(_grid, torch.zeros(4), 128)          # a new shape key: not timed yet
    assert log[-1][0] == "kernel"
    tk.launch(_grid, torch.zeros(4, dtype=torch.float64), 64)  # a new dtype: not timed yet
    assert log[-1][0] == "kernel"


def test_switched_off_forced_and_fallback(tuned, monkeypatch):
    tk, log = tuned
    monkeypatch.setenv("RDKERNELS_AUTOTUNE", "0")
    assert tk.launch(_grid, torch.zeros(4), 64)["BLOCK"] == 16 and log[-1][0] == "kernel"
    monkeypatch.delenv("RDKERNELS_AUTOTUNE")
    assert tk.launch(_grid, torch.zeros(4), 64, config=CONFIGS[1])["BLOCK"] == 32 and log[-1][0] == "kernel"
    monkeypatch.setattr(_autotune, "timing_possible", lambda probe: False)
    used = tk.launch(_grid, torch.zeros(4), 64, fallback=dict(BLOCK=8, num_warps=1))
    assert used["BLOCK"] == 8 and log[-1][1] == (8,)


def test_deterministic_algorithms_run_the_default(tuned):
    """A timing may crown another candidate in the next process: a run that asked
    torch for determinism launches the first candidate every time."""
    tk, log = tuned
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert tk.launch(_grid, torch.zeros(4), 64)["BLOCK"] == 16 and log[-1][0] == "kernel"
    finally:
        torch.use_deterministic_algorithms(previous)
    assert tk.launch(_grid, torch.zeros(4), 64)["BLOCK"] == 32 and log[-1][0] == "timed"


def test_cpu_tensors_are_never_timed():
    assert not _autotune.timing_possible(torch.zeros(1))


def test_shared_bank_contrast_candidates():
    """The first candidate is the configuration shipped before timing; every
    candidate's tiles are whole multiples of the split alignment; the 64- and
    128-row dots are timed on Hopper only (they spill on older GPUs)."""
    first = sbc_triton.CANDIDATES[0]
    assert (first.kwargs["BLOCK_B"], first.kwargs["BLOCK_N"], first.num_warps) == (16, 32, 8)
    assert sbc_triton.min_arch(first) == 80
    assert all(sbc_triton.ROW_ALIGN % c.kwargs["BLOCK_N"] == 0 for c in sbc_triton.CANDIDATES)
    hopper = [c for c in sbc_triton.CANDIDATES if sbc_triton.min_arch(c) == 90]
    assert hopper and all(c.kwargs["BLOCK_B"] >= 32 for c in hopper)
    # CPU tensors (the interpreter) are never timed: nothing is pruned for them
    q = torch.zeros(4, 16)
    assert sbc_triton.contrast_kernel.candidates(qs_ptr=q) == sbc_triton.CANDIDATES
    # AOT variants of a Hopper-only candidate say so, and the AOT check skips them below sm_90
    variants = {v["name"]: v for v in sbc_triton.aot_variants()}
    assert variants["shared_bank_contrast_d128_fp32_b64n16w8"]["min_arch"] == 90
    assert variants["shared_bank_contrast_d128_fp32_b16n32w8"]["min_arch"] == 80


def test_shared_bank_contrast_prunes_by_compute_capability(monkeypatch):
    class OnGpu:  # what the prune reads of the query and queue tensors
        is_cuda = True
        device = torch.device("cuda", 0)
        dtype = torch.float32

    class Bf16OnGpu(OnGpu):
        dtype = torch.bfloat16
    for capability, archs in (((8, 0), {80}), ((8, 9), {80}), ((9, 0), {80, 90}), ((12, 0), {80, 90})):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        kept = sbc_triton.contrast_kernel.candidates(qs_ptr=OnGpu(), queue_ptr=OnGpu())
        assert {sbc_triton.min_arch(c) for c in kept} == archs, capability
        assert kept[0] == sbc_triton.CANDIDATES[0]
        assert any(c.kwargs["TILE_TWICE"] for c in kept)
        # a 16-bit queue's tile loads stay synchronous: no candidate loads them twice
        narrow = sbc_triton.contrast_kernel.candidates(qs_ptr=OnGpu(), queue_ptr=Bf16OnGpu())
        assert narrow == [c for c in kept if not c.kwargs["TILE_TWICE"]]


def test_dcd_candidates_by_width():
    """The DCD gradient kernel's first candidate (the untimed one) is the 32 x 32 block
    at 8 warps, one stage, at every width; at d = 256 it is the only one (larger
    blocks or a second stage spill there, tools/aot_check.py)."""
    from rdkernels.ops.dcd import triton as dcd_triton
    for block_d in (16, 32, 64, 128, 256):
        kept = dcd_triton.dcd_grad_tuned.candidates(BLOCK_D=block_d)
        tags = [dcd_triton._candidate_tag(c) for c in kept]
        assert tags[0] == "m32n32w8s1", (block_d, tags)
        assert len(kept) == (len(dcd_triton.CANDIDATES) if block_d <= 128 else 1), (block_d, tags)


def test_needs_a_candidate():
    with pytest.raises(ValueError, match="configs"):
        TunedKernel(sbc_triton.shared_bank_contrast_kernel, [], key=["batch"])


def test_launched_configs_name_each_tuned_kernels_candidate(tuned):
    """A benchmark record names the configuration each tuned kernel ran: its candidate's
    arguments and launch options, not the call's other meta-arguments."""
    tk, _ = tuned
    _autotune._TUNED.append(tk)
    try:
        tk.kernel.__name__ = "stand_in_kernel"
        _autotune.forget_launches()
        assert "stand_in_kernel" not in _autotune.launched_configs()
        tk.launch(_grid, torch.zeros(4), 64, EXTRA=3)
        named = _autotune.launched_configs()["stand_in_kernel"]
        assert named.items() >= dict(BLOCK=32, num_warps=8, num_stages=2).items() and "EXTRA" not in named
        _autotune.forget_launches()
        assert "stand_in_kernel" not in _autotune.launched_configs()
    finally:
        _autotune._TUNED.remove(tk)


def test_key_must_name_kernel_arguments():
    """Triton's autotuner drops a key name that is not an argument from its key, so
    calls that differ there would share one timing (the dense kernel's epilogue, a
    constexpr, is keyed and must stay so): TunedKernel refuses such a key."""
    with pytest.raises(ValueError, match="not arguments"):
        TunedKernel(sbc_triton.shared_bank_contrast_kernel, CONFIGS, key=["batch", "EPILOGUE"])
    from rdkernels.ops.bank_contrast.triton_dense import dense_kernel
    assert "EPILOGUE" in dense_kernel.key and "EPILOGUE" in dense_kernel.kernel.arg_names


def test_after_timed_runs_inside_tritons_timed_calls_only():
    """``after_timed`` becomes the Triton autotuner's post_hook, which its timing
    calls after each timed launch (3.6 and newer) with the launch's arguments and
    configuration by name; a launch that raised skips it."""
    seen = []
    tk = TunedKernel(sbc_triton.shared_bank_contrast_kernel, CONFIGS, key=["batch"], after_timed=seen.append)
    tk.tuner.post_hook({"BLOCK": 16, "batch": 4}, exception=None)
    tk.tuner.post_hook({"BLOCK": 32, "batch": 4}, exception=RuntimeError("out of resources"))
    assert seen == [{"BLOCK": 16, "batch": 4}]


def test_shared_bank_contrast_times_each_candidate_with_its_merge(monkeypatch):
    """A timed launch of the RRD split kernel is followed by the merge of the splits
    that candidate made (4x the splits for 64 query rows a program as for 16), so
    the autotuner ranks split kernel and merge together; the call then merges for
    the configuration it launched and returns the right loss and gradient."""
    from rdkernels.backend import triton_unavailable_reason
    if triton_unavailable_reason(torch.device("cpu")):
        pytest.skip(triton_unavailable_reason(torch.device("cpu")))
    from rdkernels.ops.shared_bank_contrast import shared_bank_contrast_reference
    merged = []
    real_merge = sbc_triton.shared_bank_merge_kernel

    class RecordingMerge:
        def __getitem__(self, grid):
            def launch(stats, acc, q_s, loss, dq, batch, splits, *args, **kwargs):
                merged.append(splits)
                real_merge[grid](stats, acc, q_s, loss, dq, batch, splits, *args, **kwargs)
            return launch
    monkeypatch.setattr(sbc_triton, "shared_bank_merge_kernel", RecordingMerge())
    monkeypatch.setattr(sbc_triton, "splits_for", lambda batch, n_rows, device, block_b, num_splits=None:
                        {16: 2, 32: 3, 64: 5}[block_b] if num_splits is None else num_splits)
    real_launch = sbc_triton.contrast_kernel.launch

    def timed_then_real(grid, *args, **kwargs):
        """As the autotuner does: launch and merge a 64-row candidate (timed), then the pick."""
        wide = dict(sbc_triton.INTERPRETER_CONFIG, BLOCK_B=64)
        real_launch(grid, *args, **{**kwargs, "config": wide})
        tk = TunedKernel(sbc_triton.shared_bank_contrast_kernel, sbc_triton.CANDIDATES, key=["batch"],
                         after_timed=sbc_triton._merge_after_timed_launch)
        tk.tuner.post_hook(wide, exception=None)
        return real_launch(grid, *args, **kwargs)
    monkeypatch.setattr(sbc_triton.contrast_kernel, "launch", timed_then_real)
    g = torch.Generator().manual_seed(3)
    q_s, q_t, queue = (torch.nn.functional.normalize(torch.randn(n, 32, generator=g), dim=1) for n in (6, 6, 90))
    loss, dq = sbc_triton.shared_bank_contrast_triton(q_s, q_t, queue, 0.05, 0.1, True)
    assert merged == [5, 2]   # the timed candidate's merge, then the launched one's
    q64 = q_s.double().requires_grad_()
    expected = shared_bank_contrast_reference(q64, q_t.double(), queue.double(), 0.05, 0.1)
    expected.sum().backward()
    torch.testing.assert_close(loss.double(), expected.detach(), atol=5e-4, rtol=1e-4)
    torch.testing.assert_close(dq.double(), q64.grad, atol=5e-4, rtol=1e-4)
    assert sbc_triton._call_merge.get() is None   # the call's merge is not left for a later timing
