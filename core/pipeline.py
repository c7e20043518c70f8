"""What to compute, and when: a run or a compression from the store when it is there, computed
and published when it is not. The CLI, the pages, the sweep engine and bench/ all come here.

The store (core/store.py) only persists; single flight across threads and processes, bounded
concurrency, progress and cancel are the job layer's (core/jobs.py).
"""

from __future__ import annotations

import torch

from .compress import compress_run
from .config import CompressConfig, TrainConfig
from .data import Dataset
from .records import CompressionRecord, RunRecord
from .store import RunStore
from .train import OnEpoch, OnStep, train


def get_or_train(
    store: RunStore,
    cfg: TrainConfig,
    device: str | torch.device | None = None,
    on_epoch: OnEpoch | None = None,
    on_step: OnStep | None = None,
    data: Dataset | None = None,
) -> tuple[RunRecord, bool]:
    """(run, was_cached). Trains and stores only on a miss; a failed or interrupted training stores
    nothing."""
    cached = store.load_run(cfg.run_id(), verify_weights=True)
    if cached is not None:
        return cached, True
    record = train(cfg, device=device, on_epoch=on_epoch, on_step=on_step, data=data)
    store.save_run(record)
    return record, False


def get_or_compress(
    store: RunStore,
    run: RunRecord,
    cfg: CompressConfig,
    device: str | torch.device | None = None,
    data: Dataset | None = None,
    on_step: OnStep | None = None,
) -> tuple[CompressionRecord, bool]:
    """(record with its file path, was_cached). Compresses and stores only on a miss."""
    cached = store.load_compression(run.run_id, cfg)
    if cached is not None:
        return cached, True
    record, blob = compress_run(run, cfg, data=data, device=device, on_step=on_step)
    return store.save_compression(record, blob), False
