"""The pipeline's jobs: a sweep holds no slot (its items queue like any other job, so it can never
wait on a job that waits on it), a cancelled sweep ends cancelled, a cancel reads as one line."""

from __future__ import annotations

import errno
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from core import pipeline
from core.__main__ import main
from core.config import CompressConfig, TrainConfig
from core.jobs import Cancelled, JobManager, JobSpec, JobState, JobStatus
from core.pipeline import JobCancelled, JobFailed, _outcome, compression_key, submit_sweep, submit_training
from core.store import RunStore
from tests.tiny import TINY


@pytest.fixture
def one_slot(tmp_path, monkeypatch) -> RunStore:
    monkeypatch.setenv("COMPRESSION_LAB_MAX_JOBS", "1")
    pipeline._MANAGERS.clear()
    yield RunStore(tmp_path / "store")
    pipeline._MANAGERS.clear()


def until(condition) -> None:
    """Wait for what must happen, however slow the machine (a hang: pytest-timeout)."""
    while not condition():
        time.sleep(0.01)


def watch(root) -> JobManager:
    return JobManager(root)


def test_a_sweep_holds_no_slot_so_it_never_deadlocks_with_a_queued_training(one_slot, monkeypatch):
    from core import executors

    release = threading.Event()
    real_train = executors.train

    def held(cfg, **kwargs):
        if cfg.seed == 7:  # the blocker
            release.wait()
        return real_train(cfg, **kwargs)

    monkeypatch.setattr("core.executors.train", held)
    blocker = TrainConfig(**{**TINY, "seed": 7})
    try:
        submit_training(one_slot, blocker)  # takes the only slot and holds it
        swept = TrainConfig(**TINY)
        status = submit_sweep(one_slot, [swept], [CompressConfig(method="binarize")])
        manager = watch(one_slot.root)
        # the sweep itself runs while the blocker holds the only slot (it holds none); its training queues
        until(lambda: manager.status(status.key).state is not JobState.QUEUED)
        assert manager.status(status.key).state is JobState.RUNNING
    finally:
        release.set()
    final = manager.wait(status.key)
    assert final is not None and final.state is JobState.DONE, final
    assert one_slot.load_run(swept.run_id()) is not None and len(one_slot.list_compressions()) == 1


def test_a_cancelled_sweep_ends_cancelled_and_keeps_what_it_stored(one_slot, monkeypatch):
    from core import executors

    started = threading.Event()
    release = threading.Event()
    real_train = executors.train

    def slow(cfg, **kwargs):
        started.set()
        release.wait()
        return real_train(cfg, **kwargs)

    monkeypatch.setattr("core.executors.train", slow)
    runs = [TrainConfig(**{**TINY, "seed": s}) for s in (1, 2)]
    try:
        status = submit_sweep(one_slot, runs, [CompressConfig(method="binarize")])
        started.wait()
        manager = watch(one_slot.root)
        manager.cancel(status.key)
    finally:
        release.set()
    final = manager.wait(status.key)
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


# ----------------------------------------------------- an unusable jobs folder, from the CLI and the app
TRAIN_ARGS = ["train", "--dataset", "digits", "--hidden", "32", "16", "--epochs", "2", "--lr", "3e-3"]
TRAINED = TrainConfig(**TINY)


def _own_lock_a_folder(root: Path, key: str) -> None:
    (root / "jobs" / f"{key}.lock").mkdir(parents=True)


def _own_lock_links_outside(root: Path, key: str) -> None:
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / f"{key}.lock").symlink_to(root.parent / "outside")


def _jobs_a_file(root: Path, key: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "jobs").write_text("x")


def _slots_a_file(root: Path, key: str) -> None:
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / "slots").write_text("x")


def _slot_lock_a_folder(root: Path, key: str) -> None:
    (root / "jobs" / "slots" / "0.lock").mkdir(parents=True)


BROKEN = {
    "its lock is a folder": (_own_lock_a_folder, "is a folder"),
    "its lock links outside": (_own_lock_links_outside, "is a symbolic link"),
    "jobs is a file": (_jobs_a_file, "is a file, not a folder"),
    "slots is a file": (_slots_a_file, "is a file, not a folder"),
    "a slot lock is a folder": (_slot_lock_a_folder, "is not a regular file"),
}


def _entries(root: Path) -> list[str]:
    """What the store holds besides the broken jobs folder itself."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.parts[len(root.parts)] != "jobs")


def _store_with_a_run(tiny_store: RunStore, root: Path) -> RunStore:
    shutil.copytree(tiny_store.root / "runs", root / "runs")
    return RunStore(root)


@pytest.mark.parametrize("how", BROKEN, ids=list(BROKEN))
@pytest.mark.parametrize("command", ["train", "compress"])
def test_the_cli_says_one_line_for_an_unusable_jobs_folder(capsys, tmp_path, tiny_store, monkeypatch, how, command):
    monkeypatch.setenv("COMPRESSION_LAB_MAX_JOBS", "1")
    pipeline._MANAGERS.clear()
    root = tmp_path / "store"
    make_broken, message = BROKEN[how]
    if command == "train":
        argv, key = [*TRAIN_ARGS, "--cache-dir", str(root), "--json"], TRAINED.run_id()  # --json: no bar
    else:
        run = _store_with_a_run(tiny_store, root).list_runs()[0]
        argv = ["compress", run.run_id, "--method", "binarize", "--cache-dir", str(root), "--json"]
        key = compression_key(run.run_id, CompressConfig(method="binarize"))
    make_broken(root, key)
    before = _entries(root)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in out + err
    assert _entries(root) == before  # nothing written
    assert not (tmp_path / "outside").exists()
    pipeline._MANAGERS.clear()


def test_rm_takes_the_runs_job_entries_with_it(capsys, tmp_path, monkeypatch):
    pipeline._MANAGERS.clear()
    root = tmp_path / "store"
    other = TrainConfig(**{**TINY, "seed": 5})
    assert main([*TRAIN_ARGS, "--cache-dir", str(root)]) == 0
    assert main([*TRAIN_ARGS, "--seed", "5", "--cache-dir", str(root)]) == 0
    run_id = TRAINED.run_id()
    assert main(["compress", run_id, "--method", "binarize", "--cache-dir", str(root)]) == 0
    manager = watch(root)
    assert {s.key for s in manager.jobs()} == {
        run_id,
        other.run_id(),
        compression_key(run_id, CompressConfig(method="binarize")),
    }
    capsys.readouterr()
    assert main(["rm", run_id, "--cache-dir", str(root)]) == 0
    assert [s.key for s in manager.jobs()] == [other.run_id()]  # the Jobs page lists no job of the deleted run
    assert not list((root / "jobs").glob(f"{run_id}*"))
    pipeline._MANAGERS.clear()


@pytest.fixture
def app_store(tmp_path, tiny_store, monkeypatch) -> RunStore:
    monkeypatch.setenv("COMPRESSION_LAB_CACHE", str(tmp_path / "store"))
    monkeypatch.setenv("COMPRESSION_LAB_MAX_JOBS", "1")
    pipeline._MANAGERS.clear()
    yield _store_with_a_run(tiny_store, tmp_path / "store")
    pipeline._MANAGERS.clear()


def _read_only_store(root: Path, monkeypatch) -> None:
    """A store the app cannot write (tests run as root, so chmod stops nothing: the refusal is
    simulated where the store writes)."""
    real = Path.write_bytes

    def refuse(self, data):
        if str(self).startswith(str(root)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", refuse)


APP_BROKEN = {
    "jobs is a file": lambda root, monkeypatch: _jobs_a_file(root, ""),
    "slots is a file": lambda root, monkeypatch: _slots_a_file(root, ""),
    "read-only store": _read_only_store,
}
APP = str(Path(__file__).resolve().parent.parent / "app.py")


def _open(page: str, query: dict):
    app_test = pytest.importorskip("streamlit.testing.v1").AppTest
    at = app_test.from_file(APP, default_timeout=60)
    at.query_params.update(query)
    at.run()
    at.switch_page(f"views/{page}.py")
    at.run()
    return at


@pytest.mark.parametrize("how", APP_BROKEN, ids=list(APP_BROKEN))
def test_the_train_page_says_one_line_for_a_store_it_cannot_write(app_store, monkeypatch, how):
    APP_BROKEN[how](app_store.root, monkeypatch)
    before = _entries(app_store.root)
    at = _open("train", {"dataset": "digits", "hidden": "16", "epochs": "1"})
    assert not at.exception, [e.message for e in at.exception]
    at.button(key="train_button").click().run()
    assert not at.exception, [e.message for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "could not start" in errors[0] and "\n" not in errors[0], errors
    assert _entries(app_store.root) == before


@pytest.mark.parametrize("how", APP_BROKEN, ids=list(APP_BROKEN))
def test_the_compress_page_says_one_line_for_a_store_it_cannot_write(app_store, monkeypatch, how):
    APP_BROKEN[how](app_store.root, monkeypatch)
    run = app_store.list_runs()[0]
    before = _entries(app_store.root)
    at = _open("compress", {"run": run.run_id, "method": "binarize"})
    assert not at.exception, [e.message for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0] and ("jobs" in errors[0] or "not writable" in errors[0]), errors
    assert _entries(app_store.root) == before


def test_the_jobs_page_shows_the_good_entries_beside_bad_ones(app_store):
    manager = watch(app_store.root)
    manager.run(JobSpec("good", "train", "a good job", lambda ctx: None, lambda: True))  # done at once: no entry
    done = {"flag": False}
    manager.run(JobSpec("good", "train", "a good job", lambda ctx: done.update(flag=True), lambda: done["flag"]))
    jobs = app_store.root / "jobs"
    (jobs / "bad.json").write_text(
        json.dumps({**json.loads((jobs / "good.json").read_text()), "key": "bad", "finished": "x"})
    )
    (jobs / "worse.json").write_text(
        json.dumps(
            {**json.loads((jobs / "good.json").read_text()), "key": "worse", "state": "queued", "submitted": None}
        )
    )
    at = _open("jobs", {})
    assert not at.exception, [e.message for e in at.exception]
    shown = " ".join(str(m.value) for m in at.markdown)
    assert "a good job" in shown
    assert not (jobs / "bad.json").exists() and not (jobs / "worse.json").exists()
