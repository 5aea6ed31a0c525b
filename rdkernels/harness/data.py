"""CIFAR-100 data for the harness: a local pickle reader, a synthetic stand-in,
tensor-only augmentation, and the two ways of producing CRD's ``contrast_idx``.

* ``InstanceSampleDataset`` + ``worker_loader``: the reference's path. Each item
  is ``(image, label, index, contrast_idx)``; the K negatives are drawn with
  numpy inside DataLoader workers, ``np.random.choice`` over the other classes'
  indices (without replacement when K fits, as RepDistiller does). Every item
  gets its own RNG, seeded from (seed, epoch, position), so the stream does not
  depend on the number of workers and a run can resume mid-epoch.
* ``DeviceContrastSampler``: the same sampling done on the device for the whole
  batch with torch random ops: K distinct negatives per row from the other
  classes, as the reference draws them, and with replacement for a row whose
  pool is smaller than K, where the reference falls back (``replace=True``
  draws every row with replacement instead: cheaper, and at CIFAR's K = 16384
  of 49 500 about 15% of a row's draws repeat an index already drawn).

Both yield batches of uint8 images that ``augment`` crops, flips and normalises
on the device.
"""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
SAMPLING_MODES = ("exact", "relax")


@dataclasses.dataclass
class ImageSet:
    """uint8 images [N, 3, H, W] and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return self.labels.shape[0]


# ---------------------------------------------------------------- sources

def _find_cifar_dir(root: Path) -> Path:
    for cand in (root, root / "cifar-100-python"):
        if (cand / "train").is_file() and (cand / "test").is_file():
            return cand
    raise FileNotFoundError(
        f"no CIFAR-100 python-pickle copy under {str(root)!r}: expected 'train' and 'test' "
        "files there or in its 'cifar-100-python' folder (the layout of cifar-100-python.tar.gz)")


def load_cifar100(root: str | Path, train: bool = True) -> ImageSet:
    """Read CIFAR-100 from a local copy in the python-pickle layout (no download).

    ``root`` is the extracted ``cifar-100-python`` folder or its parent.
    Labels are the 100 fine labels.
    """
    folder = _find_cifar_dir(Path(root))
    with open(folder / ("train" if train else "test"), "rb") as fh:
        entry = pickle.load(fh, encoding="latin1")
    data = np.asarray(entry["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{folder}: 'data' must be [N, 3072] uint8, got shape {data.shape}")
    labels = np.asarray(entry["fine_labels"], dtype=np.int64)
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"{folder}: {data.shape[0]} images but {labels.shape[0]} labels")
    # rows are channel-major (1024 R, 1024 G, 1024 B), so a reshape gives [N, 3, 32, 32]
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.from_numpy(labels), 100)


def synthetic_cifar(n: int, num_classes: int = 100, image_size: int = 32, seed: int = 0) -> ImageSet:
    """A CIFAR-shaped stand-in: each class is a smooth random colour pattern, each
    image that pattern plus noise, so models can learn it and loss curves fall.
    Deterministic in ``seed``; labels are balanced (i % num_classes)."""
    if n < 1 or num_classes < 1:
        raise ValueError(f"n and num_classes must be positive, got n={n}, num_classes={num_classes}")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    protos = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.arange(n, dtype=torch.int64) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    # integer arithmetic throughout: 60 000 images take about a second
    base = (protos * (0.6 * 255)).round().to(torch.uint8)
    images = torch.randint(0, 103, (n, 3, image_size, image_size), generator=g, dtype=torch.uint8)
    images += base[labels]  # <= 153 + 102, no overflow
    return ImageSet(images, labels, num_classes)


def load_dataset(data: str | None, *, synthetic_n: int = 50_000, synthetic_test_n: int = 10_000,
                 num_classes: int = 100, image_size: int = 32, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(train, test): CIFAR-100 from ``data`` if given, else the synthetic set
    (train and test drawn from the same class patterns)."""
    if data:
        return load_cifar100(data, train=True), load_cifar100(data, train=False)
    full = synthetic_cifar(synthetic_n + synthetic_test_n, num_classes, image_size, seed)
    cut = synthetic_n
    return (ImageSet(full.images[:cut], full.labels[:cut], num_classes),
            ImageSet(full.images[cut:], full.labels[cut:], num_classes))


# ---------------------------------------------------------------- augmentation

def augment(images: torch.Tensor, generator: torch.Generator | None = None, *, train: bool = True,
            padding: int = 4, mean=CIFAR100_MEAN, std=CIFAR100_STD) -> torch.Tensor:
    """CIFAR augmentation on a uint8 batch [B, 3, H, W], on its own device.

    train: random crop after zero padding by ``padding`` pixels, then a horizontal
    flip with probability 1/2 (RepDistiller's RandomCrop(32, 4) + RandomHorizontalFlip),
    done as one gather; always: scale to [0, 1] and normalise per channel.
    Random draws come from ``generator`` (on the images' device).
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"images must be a uint8 [B, C, H, W] tensor, got {images.dtype} {tuple(images.shape)}")
    dev = images.device
    x = images.float().div_(255.0)
    if train:
        b, c, h, w = x.shape
        padded = F.pad(x, (padding, padding, padding, padding))
        offs = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator, device=dev)
        flip = torch.rand(b, generator=generator, device=dev) < 0.5
        ar_h = torch.arange(h, device=dev)
        ar_w = torch.arange(w, device=dev)
        rows = offs[:, :1] + ar_h
        cols = offs[:, 1:] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)
        x = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
    m = torch.tensor(mean, device=dev, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=dev, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------- batch order

def epoch_order(n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(permutation of range(n), one RNG seed per position) for ``epoch``.

    A pure function of (seed, epoch): a resumed run recomputes it instead of saving it.
    """
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n), rng.integers(0, 2**32, size=n, dtype=np.int64)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped, so every step has
    the same shape; RRD's queue also needs queue_size % batch == 0)."""
    return n // batch_size


# ---------------------------------------------------------------- reference path: workers + numpy

class InstanceSampleDataset(torch.utils.data.Dataset):
    """RepDistiller's CIFAR100InstanceSample on uint8 tensors.

    Keys are ``(index, item_seed)`` pairs (from ``EpochBatchSampler``); an item is
    ``(image_uint8, label, index)`` or, with ``k`` > 0, ``(image, label, index,
    contrast_idx[k+1])``: column 0 is the positive (``index`` in exact mode, a
    random same-class index in relax mode), then ``k`` negatives drawn by
    ``np.random.choice`` from the other classes' indices, without replacement
    unless ``k`` exceeds that pool.
    """

    def __init__(self, data: ImageSet, k: int = 0, mode: str = "exact"):
        if mode not in SAMPLING_MODES:
            raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}")
        self.images = data.images
        self.labels = data.labels
        self.k = int(k)
        self.mode = mode
        if self.k > 0:
            labels = data.labels.numpy()
            self.cls_positive = [np.flatnonzero(labels == c) for c in range(data.num_classes)]
            self.cls_negative = [np.flatnonzero(labels != c) for c in range(data.num_classes)]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, key):
        index, item_seed = key
        img, target = self.images[index], int(self.labels[index])
        if self.k <= 0:
            return img, target, index
        rs = np.random.RandomState(item_seed)  # legacy RNG: the reference's choice() algorithm
        pos = index if self.mode == "exact" else rs.choice(self.cls_positive[target], 1)[0]
        pool = self.cls_negative[target]
        neg = rs.choice(pool, self.k, replace=self.k > len(pool))
        return img, target, index, torch.from_numpy(np.hstack(([pos], neg)).astype(np.int64))


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(index, item_seed)`` for one epoch, starting at batch ``start``."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0):
        self.n, self.batch_size, self.start = n, batch_size, start
        self.order, self.seeds = epoch_order(n, seed, epoch)

    def __len__(self) -> int:
        return steps_per_epoch(self.n, self.batch_size) - self.start

    def __iter__(self):
        bs = self.batch_size
        for b in range(self.start, steps_per_epoch(self.n, bs)):
            sl = slice(b * bs, (b + 1) * bs)
            yield [(int(i), int(s)) for i, s in zip(self.order[sl], self.seeds[sl])]


# ---------------------------------------------------------------- device path

class DeviceContrastSampler:
    """contrast_idx [B, k+1] drawn on the device, for a whole batch at once.

    Negatives come from the indices of the *other* classes. By default they are
    K distinct indices per row, as the reference's ``np.random.choice(...,
    replace=False)`` draws them: the K largest of one uniform key per dataset
    index, the row's own class keyed out, are a uniformly random K-subset of the
    pool. That costs a [B, N] draw and a top-k per batch (fine at CIFAR's N; for
    far larger banks pass ``replace=True``). A row whose pool (its class's
    complement) is smaller than K draws with replacement instead, as
    ``np.random.choice(pool, K, replace=K > len(pool))`` falls back for that row
    only; the other rows of the batch still draw K distinct negatives.

    ``replace=True``: uniform with replacement: a uniform u in [0, N - n_y) is
    mapped past the label's own block of a class-sorted index table.

    The positive is the sample itself (exact) or a uniform same-class index (relax).
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, k: int, mode: str = "exact", device=None,
                 replace: bool = False):
        if mode not in SAMPLING_MODES:
            raise ValueError(f"mode must be one of {SAMPLING_MODES}, got {mode!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        device = torch.device(device) if device is not None else labels.device
        labels = labels.to(device=device, dtype=torch.int64)
        counts = torch.bincount(labels, minlength=num_classes)
        if int((counts < labels.shape[0]).sum()) == 0 or int((counts == labels.shape[0]).any()):
            raise ValueError("contrast sampling needs at least two classes with samples")
        self.k, self.mode, self.n = int(k), mode, labels.shape[0]
        short = self.n - counts < self.k  # classes whose pool cannot give K distinct negatives
        # replace: every row draws with replacement (asked for, or no class's pool holds K)
        self.replace = bool(replace) or bool(short[counts > 0].all())
        # the classes whose rows fall back to replacement, where only some do (else None)
        self.short_classes = short if not self.replace and bool(short.any()) else None
        self.labels = labels
        self.order = torch.argsort(labels, stable=True)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts

    def sample(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        dev = self.order.device
        index = index.to(dev, torch.int64)
        y = self.labels[index]
        start, count = self.starts[y][:, None], self.counts[y][:, None]
        if self.replace:
            neg = self._with_replacement(start, count, generator)
        else:
            neg = self._distinct(y, generator)
            if self.short_classes is not None:
                # drawn for every row, used by the short ones: no host sync to find them,
                # and the stream does not depend on which rows a batch holds
                fallback = self._with_replacement(start, count, generator)
                neg = torch.where(self.short_classes[y][:, None], fallback, neg)
        if self.mode == "exact":
            pos = index[:, None]
        else:
            r = torch.rand(index.shape[0], 1, generator=generator, device=dev, dtype=torch.float64)
            pos = self.order[start + torch.minimum((r * count).long(), count - 1)]
        return torch.cat([pos, neg], dim=1)

    def _distinct(self, y, generator) -> torch.Tensor:
        """K distinct other-class indices per row (rows whose pool is smaller than K
        get some of their own class: the caller replaces those rows)."""
        keys = torch.rand(y.shape[0], self.n, generator=generator, device=self.order.device)
        keys.masked_fill_(self.labels[None, :] == y[:, None], -1.0)  # below every key in [0, 1)
        return keys.topk(self.k, dim=1, sorted=False).indices

    def _with_replacement(self, start, count, generator) -> torch.Tensor:
        n_other = self.n - count
        # float64 uniforms: floor(u * M) stays < M for M up to 2**52
        u = torch.rand(start.shape[0], self.k, generator=generator, device=self.order.device, dtype=torch.float64)
        j = torch.minimum((u * n_other).long(), n_other - 1)
        j = j + (j >= start).long() * count
        return self.order[j]
