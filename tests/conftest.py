"""Shared fixtures: tiny, fast runs on the 8x8 digits (1,437 training images), each trained once per
session; a test that may change a store gets a copy of its own. Also the fast loop's marks
(tests/marks.py)."""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from core.config import CompressConfig, TrainConfig
from core.pipeline import get_or_compress, get_or_train
from core.store import RunStore
from tests.marks import FAST_CASES
from tests.tiny import PAGE_TINY, TINY

# The tests never touch the network: a missing dataset fails at once instead of trying a download.
os.environ.setdefault("COMPRESSION_LAB_OFFLINE", "1")
# no settings computed ahead of the Compress page's sliders (core.pipeline.Precompute): a test sees the
# compressions it asks for; tests/test_slider.py turns it on where it tests it
os.environ.setdefault("COMPRESSION_LAB_PRECOMPUTE", "0")

# The page tests' store: two runs, three compressions each.
LAB_RUNS = (TrainConfig(**PAGE_TINY), TrainConfig(**PAGE_TINY, reg="binary", lam=0.05))
LAB_COMPRESSIONS = (
    CompressConfig(method="binarize"),
    CompressConfig(method="kmeans", n_centroids=4),
    CompressConfig(method="pq", subvector_size=2, n_centroids=8),
)


# Fixtures that train several runs (seconds each on 2 cores): a test that needs one is in the whole
# suite, not in the fast loop, whose budget is under a minute.
TRAINING_FIXTURES = frozenset({"lab_source", "gradual_runs", "plan_store", "slider_store"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark slow the tests that need a training fixture, and the cases of a `@fast_cases(...)` family
    that it does not keep in the fast loop."""
    families: dict[str, list[pytest.Function]] = defaultdict(list)
    for item in items:
        if TRAINING_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if isinstance(item, pytest.Function) and hasattr(item, "callspec") and hasattr(item.obj, FAST_CASES):
            families[item.nodeid.split("[")[0]].append(item)
    for members in families.values():
        keep = getattr(members[0].obj, FAST_CASES)
        first = max((n for n in keep if isinstance(n, int)), default=0)
        ordered = sorted(members, key=lambda item: tuple(item.callspec.indices.values()))
        for position, item in enumerate(ordered):
            if position >= first and item.callspec.id not in keep:
                item.add_marker(pytest.mark.slow)


def copy_store(source: Path, dest: Path) -> Path:
    """A copy of the store at `source` (its runs, compressions and job files) at `dest`."""
    shutil.copytree(source, dest)
    return dest


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    """An empty run store in tmp_path, also the default one for code that reads the env var."""
    root = tmp_path / "cache"
    monkeypatch.setenv("COMPRESSION_LAB_CACHE", str(root))
    return RunStore(root)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> RunStore:
    """A store holding one tiny unregularized run and one tiny binary-regularized run."""
    store = RunStore(tmp_path_factory.mktemp("tiny-store"))
    get_or_train(store, TrainConfig(**TINY))
    get_or_train(store, TrainConfig(**TINY, reg="binary", lam=0.05))
    return store


@pytest.fixture
def tiny_run_in_store(store, tiny_store) -> None:
    """The test's `store` starts with a copy of the tiny unregularized run (TINY), so asking it for
    that run is a cache hit instead of a training. (Were the shared copy ever damaged, the store
    would reject it and train: slower, never wrong.)"""
    run_id = TrainConfig(**TINY).run_id()
    shutil.copytree(tiny_store.run_dir(run_id), store.run_dir(run_id))


@pytest.fixture(scope="session")
def lab_source(tmp_path_factory) -> Path:
    """The page tests' store (LAB_RUNS, each with LAB_COMPRESSIONS), trained once a session. No test
    gets this folder: the fixtures below hand out copies."""
    root = tmp_path_factory.mktemp("lab-source")
    store = RunStore(root)
    for cfg in LAB_RUNS:
        run, _ = get_or_train(store, cfg)
        for ccfg in LAB_COMPRESSIONS:
            get_or_compress(store, run, ccfg)
    return root


@pytest.fixture(scope="module")
def lab_root(lab_source, tmp_path_factory) -> Path:
    """A copy of the page tests' store that the tests of one module share (what their pages compute
    stays in it)."""
    return copy_store(lab_source, tmp_path_factory.mktemp("lab-store") / "store")


@pytest.fixture
def lab_store(lab_root, monkeypatch) -> Path:
    """The module's copy of the page tests' store, as the app's store."""
    monkeypatch.setenv("COMPRESSION_LAB_CACHE", str(lab_root))
    return lab_root


@pytest.fixture
def own_store(lab_source, tmp_path, monkeypatch) -> Path:
    """A store of the test's own (tests that delete): the two page runs, with their binarize and pq
    compressions (not the k-means one), as the app's store."""
    root = copy_store(lab_source, tmp_path / "own-store")
    store = RunStore(root)
    for cfg in LAB_RUNS:
        store.delete_compression(cfg.run_id(), CompressConfig(method="kmeans", n_centroids=4).key())
    monkeypatch.setenv("COMPRESSION_LAB_CACHE", str(root))
    return root


@pytest.fixture
def empty_store(tmp_path, monkeypatch) -> Path:
    """An empty store folder (not yet made), as the app's store."""
    root = tmp_path / "empty-store"
    monkeypatch.setenv("COMPRESSION_LAB_CACHE", str(root))
    return root
