"""ops/_splits.py: the split arithmetic every fused kernel launches with."""
import pytest
import torch

import rdkernels.ops._splits as splits


@pytest.mark.parametrize("n_tiles", [1, 2, 3, 7, 64, 782, 1563])
@pytest.mark.parametrize("want", [0, 1, 2, 3, 5, 64, 264, 5000])
def test_split_tiles_covers_every_tile_in_at_most_want_nonempty_splits(n_tiles, want):
    count, per = splits.split_tiles(n_tiles, want)
    assert 1 <= count <= max(1, min(n_tiles, want))
    assert count * per >= n_tiles > (count - 1) * per      # every tile once; the last split not empty


def test_splits_wanted_fills_the_gpu_or_gives_the_interpreter_a_few(monkeypatch):
    monkeypatch.setattr(splits, "multiprocessor_count", lambda device: 132)
    gpu = torch.device("cuda", 0)
    assert splits.splits_wanted(1, gpu, programs_per_sm=2) == 264
    assert splits.splits_wanted(4, gpu, programs_per_sm=4) == 132
    assert splits.splits_wanted(1000, gpu, programs_per_sm=2) == 1   # rows alone fill the GPU
    assert splits.splits_wanted(2, gpu, programs_per_sm=0.5) == 33     # half an SM each: RRD's Triton count
    assert splits.splits_wanted(1000, gpu, programs_per_sm=0.5) == 1
    assert splits.splits_wanted(4, torch.device("cpu"), programs_per_sm=2) == splits.INTERPRETER_SPLITS
    assert splits.splits_wanted(4, torch.device("cpu"), programs_per_sm=2, interpreter=2) == 2


def test_rrd_triton_split_count_fills_the_gpu_for_every_candidate(monkeypatch):
    """The Triton shared-bank contrast sizes its splits for one program an SM
    whatever a program's query rows: at B = 64 on 132 SMs, 33 wanted for 16-row
    programs (the fastest count of benchmarks/splits.py's sweep on an H100, where
    that candidate won), 132 for 64-row ones, made in whole 64-row tiles of the
    16384-row queue (32 and 128); fewer at larger batches. The CUDA kernel keeps
    two blocks an SM."""
    sbc = pytest.importorskip("rdkernels.ops.shared_bank_contrast.triton")
    from rdkernels.ops.shared_bank_contrast.splits import num_splits_cuda
    monkeypatch.setattr(splits, "multiprocessor_count", lambda device: 132)
    monkeypatch.setattr(sbc, "triton_runs_compiled", lambda device: device.type == "cuda")
    gpu = torch.device("cuda", 0)
    assert sbc.ROW_ALIGN == 64
    assert sbc.splits_for(64, 16384, gpu, block_b=16) == 32
    assert sbc.splits_for(64, 16384, gpu, block_b=64) == 128
    assert sbc.splits_for(256, 16384, gpu, block_b=16) == 9
    assert sbc.splits_for(256, 16384, gpu, block_b=64) == 32
    assert sbc.splits_for(64, 16384, gpu, block_b=64, num_splits=7) == 7   # a caller's count, any candidate
    assert sbc.splits_for(64, 100, gpu, block_b=64) == 2                   # at most one a tile
    assert sbc.splits_for(64, 16384, torch.device("cpu"), block_b=64) == 2
    assert num_splits_cuda(64, 16384, 16, 64, gpu)[0] == 64   # 2 x 132 / 4 row blocks = 66, in whole tiles


def test_split_sweep_forces_records_and_restores():
    """SplitSweep (benchmarks/splits.py's hook into an op): outside a block the op's
    count stands and nothing is kept; inside, the forced count (or the op's, for
    None) is asked for and each launch's record kept; nested blocks restore."""
    sweep = splits.SplitSweep()
    sweep.record(9)
    assert sweep.want(7) == 7 and not sweep.active
    with sweep.forcing(3) as outer:
        assert sweep.want(7) == 3
        sweep.record(3)
        with sweep.forcing() as inner:
            assert sweep.want(7) == 7
            sweep.record(7)
        assert sweep.want(7) == 3
    assert outer == [3] and inner == [7] and not sweep.active


def test_rrd_widest_row_block_makes_the_most_splits(monkeypatch):
    """The op sizes its split buffers by the widest candidate's count: the count
    must not fall as a program's query rows grow, at any batch or queue length."""
    sbc = pytest.importorskip("rdkernels.ops.shared_bank_contrast.triton")
    monkeypatch.setattr(splits, "multiprocessor_count", lambda device: 132)
    monkeypatch.setattr(sbc, "triton_runs_compiled", lambda device: device.type == "cuda")
    gpu = torch.device("cuda", 0)
    widths = sorted({c.kwargs["BLOCK_B"] for c in sbc.CANDIDATES})
    assert widths[-1] == sbc.WIDEST_BLOCK_B
    for batch in (1, 7, 64, 100, 256, 1000, 5000):
        for n_rows in (1, 63, 64, 1000, 16384, 65536):
            counts = [sbc.splits_for(batch, n_rows, gpu, b) for b in widths]
            assert counts == sorted(counts), (batch, n_rows, counts)
