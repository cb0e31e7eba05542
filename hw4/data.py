"""MNIST and Fashion-MNIST as in-memory tensor datasets.

Data is found through ``HW4_DATA_DIR``: when it is set the files must already be there (nothing
is downloaded); when it is unset ``./data`` is used and torchvision downloads what is missing.
The files are read here, in torchvision's raw layout (``<root>/MNIST/raw/*-ubyte``): importing
torchvision costs every process that loads data about 1.5 s, so only a download imports it.
Images come out as float tensors ``(N, 1, 28, 28)``; the normalisation is an explicit choice.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from hw4.errors import HW4Error

DATA_ENV = "HW4_DATA_DIR"
DatasetName = Literal["mnist", "fashion_mnist"]
Split = Literal["train", "test"]
# unit: [0, 1] (the project's boundary convention); symmetric: [-1, 1] (DDPM); standard: z-score.
Normalization = Literal["unit", "symmetric", "standard"]

FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision's class names
# Train-split pixel statistics (shared/data/README.md), used by the "standard" normalisation.
PIXEL_STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2861, 0.3529)}
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def data_root() -> tuple[Path, bool]:
    """Return ``(root, download_allowed)`` following the ``HW4_DATA_DIR`` rule."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser(), False
    return Path("data"), True


def pin_data_dir() -> None:
    """Make a relative ``HW4_DATA_DIR`` absolute in this process's environment, from the folder
    it was given in, so that processes started elsewhere (Ray Train runs each worker in its run's
    folder) inherit a path that still points at the data."""
    env = os.environ.get(DATA_ENV)
    if env:
        os.environ[DATA_ENV] = str(Path(env).expanduser().resolve())


def normalize(images: torch.Tensor, name: DatasetName, normalization: Normalization) -> torch.Tensor:
    """Map ``[0, 1]`` images to the chosen range."""
    if normalization == "unit":
        return images
    if normalization == "symmetric":
        return images * 2.0 - 1.0
    if normalization == "standard":
        mean, std = PIXEL_STATS[name]
        return (images - mean) / std
    raise HW4Error(f"unknown normalization {normalization!r}; use unit, symmetric or standard")


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (MNIST's format): a big-endian header of magic ``0x08``
    (uint8) and the number of dimensions, one 4-byte size per dimension, then the data."""
    raw = bytearray(path.read_bytes())  # writable, so torch shares it rather than copy it again
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise HW4Error(f"{path} is not an IDX file of unsigned bytes")
    ndim, start = raw[3], 4 + 4 * raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - start != math.prod(shape):
        raise HW4Error(f"{path}: {len(raw) - start} bytes of data for shape {shape}")
    return torch.frombuffer(raw, dtype=torch.uint8, offset=start).reshape(shape)


def raw_files(root: Path, name: DatasetName, split: Split) -> tuple[Path, Path]:
    prefix = "train" if split == "train" else "t10k"
    folder = root / FOLDERS[name] / "raw"
    return folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte"


def load_tensors(name: DatasetName, split: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole split as ``(images (N,1,28,28) float in [0,1], labels (N,) int64)``."""
    if name not in FOLDERS:
        raise HW4Error(f"unknown dataset {name!r}; use one of {sorted(FOLDERS)}")
    root, download = data_root()
    files = raw_files(root, name, split)
    if download and not all(f.is_file() for f in files):
        from torchvision import datasets  # downloads into the same raw layout

        try:
            getattr(datasets, FOLDERS[name])(root=str(root), train=split == "train", download=True)
        except (RuntimeError, OSError) as err:  # offline, or a mirror that failed
            raise HW4Error(f"could not download {name} into {root}: {err}; set {DATA_ENV} to a "
                           f"folder holding {FOLDERS[name]}/raw") from err
    if not all(f.is_file() for f in files):
        raise HW4Error(
            f"{name} not found under {root} ({DATA_ENV}={os.environ.get(DATA_ENV, '<unset>')}); "
            f"point {DATA_ENV} at a folder holding {FOLDERS[name]}/raw, "
            f"or unset it to download into ./data"
        )
    images, labels = (read_idx(f) for f in files)
    return images.unsqueeze(1).float().div_(255.0), labels.long()  # (N, 1, 28, 28), (N,)


def load_dataset(
    name: DatasetName,
    split: Split = "train",
    *,
    normalization: Normalization = "unit",
    subset: int | None = None,
    seed: int = 0,
) -> TensorDataset:
    """A ``TensorDataset`` of ``(image, label)``; ``subset`` keeps a seeded random ``subset`` of it."""
    images, labels = load_tensors(name, split)
    if subset is not None:
        if subset <= 0:
            raise HW4Error(f"subset must be positive, got {subset}")
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(images), generator=gen)[:subset]
        images, labels = images[keep], labels[keep]
    return TensorDataset(normalize(images, name, normalization), labels)


class TensorBatches:
    """Shuffled mini-batches sliced from tensors that stay where they are (on the GPU, the whole
    of MNIST is 188 MB: no host-to-device copy per batch, no per-item collation on the CPU).

    Data-parallel workers each take every ``world``-th example of one seeded permutation per
    epoch (as ``DistributedSampler`` does); ``set_epoch`` reshuffles. Yields ``(x, y)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world: int = 1,
                 drop_last: bool = True, device: torch.device | str | None = None):
        if batch_size < 1:
            raise HW4Error(f"batch_size must be >= 1, got {batch_size}")
        device = images.device if device is None else torch.device(device)
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.images)
        if self.shuffle:  # the permutation is drawn on the CPU: the same on every device
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        per_rank = n // self.world
        return order[self.rank::self.world][:per_rank].to(self.images.device)

    def __len__(self) -> int:
        per_rank = len(self.images) // self.world
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self):
        idx = self._indices()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = idx[start:start + self.batch_size]  # (B,)
            yield self.images[batch], self.labels[batch]


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """An in-process loader (the data is already tensors, so workers would only add overhead)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last
    )
