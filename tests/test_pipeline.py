"""The pipeline's jobs: a sweep holds no slot (its items queue like any other job, so it can never
wait on a job that waits on it), a cancelled sweep ends cancelled, a cancel reads as one line."""

from __future__ import annotations

import threading

import pytest

from core import pipeline
from core.config import CompressConfig, TrainConfig
from core.experiments import submit_sweep
from core.jobs import Cancelled, JobManager, JobState, JobStatus
from core.pipeline import JobCancelled, JobFailed, _outcome, submit_training
from core.store import RunStore
from tests.tiny import TINY


@pytest.fixture
def one_slot(tmp_path, monkeypatch) -> RunStore:
    monkeypatch.setenv("COMPRESSION_LAB_MAX_JOBS", "1")
    pipeline._MANAGERS.clear()
    yield RunStore(tmp_path / "store")
    pipeline._MANAGERS.clear()


def watch(root) -> JobManager:
    return JobManager(root, tune_torch_threads=False)


def test_a_sweep_holds_no_slot_so_it_never_deadlocks_with_a_queued_training(one_slot, monkeypatch):
    from core import executors

    release = threading.Event()
    real_train = executors.train

    def held(cfg, **kwargs):
        if cfg.seed == 7:  # the blocker
            release.wait(60)
        return real_train(cfg, **kwargs)

    monkeypatch.setattr("core.executors.train", held)
    blocker = TrainConfig(**{**TINY, "seed": 7})
    submit_training(one_slot, blocker)  # takes the only slot and holds it
    swept = TrainConfig(**TINY)
    status = submit_sweep(one_slot, [swept], [CompressConfig(method="binarize")])
    manager = watch(one_slot.root)
    for _ in range(50):  # the sweep itself runs at once; its training queues behind the blocker
        if manager.status(status.key).state is JobState.RUNNING:
            break
        threading.Event().wait(0.1)
    assert manager.status(status.key).state is JobState.RUNNING
    release.set()
    final = manager.wait(status.key, timeout=120)
    assert final is not None and final.state is JobState.DONE, final
    assert one_slot.load_run(swept.run_id()) is not None and len(one_slot.list_compressions()) == 1


def test_a_cancelled_sweep_ends_cancelled_and_keeps_what_it_stored(one_slot, monkeypatch):
    from core import executors

    started = threading.Event()
    release = threading.Event()
    real_train = executors.train

    def slow(cfg, **kwargs):
        started.set()
        release.wait(60)
        return real_train(cfg, **kwargs)

    monkeypatch.setattr("core.executors.train", slow)
    runs = [TrainConfig(**{**TINY, "seed": s}) for s in (1, 2)]
    status = submit_sweep(one_slot, runs, [CompressConfig(method="binarize")])
    assert started.wait(30)
    manager = watch(one_slot.root)
    manager.cancel(status.key)
    release.set()
    final = manager.wait(status.key, timeout=120)
    assert final is not None and final.state is JobState.CANCELLED, final


def test_a_cancel_reads_as_one_line_not_as_its_internal_exception():
    cancelled = JobStatus(key="k", kind="train", label="x", state=JobState.CANCELLED, message="cancelled")
    with pytest.raises(JobCancelled, match="was cancelled"):
        _outcome(cancelled, [Cancelled()], "training run k")
    failed = JobStatus(key="k", kind="train", label="x", state=JobState.FAILED, message="worker died")
    with pytest.raises(JobFailed, match="worker died"):
        _outcome(failed, [RuntimeError("worker died")], "training run k")  # not a ValueError: one line
    with pytest.raises(ValueError, match="diverged"):
        _outcome(failed, [ValueError("diverged")], "training run k")  # a user's error: its own sentence


def test_the_estimate_counts_activation_aware_k_means():
    """An activation-aware compression costs a calibration pass and a second k-means: the estimate
    that decides whether the Compress page runs it at once must say so."""
    from core.config import CompressConfig, TrainConfig
    from core.pipeline import estimate_seconds
    from core.records import RunRecord

    cfg = TrainConfig(dataset="mnist-5k")
    run = RunRecord(cfg.run_id(), cfg, (1, 28, 28), 10, layers=(), history=(), histograms=())
    plain = estimate_seconds(run, CompressConfig(method="pq", subvector_size=8, n_centroids=256))
    aware = estimate_seconds(
        run, CompressConfig(method="pq", subvector_size=8, n_centroids=256, weighting="activations")
    )
    assert aware > 1.8 * (plain - 0.2) + 0.2
