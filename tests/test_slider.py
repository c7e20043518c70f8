"""The slider answers at once (issue 19): a compression the page computes is waited on for at most
INLINE_LIMIT_S, then its live panel takes over and shows the result when it lands; and the page's
cheap compressions run in the interactive slot, beside a training that holds the only queue slot."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from core.config import CompressConfig, TrainConfig
from core.jobs import JobManager, JobSpec, JobState
from core.pipeline import compression_key, get_or_train
from core.store import RunStore

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 60
RUN = TrainConfig(dataset="digits", model="mlp", hidden=(16,), epochs=1, batch_size=64, seed=0)
SETTING = CompressConfig(method="pq", subvector_size=2, n_centroids=4)
QUERY = {"run": RUN.run_id(), "method": "pq", "d": "2", "k": "4"}


def until(condition) -> None:
    """Wait for what must happen, however slow the machine (a hang is caught by pytest-timeout)."""
    while not condition():
        time.sleep(0.005)


@pytest.fixture
def slider_store(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "store"
    get_or_train(RunStore(root), RUN)
    monkeypatch.setenv("COMPRESSION_LAB_CACHE", str(root))
    return root


class HeldCompression:
    """core.executors.compress_run, held until released: a compression slower than the page's wait."""

    def __init__(self, monkeypatch) -> None:
        from core import executors

        self.real = executors.compress_run
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        monkeypatch.setattr("core.executors.compress_run", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.started.set()
        self.release.wait(TIMEOUT)
        return self.real(*args, **kwargs)


def open_compress() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(QUERY)
    at.run()
    at.switch_page("views/compress.py")
    at.run()
    return at


def metric_labels(at: AppTest) -> list[str]:
    return [m.label for m in at.metric]


def test_a_slow_compression_leaves_the_live_panel_and_its_result_shows_when_it_lands(slider_store, monkeypatch):
    held = HeldCompression(monkeypatch)
    at = open_compress()  # returns although the compression is held: the page does not block on it
    assert not at.exception, [e.message for e in at.exception]
    assert held.started.is_set()
    assert at.get("progress"), "the job's live panel is shown"
    assert any(b.label == "Cancel" for b in at.button)
    assert "Still computing" in " ".join(str(i.value) for i in at.info)
    assert "Accuracy after" not in metric_labels(at)

    held.release.set()
    key = compression_key(RUN.run_id(), SETTING)
    status = JobManager(slider_store).wait(key, timeout=TIMEOUT)
    assert status is not None and status.state is JobState.DONE
    at.run()  # what the panel's fragment does by itself once the job is terminal (st.rerun of the app)
    assert not at.exception
    assert "Accuracy after" in metric_labels(at) and not at.get("progress")
    assert held.calls == 1


def test_a_cancelled_compression_is_offered_again_not_restarted(slider_store, monkeypatch):
    held = HeldCompression(monkeypatch)
    at = open_compress()
    next(b for b in at.button if b.label == "Cancel").click().run()
    held.release.set()
    key = compression_key(RUN.run_id(), SETTING)
    status = JobManager(slider_store).wait(key, timeout=TIMEOUT)
    assert status is not None and status.state is JobState.CANCELLED
    at.run()
    assert not at.exception
    assert "was cancelled" in " ".join(str(e.value) for e in at.error)
    assert at.button(key="compute_button")  # an offer, one click away
    assert held.calls == 1  # and nothing started again by itself
    assert RunStore(slider_store).load_compression(RUN.run_id(), SETTING) is None


class Held:
    """A fake job that computes until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = threading.Event()
        self.done = False

    def run(self, ctx) -> None:
        self.running.set()
        self.release.wait(TIMEOUT)
        self.done = True

    def spec(self, key: str, kind: str = "train") -> JobSpec:
        return JobSpec(key=key, kind=kind, label=f"held {key}", run=self.run, is_done=lambda: self.done)


def test_an_interactive_job_runs_while_a_training_holds_the_only_slot(tmp_path):
    manager = JobManager(tmp_path, max_running=1, poll_s=0.02)
    training, queued, glimpse = Held(), Held(), Held()
    manager.submit(training.spec("training"))
    assert training.running.wait(TIMEOUT)
    manager.submit(queued.spec("queued"))  # an ordinary job waits for the slot...
    manager.submit(glimpse.spec("glimpse", "compress"), interactive=True)  # ...an interactive one does not
    assert glimpse.running.wait(TIMEOUT)
    glimpse.release.set()
    assert manager.wait("glimpse", timeout=TIMEOUT).state is JobState.DONE
    assert manager.status("training").state is JobState.RUNNING
    assert manager.status("queued").state is JobState.QUEUED and not queued.running.is_set()
    training.release.set()
    queued.release.set()
    assert manager.wait("queued", timeout=TIMEOUT).state is JobState.DONE


def test_a_second_interactive_job_queues_while_the_interactive_slot_is_taken(tmp_path):
    manager = JobManager(tmp_path, max_running=1, poll_s=0.02)
    training, first, second = Held(), Held(), Held()
    manager.submit(training.spec("training"))
    assert training.running.wait(TIMEOUT)
    manager.submit(first.spec("first", "compress"), interactive=True)
    assert first.running.wait(TIMEOUT)
    manager.submit(second.spec("second", "compress"), interactive=True)
    until(lambda: manager.status("second").state is JobState.QUEUED)
    assert not second.running.is_set()  # one interactive slot: at most max_running + 1 compute at once
    first.release.set()
    assert second.running.wait(TIMEOUT)  # the interactive slot, free again, before the training ends
    assert manager.status("training").state is JobState.RUNNING
    second.release.set()
    training.release.set()
    assert manager.wait("second", timeout=TIMEOUT).state is JobState.DONE
    assert manager.wait("training", timeout=TIMEOUT).state is JobState.DONE


# ------------------------------------------------------------------ settings computed ahead of a press


def test_the_neighbours_are_one_press_then_two_away_along_the_methods_sliders():
    from views.compress import neighbours

    shown = CompressConfig(method="pq", subvector_size=1, n_centroids=256)  # the page's pq, d = 1: kmeans
    near = [cfg.label() for cfg in neighbours(shown, "pq")]
    assert near == ["kmeans k=128", "kmeans k=512", "pq d=2 k=256 shared", "kmeans k=64", "kmeans k=1024",
                    "pq d=4 k=256 shared"]  # fmt: skip
    # a method without a d slider has no d neighbours; float has no slider at all
    assert all(cfg.method == "binarize" for cfg in neighbours(CompressConfig(method="binarize"), "binarize"))
    assert neighbours(CompressConfig(method="float"), "float") == []


class Ahead:
    """A Precompute on the slider store, with core.executors.compress_run counted (and held if asked)."""

    def __init__(self, monkeypatch, root: Path, budget: int, hold: bool = False) -> None:
        from core import executors, pipeline

        monkeypatch.setenv("COMPRESSION_LAB_PRECOMPUTE", str(budget))
        monkeypatch.setattr(pipeline, "_PRECOMPUTES", {})
        self.real = executors.compress_run
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.started = threading.Event()
        self.computed: list[str] = []
        self.nice: list[int] = []  # each computation's thread's niceness, as it starts
        self.nice_after: list[int] = []  # and once released
        monkeypatch.setattr("core.executors.compress_run", self)
        self.store = RunStore(root)
        self.ahead = pipeline.precompute(self.store)

    def __call__(self, run, cfg, *args, **kwargs):
        import os

        self.nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        self.computed.append(f"{run.run_id}-{cfg.key()}")
        self.started.set()
        self.release.wait(TIMEOUT)
        self.nice_after.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return self.real(run, cfg, *args, **kwargs)

    def idle(self) -> None:
        until(lambda: self.ahead.running() is None and not self.ahead.wanted())


def test_computing_ahead_is_bounded_and_passes_over_what_is_stored_expensive_or_does_not_fit(slider_store, monkeypatch):
    from core import pipeline

    ahead = Ahead(monkeypatch, slider_store, budget=2)
    run = ahead.store.load_run(RUN.run_id())
    stored = CompressConfig(method="kmeans", n_centroids=2)
    pipeline.get_or_compress(ahead.store, run, stored)
    ahead.computed.clear()
    ahead.nice.clear()
    unfit = CompressConfig(method="pq", subvector_size=32, n_centroids=4)  # wider than the 16-wide layer
    cheap = [CompressConfig(method="kmeans", n_centroids=k) for k in (4, 8, 16, 32)]
    kept = ahead.ahead.want(run, [stored, unfit, *cheap])
    assert kept == [cfg.key() for cfg in (stored, unfit, *cheap)]
    ahead.idle()
    # the stored and unfit ones are looked at and passed over; two cheap ones (the budget) are computed
    assert ahead.computed == [compression_key(run.run_id, cfg) for cfg in cheap[:2]]
    assert all(ahead.store.load_compression(run.run_id, cfg) is not None for cfg in cheap[:2])
    assert all(ahead.store.load_compression(run.run_id, cfg) is None for cfg in cheap[2:])
    assert ahead.nice == [ahead.ahead.nice] * 2  # at low priority, where it may be raised again
    assert ahead.ahead.nice in (0, pipeline.PRECOMPUTE_NICE)
    # each is a transient job: kept off the Frontier until someone settles on it
    assert ahead.store.load_compression(run.run_id, cheap[0]).transient


def test_a_press_on_a_setting_being_computed_ahead_joins_its_job(slider_store, monkeypatch):
    from core import pipeline

    ahead = Ahead(monkeypatch, slider_store, budget=1, hold=True)
    run = ahead.store.load_run(RUN.run_id())
    cfg = CompressConfig(method="kmeans", n_centroids=8)
    ahead.ahead.want(run, [cfg])
    assert ahead.started.wait(TIMEOUT)
    assert pipeline.compress_within(ahead.store, run, cfg, limit_s=0.05) is None  # still held: the panel
    ahead.release.set()
    until(lambda: ahead.nice_after)
    assert ahead.nice == [ahead.ahead.nice] and ahead.nice_after == [0]  # hurried: someone waits on it
    record = pipeline.compress_within(ahead.store, run, cfg, limit_s=TIMEOUT)
    assert record is not None and ahead.computed == [compression_key(run.run_id, cfg)]  # computed once


def test_computing_ahead_is_cancelled_when_the_run_changes(slider_store, monkeypatch):

    ahead = Ahead(monkeypatch, slider_store, budget=4, hold=True)
    first = ahead.store.load_run(RUN.run_id())
    other, _ = get_or_train(ahead.store, dataclasses.replace(RUN, seed=1))
    settings = [CompressConfig(method="kmeans", n_centroids=k) for k in (4, 8, 16)]
    ahead.ahead.want(first, settings, requester="s")
    assert ahead.started.wait(TIMEOUT)
    held_key = compression_key(first.run_id, settings[0])
    assert ahead.ahead.running() == held_key
    ahead.ahead.want(other, settings[:1], requester="s")  # the session opened another run
    ahead.release.set()
    ahead.idle()
    assert ahead.computed == [held_key, compression_key(other.run_id, settings[0])]  # the rest dropped
    assert all(ahead.store.load_compression(first.run_id, cfg) is None for cfg in settings)  # cancelled
    assert JobManager(slider_store).status(held_key) is None  # no failure left for the page to show
    assert ahead.store.load_compression(other.run_id, settings[0]) is not None


# ------------------------------------------------------------------------------ what one rerun costs


def test_the_page_runs_the_fit_check_once_for_a_setting_it_computes(slider_store, monkeypatch):
    from core import pq

    real, calls = pq.check_fits, []

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr("core.pq.check_fits", counted)
    monkeypatch.setattr("core.pipeline.INLINE_LIMIT_S", TIMEOUT)  # the page waits for the numbers
    at = open_compress()
    assert not at.exception, [e.message for e in at.exception]
    assert "Accuracy after" in metric_labels(at)
    assert len(calls) == 1  # the plan's: the page and the job's submission ask no second time


def test_the_centroid_histogram_sends_its_bins_not_every_weight():
    import random

    from core.charts import HISTOGRAM_BINS, centroid_histogram

    rng = random.Random(0)
    weights = [rng.gauss(0, 0.05) for _ in range(50_000)]
    centroids = sorted(rng.gauss(0, 0.05) for _ in range(16))
    fig = centroid_histogram(weights, centroids, method="kmeans")
    bars, lines, rug = fig.data
    assert len(bars.x) == HISTOGRAM_BINS and abs(sum(bars.y) - 100.0) < 1e-6  # shares of the weights, in %
    assert [x for x in lines.x if x is not None] == [c for c in centroids for _ in range(2)]  # one line each
    assert list(rug.x) == centroids
    pruned = centroid_histogram(weights[:1000], centroids, pruned=weights[1000:3000])
    survivors, zeroed = pruned.data[:2]
    assert (sum(survivors.y), sum(zeroed.y)) == (1000, 2000)  # counts on the same bins
    assert list(survivors.x) == list(zeroed.x)
