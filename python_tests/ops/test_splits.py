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


def test_rrd_triton_split_count_is_the_measured_best(monkeypatch):
    """The Triton shared-bank contrast sizes its splits for half a program an SM:
    33 at B = 64 on 132 SMs (the fastest count of benchmarks/splits.py's sweep on an
    H100), fewer at larger batches; the CUDA kernel keeps two blocks an SM."""
    sbc = pytest.importorskip("rdkernels.ops.shared_bank_contrast.triton")
    from rdkernels.ops.shared_bank_contrast.splits import num_splits_cuda
    monkeypatch.setattr(splits, "multiprocessor_count", lambda device: 132)
    gpu = torch.device("cuda", 0)
    assert sbc._num_splits(64, gpu) == 33
    assert sbc._num_splits(256, gpu) == 9
    assert num_splits_cuda(64, 16384, 16, 64, gpu)[0] == 64   # 2 x 132 / 4 row blocks = 66, in whole tiles
