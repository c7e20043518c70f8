"""Shared fixtures: a tiny, fast run on the 8x8 digits (1,437 training images)."""

from __future__ import annotations

import os

import pytest

from core.config import TrainConfig
from core.pipeline import get_or_train
from core.store import RunStore
from tests.tiny import TINY

# The tests never touch the network: a missing dataset fails at once instead of trying a download.
os.environ.setdefault("COMPRESSION_LAB_OFFLINE", "1")
# no settings computed ahead of the Compress page's sliders (core.pipeline.Precompute): a test sees the
# compressions it asks for; tests/test_slider.py turns it on where it tests it
os.environ.setdefault("COMPRESSION_LAB_PRECOMPUTE", "0")


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
