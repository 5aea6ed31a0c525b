import pickle

import numpy as np
import pytest
import torch

from harness_helpers import single_thread  # noqa: F401 (autouse fixture)
from rdkernels.harness import data as hdata


def _write_fake_cifar(folder, n_train=20, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        entry = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 "fine_labels": rng.integers(0, 100, size=n).tolist(),
                 "coarse_labels": rng.integers(0, 20, size=n).tolist(),
                 "filenames": [f"img_{i}.png" for i in range(n)]}
        with open(folder / split, "wb") as fh:
            pickle.dump(entry, fh)
        out[split] = entry
    return out


def test_cifar100_reader_on_a_fake_copy(tmp_path):
    written = _write_fake_cifar(tmp_path / "cifar-100-python")
    for root in (tmp_path, tmp_path / "cifar-100-python"):  # parent folder or the folder itself
        train = hdata.load_cifar100(root, train=True)
        test = hdata.load_cifar100(root, train=False)
        assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
        assert test.images.shape == (6, 3, 32, 32) and train.num_classes == 100
        assert train.labels.tolist() == written["train"]["fine_labels"]
        # channel-major rows: the first 1024 bytes are the red plane, row by row
        row = written["train"]["data"][3]
        assert np.array_equal(train.images[3, 0].numpy().ravel(), row[:1024])
        assert np.array_equal(train.images[3, 2, 5].numpy(), row[2048 + 5 * 32: 2048 + 6 * 32])
    train, test = hdata.load_dataset(str(tmp_path))
    assert len(train) == 20 and len(test) == 6


def test_cifar100_reader_names_a_missing_copy(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        hdata.load_cifar100(tmp_path)


def test_synthetic_dataset_is_deterministic_and_balanced():
    a_train, a_test = hdata.load_dataset(None, synthetic_n=40, synthetic_test_n=10, num_classes=4, seed=3)
    b_train, _ = hdata.load_dataset(None, synthetic_n=40, synthetic_test_n=10, num_classes=4, seed=3)
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_train.labels, b_train.labels)
    assert a_train.images.shape == (40, 3, 32, 32) and a_test.images.shape == (10, 3, 32, 32)
    assert torch.bincount(torch.cat([a_train.labels, a_test.labels]), minlength=4).tolist() == [13, 13, 12, 12]


def test_augment_is_pad_crop_flip_normalise():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(5)
    out = hdata.augment(images, gen, padding=2)
    # replay the same draws and build each image by hand
    gen = torch.Generator().manual_seed(5)
    offs = torch.randint(0, 5, (6, 2), generator=gen)
    flip = torch.rand(6, generator=gen) < 0.5
    mean = torch.tensor(hdata.CIFAR100_MEAN).view(3, 1, 1)
    std = torch.tensor(hdata.CIFAR100_STD).view(3, 1, 1)
    for i in range(6):
        padded = torch.zeros(3, 12, 12)
        padded[:, 2:10, 2:10] = images[i].float() / 255
        crop = padded[:, offs[i, 0]:offs[i, 0] + 8, offs[i, 1]:offs[i, 1] + 8]
        if flip[i]:
            crop = crop.flip(-1)
        torch.testing.assert_close(out[i], (crop - mean) / std)
    assert flip.any() and not flip.all() and (offs != 2).any()
    plain = hdata.augment(images, train=False)
    torch.testing.assert_close(plain, (images.float() / 255 - mean) / std)
    with pytest.raises(TypeError, match="images"):
        hdata.augment(images.float())


def _labels():
    return torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1])  # class sizes 5, 4, 3


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_device_sampler_draws_other_classes_uniformly(mode):
    labels = _labels()
    sampler = hdata.DeviceContrastSampler(labels, 3, k=3000, mode=mode)
    index = torch.arange(12)
    idx = sampler.sample(index, torch.Generator().manual_seed(0))
    assert idx.shape == (12, 3001) and idx.dtype == torch.int64
    neg = idx[:, 1:]
    assert (labels[neg] != labels[index][:, None]).all()
    for row in (0, 1, 2):  # every other-class index is drawn, about equally often
        others = torch.nonzero(labels != labels[row]).flatten()
        counts = torch.bincount(neg[row], minlength=12)[others].double()
        assert (counts > 0).all() and counts.sum() == 3000
        assert (counts / counts.mean() - 1).abs().max() < 0.25
    if mode == "exact":
        assert torch.equal(idx[:, 0], index)
    else:
        assert (labels[idx[:, 0]] == labels[index]).all()
        assert (idx[:, 0] != index).any()


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_device_sampler_draws_distinct_negatives_like_the_reference(mode):
    labels = _labels()  # pools of 7, 8 and 9 other-class indices
    sampler = hdata.DeviceContrastSampler(labels, 3, k=6, mode=mode)
    assert not sampler.replace
    index = torch.arange(12)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(12, 12)
    for _ in range(600):
        idx = sampler.sample(index, gen)
        assert idx.shape == (12, 7)
        neg = idx[:, 1:]
        assert (labels[neg] != labels[index][:, None]).all()
        assert all(len(set(row)) == 6 for row in neg.tolist())  # no index twice in a row
        counts += torch.nn.functional.one_hot(neg, 12).sum(1)
    for row in range(12):  # every subset equally likely: each pool index in 6/|pool| of the draws
        pool = torch.nonzero(labels != labels[row]).flatten()
        share = counts[row, pool] / 600
        assert (share - 6 / len(pool)).abs().max() < 0.08
    # every row with replacement on request, or where K exceeds every pool (as np.random.choice)
    assert hdata.DeviceContrastSampler(labels, 3, k=6, replace=True).replace
    assert hdata.DeviceContrastSampler(labels, 3, k=10).replace
    assert not hdata.DeviceContrastSampler(labels, 3, k=8).replace  # only class 0's rows: see below


def test_device_sampler_falls_back_to_replacement_per_row_as_the_reference():
    """K above the largest class's pool: np.random.choice draws with replacement for that
    class's rows only; every other row still gets K distinct negatives."""
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 5)  # pools: class 0 -> 10, classes 1 and 2 -> 15
    k = 12
    sampler = hdata.DeviceContrastSampler(labels, 3, k=k)
    assert not sampler.replace
    gen = torch.Generator().manual_seed(0)
    index = torch.arange(20)
    short = []   # class 0's rows: 12 draws each from its pool of 10 (the indices 10..19)
    for _ in range(200):
        neg = sampler.sample(index, gen)[:, 1:]
        assert (labels[neg] != labels[index][:, None]).all()
        rows = neg.tolist()
        assert all(len(set(row)) == k for row in rows[10:])  # classes 1, 2: K of 15, distinct
        short += rows[:10]
    # uniform with replacement: each pool index in a tenth of the draws, and 10 (1 - 0.9^12) = 7.18
    # distinct indices a row on average (a sampler that took all ten and repeated two would show 10)
    counts = torch.bincount(torch.tensor(short).flatten(), minlength=20)[10:].double()
    assert ((counts / counts.sum() - 0.1).abs() < 0.01).all()
    distinct = sum(len(set(row)) for row in short) / len(short)
    assert abs(distinct - 10 * (1 - 0.9 ** k)) < 0.15
    # the reference, on the same labels: the same rule
    data = hdata.ImageSet(torch.zeros(20, 3, 4, 4, dtype=torch.uint8), labels, 3)
    ref = hdata.InstanceSampleDataset(data, k=k)
    assert all(len(set(ref[(15, seed)][3][1:].tolist())) == k for seed in range(50))
    assert all(len(set(ref[(0, seed)][3][1:].tolist())) < k for seed in range(50))


def test_device_sampler_needs_two_classes():
    with pytest.raises(ValueError, match="two classes"):
        hdata.DeviceContrastSampler(torch.zeros(5, dtype=torch.int64), 1, k=2)
    with pytest.raises(ValueError, match="mode"):
        hdata.DeviceContrastSampler(_labels(), 3, k=2, mode="loose")


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_worker_dataset_matches_the_reference_sampling(mode):
    labels = _labels()
    data = hdata.ImageSet(torch.zeros(12, 3, 4, 4, dtype=torch.uint8), labels, 3)
    ds = hdata.InstanceSampleDataset(data, k=6, mode=mode)
    for i in range(12):
        img, y, index, idx = ds[(i, 1234 + i)]
        assert index == i and y == labels[i] and idx.shape == (7,)
        neg = idx[1:]
        assert (labels[neg] != y).all()
        # without replacement while K fits in the pool (pool sizes 7, 8, 9 here)
        assert len(set(neg.tolist())) == 6
        if mode == "exact":
            assert idx[0] == i
        else:
            assert labels[idx[0]] == y
        # the reference's draw, from the same seed
        rs = np.random.RandomState(1234 + i)
        pos = i if mode == "exact" else rs.choice(np.flatnonzero(labels.numpy() == y), 1)[0]
        ref = rs.choice(np.flatnonzero(labels.numpy() != y), 6, replace=False)
        assert idx.tolist() == [pos] + ref.tolist()
        assert torch.equal(idx, ds[(i, 1234 + i)][3])  # a pure function of the key
    big = hdata.InstanceSampleDataset(data, k=20, mode=mode)  # K > pool: with replacement
    assert big[(0, 1)][3].shape == (21,)
    assert len(hdata.InstanceSampleDataset(data, k=0)[(0, 1)]) == 3


def test_epoch_batches_drop_the_tail_and_resume_mid_epoch():
    full = list(hdata.EpochBatchSampler(10, 3, seed=1, epoch=2))
    assert len(full) == 3 and all(len(b) == 3 for b in full)
    assert sorted(i for b in full for i, _ in b) == sorted(hdata.epoch_order(10, 1, 2)[0][:9].tolist())
    assert list(hdata.EpochBatchSampler(10, 3, seed=1, epoch=2, start=1)) == full[1:]
    assert list(hdata.EpochBatchSampler(10, 3, seed=1, epoch=3)) != full
