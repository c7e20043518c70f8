"""Shared fixtures: a tiny, fast run on the 8x8 digits (1,437 training images)."""

from __future__ import annotations

import os

import pytest

from core.config import TrainConfig
from core.store import RunStore

# The tests never touch the network: a missing dataset fails at once instead of trying a download.
os.environ.setdefault("COMPRESSION_LAB_OFFLINE", "1")

TINY = dict(dataset="digits", model="mlp", hidden=(32, 16), epochs=2, lr=3e-3, batch_size=64, seed=0)


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
    store.get_or_train(TrainConfig(**TINY))
    store.get_or_train(TrainConfig(**TINY, reg="binary", lam=0.05))
    return store
