"""The pipeline's jobs: a sweep holds no slot (its items queue like any other job, so it can never
wait on a job that waits on it), a cancelled sweep ends cancelled, a cancel reads as one line."""

from __future__ import annotations

import errno
import itertools
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from core import pipeline
from core.__main__ import main
from core.config import CompressConfig, TrainConfig
from core.experiments import submit_sweep
from core.jobs import Cancelled, JobManager, JobSpec, JobState, JobStatus
from core.pipeline import JobCancelled, JobFailed, _outcome, compression_key, submit_training
from core.store import RunStore
from tests.marks import fast_cases
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


@fast_cases(2)
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


@pytest.mark.slow
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


@fast_cases(1)
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


@fast_cases(1)
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


@pytest.mark.slow
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


# ------------------------------------------------------------------------------- the cost model


def app_settings(subset: bool) -> list[CompressConfig]:
    """The settings the Compress page can ask for (its controls' values), canonical and each once;
    `subset`: the costly corners only (the largest k and d, output weighting, fine-tuning, many stages)."""
    from core.config import LAYOUTS, WEIGHTINGS
    from core.methods import METHOD_SPECS
    from ui.common import D_OPTIONS, K_OPTIONS

    ds, ks = ((2, 8), (4096, 65536)) if subset else (D_OPTIONS, K_OPTIONS)
    fts = (0,) if subset else (0, 1)
    grid: dict[str, CompressConfig] = {}
    for spec in METHOD_SPECS.values():
        stages = [option.options for option in spec.options if option.field == "stages"] or [(1,)]
        for d, k, layout, weighting, ft, m in itertools.product(ds, ks, LAYOUTS, WEIGHTINGS, fts, stages[0]):
            if subset and m not in (1, max(stages[0])):
                continue
            cfg = CompressConfig(
                method=spec.name, subvector_size=d, n_centroids=k, layout=layout, weighting=weighting,
                finetune_epochs=ft, stages=m,
            )  # fmt: skip
            grid.setdefault(cfg.key(), cfg)
    if subset:  # fine-tuning, where a wrong estimate was met (1.6 s estimated, 19.1 s taken)
        for cfg in (CompressConfig(method="binarize", finetune_epochs=1), CompressConfig(finetune_epochs=1)):
            grid.setdefault(cfg.key(), cfg)
    return list(grid.values())


def check_cheap_settings_keep_their_estimate(tiny_store, settings: list[CompressConfig]) -> None:
    """No setting the estimate calls cheap (computed while the page waits) takes more than 3x its
    estimate. Measured in CPU seconds of this process on one thread, which other processes on a busy
    machine do not inflate the way they inflate the wall clock."""
    from core.compress import coded_shapes, compress_run
    from core.data import load_dataset
    from core.pipeline import CHEAP_SECONDS, estimate_seconds
    from core.pq import DoesNotFit, check_fits

    run = tiny_store.list_runs()[0]
    data = load_dataset(run.config.dataset)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    slow = []
    try:
        for cfg in settings:
            try:
                check_fits(coded_shapes(run, cfg.targets), cfg)
            except DoesNotFit:
                continue
            estimate = estimate_seconds(run, cfg)
            if estimate > CHEAP_SECONDS:
                continue
            started = time.process_time()
            compress_run(run, cfg, data=data, device="cpu")
            seconds = time.process_time() - started
            if seconds > 3 * estimate:
                slow.append(f"{cfg.label()}: {seconds:.2f} s against an estimate of {estimate:.2f} s")
    finally:
        torch.set_num_threads(threads)
    assert not slow, slow


@pytest.mark.slow  # seconds: the whole suite's
def test_cheap_settings_keep_their_estimate_at_the_costly_corners(tiny_store):
    check_cheap_settings_keep_their_estimate(tiny_store, app_settings(subset=True))


@pytest.mark.slow
def test_cheap_settings_keep_their_estimate_over_the_page_grid(tiny_store):
    check_cheap_settings_keep_their_estimate(tiny_store, app_settings(subset=False))


def test_output_weighting_is_counted_when_every_subvector_is_its_own_centroid():
    # issue 17: pq d=4 k=65,536 with output weighting on LeNet-300-100 was estimated 0.88 s (no layer
    # has more subvectors than k, so no k-means work was counted), yet its weighted k-means took 286 s
    shapes = [("fcs.0.weight", (300, 784)), ("fcs.1.weight", (100, 300)), ("fcs.2.weight", (10, 100))]
    cfg = CompressConfig(subvector_size=4, n_centroids=65_536, weighting="activations")
    plain = CompressConfig(subvector_size=4, n_centroids=65_536)
    assert cfg.method_spec.estimate_seconds(shapes, cfg) > 100 * max(
        1e-3, plain.method_spec.estimate_seconds(shapes, plain)
    )
    assert cfg.method_spec.estimate_seconds(shapes, cfg) > 60


# ------------------------------------------------------------------------------- the one planner call


@pytest.fixture(scope="module")
def plan_store(tmp_path_factory) -> tuple[RunStore, object]:
    """A store of its own (the plans below write compressions) holding the tiny run."""
    store = RunStore(tmp_path_factory.mktemp("plan-store"))
    run, _ = pipeline.get_or_train(store, TrainConfig(**TINY))
    return store, run


class CountedFits:
    """core.pq.check_fits, counted (the pipeline imports it where it checks)."""

    def __init__(self, monkeypatch) -> None:
        from core import pq

        self.real = pq.check_fits
        self.calls = 0
        monkeypatch.setattr("core.pq.check_fits", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def test_the_plan_of_a_stored_setting_passes_its_verified_record_through(plan_store, monkeypatch):
    store, run = plan_store
    cfg = CompressConfig(method="kmeans", n_centroids=4)
    record, _ = pipeline.get_or_compress(store, run, cfg)
    fits = CountedFits(monkeypatch)
    plan = pipeline.plan_compression(store, run, cfg)
    assert plan.kind is pipeline.PlanKind.STORED and plan.fits
    assert plan.record == store.load_compression(run.run_id, cfg) and plan.record.key == record.key
    assert fits.calls == 0  # a stored result fitted when it was made: nothing is checked again
    assert pipeline.compress_within(store, run, cfg, plan=plan) is plan.record


def test_a_cheap_setting_is_planned_cheap_and_computed_with_one_fit_check(plan_store, monkeypatch):
    store, run = plan_store
    cfg = CompressConfig(method="pq", subvector_size=2, n_centroids=4, seed=11)
    fits = CountedFits(monkeypatch)
    plan = pipeline.plan_compression(store, run, cfg)
    assert plan.kind is pipeline.PlanKind.CHEAP and plan.record is None
    assert 0 < plan.seconds <= pipeline.CHEAP_SECONDS
    assert plan.seconds == pipeline.estimate_seconds(run, cfg)
    record = pipeline.compress_within(store, run, cfg, limit_s=600, plan=plan)
    assert record is not None and record.key == cfg.key()
    assert fits.calls == 1  # the plan's, carried to the job's submission


def test_an_expensive_setting_is_planned_with_its_estimate_and_submitted_with_one_fit_check(plan_store, monkeypatch):
    store, run = plan_store
    cfg = CompressConfig(method="pq", subvector_size=4, n_centroids=8, seed=12)
    monkeypatch.setattr(pipeline, "CHEAP_SECONDS", 0.0)  # every setting costs more than nothing
    fits = CountedFits(monkeypatch)
    plan = pipeline.plan_compression(store, run, cfg)
    assert plan.kind is pipeline.PlanKind.EXPENSIVE and plan.seconds == pipeline.estimate_seconds(run, cfg)
    assert store.load_compression(run.run_id, cfg) is None  # planning computes nothing
    status = pipeline.submit_compression(store, run, cfg, plan=plan)
    final = pipeline.job_manager(store).wait(status.key, timeout=600)
    assert final is not None and final.state is JobState.DONE
    assert fits.calls == 1


def test_a_setting_that_does_not_fit_is_planned_with_the_methods_sentence_and_never_submitted(plan_store, monkeypatch):
    from core.pq import DoesNotFit

    store, run = plan_store
    cfg = CompressConfig(method="pq", subvector_size=32, n_centroids=4)  # wider than the 16-wide layer
    with pytest.raises(DoesNotFit) as direct:
        pipeline.get_or_compress(store, run, cfg)
    fits = CountedFits(monkeypatch)
    plan = pipeline.plan_compression(store, run, cfg)
    assert plan.kind is pipeline.PlanKind.DOES_NOT_FIT and not plan.fits
    assert plan.reason == str(direct.value) and "d=32" in plan.reason
    for submit in (pipeline.submit_compression, pipeline.compress_within):
        with pytest.raises(DoesNotFit, match="d=32"):
            submit(store, run, cfg, plan=plan)
    assert fits.calls == 1
    assert pipeline.job_manager(store).status(compression_key(run.run_id, cfg)) is None


def test_a_plan_of_another_setting_is_refused(plan_store):
    store, run = plan_store
    plan = pipeline.plan_compression(store, run, CompressConfig(method="kmeans", n_centroids=8))
    with pytest.raises(ValueError, match="this plan is for"):
        pipeline.submit_compression(store, run, CompressConfig(method="kmeans", n_centroids=16), plan=plan)


# ---------------------------------------------------------------- what the pages ask the method


def _coded_by(name: str) -> bool:
    """Whether `core.compress` with method `name` codes the weights of a small model."""
    import core
    from core.methods import METHOD_SPECS

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    spec = METHOD_SPECS[name]
    try:
        spec.check_fits([("0.weight", (8, 16))], CompressConfig(method=name, subvector_size=2, n_centroids=4))
    except ValueError as missing:  # a peer whose package is not installed says so
        pytest.skip(str(missing))
    compressed = core.compress(model, CompressConfig(method=name, subvector_size=2, n_centroids=4))
    return bool(compressed.layers)


@pytest.mark.parametrize("name", ["float", "binarize", "kmeans", "pq", "rq"])
def test_codes_weights_says_whether_the_method_codes_any_weight(name):
    from core.methods import METHOD_SPECS

    spec = METHOD_SPECS[name]
    assert spec.codes_weights == _coded_by(name)
    # the stages after a method act on its codes: a method that codes none has them reset
    cfg = CompressConfig(method=name, sparsity=0.5, entropy="ans")
    assert (cfg.sparsity, cfg.entropy) == ((0.5, "ans") if spec.codes_weights else (0.0, "none"))


@pytest.mark.parametrize("name", ["binarize", "kmeans", "pq", "rq"])
def test_uses_calibration_says_whether_output_weighting_needs_the_models_inputs(name):
    import core
    from core.methods import METHOD_SPECS

    spec = METHOD_SPECS[name]
    cfg = CompressConfig(method=name, subvector_size=2, n_centroids=4, weighting="activations")
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    if spec.uses_calibration:
        assert cfg.weighting == "activations"
        with pytest.raises(ValueError, match="calibration"):
            core.compress(model, cfg)  # no inputs given
        assert core.compress(model, cfg, calibration=torch.randn(32, 16)).layers
    else:  # it does not read the weighting: the config resets it, and no inputs are asked for
        assert cfg.weighting == "none"
        core.compress(model, cfg)
