"""Training and the run store: determinism, cache hits, corruption, concurrency, divergence."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from core.config import CompressConfig, TrainConfig
from core.fileio import PID_MAX_LIMIT
from core.pipeline import get_or_compress, get_or_train
from core.records import CorruptEntry
from core.store import RunStore
from core.train import TrainingDiverged, train
from tests.marks import fast_cases
from tests.tiny import TINY

DEAD_PID = PID_MAX_LIMIT + 1  # in a temporary's name: a writer that no longer exists (no process has this id)


@pytest.mark.slow
def test_train_records_what_the_app_needs(store):
    cfg = TrainConfig(**TINY, reg="binary", lam=0.05)
    seen = []
    result, cached = get_or_train(store, cfg, device="cpu", on_epoch=lambda m, h: seen.append((m, h)))
    assert not cached and [m.epoch for m, _ in seen] == [1, 2]
    assert seen[0][0].loss > 0 and 0 <= seen[0][0].test_accuracy <= 1 and seen[0][0].seconds > 0
    assert len(result.histograms) == cfg.epochs + 1  # before training, then after each epoch
    assert [layer.name for layer in result.layers] == ["fcs.0.weight", "fcs.1.weight", "fcs.2.weight"]
    assert result.layers[0].shape == (32, 64)
    layer = result.histograms[-1][0]
    assert layer.layer == "fcs.0.weight" and layer.alpha > 0 and sum(layer.counts) == 64 * 32
    assert result.history[-1].reg > 0 and 0.3 < result.test_accuracy <= 1


@pytest.mark.slow
def test_same_config_same_run_and_accuracy():
    cfg = TrainConfig(**TINY)
    a, b = train(cfg, device="cpu"), train(cfg, device="cpu")
    assert a.run_id == b.run_id == cfg.run_id()
    assert a.test_accuracy == b.test_accuracy
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_run_id_ignores_fields_that_cannot_matter():
    assert TrainConfig(reg="binary", lam=0.0).run_id() == TrainConfig().run_id()
    assert TrainConfig(reg="binary", lam=0.1, reg_centroids=16).run_id() == TrainConfig(reg="binary", lam=0.1).run_id()
    assert TrainConfig(reg="binary", lam=0.1).run_id() != TrainConfig(reg="binary", lam=0.2).run_id()


@pytest.mark.slow
def test_a_run_records_its_canonical_config(store):
    """(reg=binary, lam=0) is the unregularized run: it is stored and shown as reg=none."""
    run, _ = get_or_train(store, TrainConfig(**TINY, reg="binary", lam=0.0, warmup_epochs=3))
    assert run.config == TrainConfig(**TINY)
    assert store.load_run(run.run_id).config.reg == "none"


def test_store_round_trip_and_cache_hit(store):
    cfg = TrainConfig(**TINY)
    first, cached = get_or_train(store, cfg)
    assert not cached
    again, cached = get_or_train(store, cfg)
    assert cached and again.history == first.history
    s1, s2 = first.state_dict(), again.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert [r.run_id for r in store.list_runs()] == [cfg.run_id()]


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_run_in_store")  # the run is stored, not trained
def test_corrupt_entry_is_recomputed_not_loaded(store):
    cfg = TrainConfig(**TINY)
    get_or_train(store, cfg)
    weights = store.root / "runs" / cfg.run_id() / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 0xFF  # flip bits inside a tensor: still parseable, checksum no longer matches
    weights.write_bytes(bytes(blob))
    assert store.load_run(cfg.run_id(), verify_weights=True) is None
    listed = store.load_run(cfg.run_id())  # listing reads no weights; loading them checks them
    assert listed is not None
    with pytest.raises(CorruptEntry, match="do not match their checksum"):
        listed.state_dict()
    _, cached = get_or_train(store, cfg)
    assert not cached and store.load_run(cfg.run_id()) is not None
    # A half-written entry (no run.json) is never loaded either.
    (store.root / "runs" / cfg.run_id() / "run.json").unlink()
    assert store.load_run(cfg.run_id()) is None
    assert get_or_train(store, cfg)[1] is False


def test_compression_cache_and_corruption(tiny_store):
    run = tiny_store.list_runs()[0]
    cfg = CompressConfig(method="pq", subvector_size=2, n_centroids=8)
    tiny_store.delete_compression(run.run_id, cfg.key())  # the store is shared: make this a miss whatever ran before
    result, cached = get_or_compress(tiny_store, run, cfg)
    stored = tiny_store.load_compression(run.run_id, cfg)
    assert not cached and stored is not None and stored.accuracy == result.accuracy
    again, cached = get_or_compress(tiny_store, run, cfg)
    assert cached and again.accuracy == result.accuracy
    path = Path(again.file_path)
    path.write_bytes(path.read_bytes()[:-5])  # truncated file
    assert tiny_store.load_compression(run.run_id, cfg) is None
    _, cached = get_or_compress(tiny_store, run, cfg)
    assert not cached


def _train_into(root: str, conn) -> None:
    store = RunStore(root)
    run, cached = get_or_train(store, TrainConfig(**TINY), device="cpu")
    conn.send((run.run_id, cached))


@pytest.mark.slow
def test_two_concurrent_writers_leave_one_valid_entry(tmp_path):
    ctx = mp.get_context("spawn")
    pipes = [ctx.Pipe() for _ in range(2)]
    procs = [ctx.Process(target=_train_into, args=(str(tmp_path), child)) for _, child in pipes]
    for p in procs:
        p.start()
    results = [parent.recv() for parent, _ in pipes]
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert results[0][0] == results[1][0]
    store = RunStore(tmp_path)
    assert [r.run_id for r in store.list_runs()] == [results[0][0]]
    leftovers = [p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert store.load_run(results[0][0]) is not None


@pytest.mark.slow
def test_same_entry_published_twice_keeps_one(store):
    result = train(TrainConfig(**TINY), device="cpu")
    store.save_run(result)
    store.save_run(result)  # the second rename fails; the first, valid entry stays
    assert len(store.list_runs()) == 1
    meta = json.loads((store.root / "runs" / result.run_id / "run.json").read_text())
    assert meta["record"]["run_id"] == result.run_id


@fast_cases(1)
@pytest.mark.parametrize("extra", [dict(lr=10.0), dict(reg="binary", lam=1e6, lr=10.0)])  # blow-ups
def test_divergence_stores_nothing(store, extra):
    cfg = TrainConfig(**{**TINY, **extra})
    with pytest.raises(TrainingDiverged, match=r"lower lam .* or the learning rate"):
        get_or_train(store, cfg)
    assert not (store.root / "runs").exists() or store.list_runs() == []


def test_interrupted_training_stores_nothing(store):
    def interrupt(metrics, histograms):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_or_train(store, TrainConfig(**TINY), on_epoch=interrupt)
    assert store.list_runs() == []
    assert not (store.root / "runs").exists()


# ------------------------------------------------------------------------- the store verifies all


def _edit_json(path: Path, edit) -> None:
    envelope = json.loads(path.read_text())
    edit(envelope)
    path.write_text(json.dumps(envelope))


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_run_in_store")  # the run is stored, not trained
def test_an_edited_run_json_is_never_served(store):
    """Edits that keep the JSON valid (an accuracy raised to 0.999) count as missing: recomputed."""
    cfg = TrainConfig(**TINY)
    run, _ = get_or_train(store, cfg)
    path = store.root / "runs" / run.run_id / "run.json"
    _edit_json(path, lambda e: e["record"]["history"][-1].update(test_accuracy=0.999))
    assert store.load_run(run.run_id) is None and store.list_runs() == []
    again, cached = get_or_train(store, cfg)
    assert not cached and again.test_accuracy == run.test_accuracy


RUN_EDITS = {
    "history empty (crashed every page before)": lambda e: e["record"].update(history=[]),
    "histograms not a list": lambda e: e["record"].update(histograms="x"),
    "record not an object": lambda e: e.update(record=[]),
    "checksum removed": lambda e: e.pop("checksum"),
    "old store format": lambda e: e.update(format="compression-lab-store/1"),
    "accuracy raised": lambda e: e["record"]["history"][-1].update(test_accuracy=0.999),
    "config lr changed": lambda e: e["record"]["config"].update(lr=0.5),
    "run id changed": lambda e: e["record"].update(run_id="0" * 16),
    "layer shape changed": lambda e: e["record"]["layers"][0].update(shape=[1, 1]),
    "histogram counts changed": lambda e: e["record"]["histograms"][0][0]["counts"].append(5),
    "weights checksum changed": lambda e: e.update(weights_sha256="0" * 64),
    "device renamed": lambda e: e["record"].update(device="[x](http://evil)"),
    "seconds made text": lambda e: e["record"].update(seconds="fast"),
    "an epoch dropped": lambda e: e["record"]["history"].pop(),
    "n_classes zero": lambda e: e["record"].update(n_classes=0),
}


@pytest.mark.slow
@fast_cases(2)
@pytest.mark.parametrize("edit", RUN_EDITS.values(), ids=RUN_EDITS.keys())
@pytest.mark.usefixtures("tiny_run_in_store")  # the run is stored, not trained
def test_a_broken_run_json_never_breaks_a_listing(store, edit):
    """An edit that keeps the JSON valid is detected (the checksum covers the record and the weights'
    hash together), counts as missing, and is recomputed; nothing is served, nothing crashes."""
    run, _ = get_or_train(store, TrainConfig(**TINY))
    _edit_json(store.root / "runs" / run.run_id / "run.json", edit)
    assert store.list_runs() == [] and store.load_run(run.run_id) is None
    again, cached = get_or_train(store, TrainConfig(**TINY))
    assert not cached and again.test_accuracy == run.test_accuracy


COMPRESSION_EDITS = {
    "accuracy raised": lambda e: e["record"].update(accuracy=0.999),
    "size edited": lambda e: e["record"]["size"].update(fc_ratio=99.0),
    "file checksum changed": lambda e: e.update(file_sha256="0" * 64),
    "run id changed": lambda e: e["record"].update(run_id="0" * 16),
    "config edited": lambda e: e["record"]["compress_config"].update(n_centroids=8),
    "record emptied": lambda e: e.update(record={}),
}


@fast_cases(2)
@pytest.mark.parametrize("edit", COMPRESSION_EDITS.values(), ids=COMPRESSION_EDITS.keys())
@pytest.mark.usefixtures("tiny_run_in_store")  # the run is stored, not trained
def test_an_edited_compression_is_never_served(store, edit):
    run, _ = get_or_train(store, TrainConfig(**TINY))
    cfg = CompressConfig(method="kmeans", n_centroids=4)
    get_or_compress(store, run, cfg)
    json_path, _ = store.compression_paths(run.run_id, cfg.key())
    _edit_json(json_path, edit)
    assert store.load_compression(run.run_id, cfg) is None and store.list_compressions() == []
    _, cached = get_or_compress(store, run, cfg)
    assert not cached and len(store.list_compressions()) == 1


@pytest.mark.usefixtures("tiny_run_in_store")  # the run is stored, not trained
def test_a_run_copied_under_another_id_is_not_served(store):
    import shutil

    run, _ = get_or_train(store, TrainConfig(**TINY))
    other = TrainConfig(**{**TINY, "seed": 1}).run_id()
    shutil.copytree(store.root / "runs" / run.run_id, store.root / "runs" / other)
    assert store.load_run(other) is None
    assert [r.run_id for r in store.list_runs()] == [run.run_id]


@pytest.mark.usefixtures("tiny_run_in_store")  # the run is stored, not trained
def test_a_compression_copied_under_another_key_is_not_served(store):
    run, _ = get_or_train(store, TrainConfig(**TINY))
    a, b = CompressConfig(method="kmeans", n_centroids=4), CompressConfig(method="kmeans", n_centroids=8)
    get_or_compress(store, run, a)
    json_a, file_a = store.compression_paths(run.run_id, a.key())
    json_b, file_b = store.compression_paths(run.run_id, b.key())
    json_b.write_bytes(json_a.read_bytes())
    file_b.write_bytes(file_a.read_bytes())
    assert store.load_compression(run.run_id, b) is None
    assert [c.key for c in store.list_compressions()] == [a.key()]
    _edit_json(json_a, lambda e: e["record"].update(accuracy=0.999))
    assert store.load_compression(run.run_id, a) is None


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_run_in_store")  # the run is stored, not trained
def test_gc_removes_temporaries_and_broken_entries_and_reports_the_space(store):
    import os

    run, _ = get_or_train(store, TrainConfig(**TINY))
    get_or_compress(store, run, CompressConfig(method="binarize"))
    stale = store.root / "runs" / f".{run.run_id}.{DEAD_PID}.abc.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    os.utime(stale, (0, 0))
    fresh = store.root / "runs" / ".other.1.def.tmp"  # a writer still at work: kept
    fresh.mkdir()
    broken = TrainConfig(**{**TINY, "seed": 3})
    get_or_train(store, broken)
    _edit_json(store.root / "runs" / broken.run_id() / "run.json", lambda e: e["record"].update(seconds=-1.5))
    report = store.gc()
    assert f"runs/{stale.name}" in report.removed and f"runs/{broken.run_id()}" in report.removed
    assert fresh.exists() and report.bytes_freed > 1000
    assert [r.run_id for r in store.list_runs()] == [run.run_id] and len(store.list_compressions()) == 1


@pytest.mark.usefixtures("tiny_run_in_store")  # the run is stored, not trained
def test_delete_run_takes_its_compressions(store):
    run, _ = get_or_train(store, TrainConfig(**TINY))
    get_or_compress(store, run, CompressConfig(method="binarize"))
    assert store.delete_run(run.run_id) > 0
    assert store.list_runs() == [] and store.list_compressions() == []


@pytest.mark.slow
def test_what_a_killed_writer_left_goes_at_the_first_job(store):
    """kill -9 between the writes leaves hidden temporaries; the next process's first job removes them."""
    import os

    from core import pipeline

    (store.root / "runs").mkdir(parents=True)
    left = store.root / "runs" / f".0123456789abcdef.{DEAD_PID}.dead.tmp"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"x" * 100)
    half = store.root / "runs" / f".run.json.{DEAD_PID}.dead.tmp"
    half.write_bytes(b"{")
    for path in (left, half):
        os.utime(path, (1, 1))
    pipeline._MANAGERS.clear()  # a fresh process
    get_or_train(store, TrainConfig(**TINY))
    assert not left.exists() and not half.exists()


# ------------------------------------------------------------------------- gc beside a live writer
@pytest.mark.slow
def test_gc_with_no_age_limit_leaves_a_training_being_published(store, monkeypatch):
    """`gc --older-than 0` while a training publishes lost the training: its temporary folder went
    from under it. The gc here runs at the worst moment, with the run's files half written."""
    from core import store as store_module

    real_envelope = store_module._envelope
    reports = []

    def gc_meanwhile(*args, **kwargs):
        tmp = [p for p in (store.root / "runs").iterdir() if p.name.startswith(".")]
        assert tmp, "the gc must run while the temporary exists"
        reports.append(RunStore(store.root).gc(older_than_s=0))
        return real_envelope(*args, **kwargs)

    monkeypatch.setattr(store_module, "_envelope", gc_meanwhile)
    run, cached = get_or_train(store, TrainConfig(**TINY))
    assert not cached and reports and reports[0].removed == ()
    assert store.load_run(run.run_id, verify_weights=True) is not None


def test_gc_with_no_age_limit_leaves_a_compression_being_published(tiny_store, tmp_path, monkeypatch):
    """Between a compression's file and its JSON, the file looks like an orphan; gc must not take it."""
    import shutil

    from core import store as store_module

    store = RunStore(tmp_path / "copy")
    shutil.copytree(tiny_store.root / "runs", store.root / "runs")
    run = store.list_runs()[0]
    real_envelope = store_module._envelope
    reports = []

    def gc_meanwhile(*args, **kwargs):
        reports.append(RunStore(store.root).gc(older_than_s=0))
        return real_envelope(*args, **kwargs)

    monkeypatch.setattr(store_module, "_envelope", gc_meanwhile)
    record, _ = get_or_compress(store, run, CompressConfig(method="binarize"))
    assert reports and reports[0].removed == ()
    assert store.load_compression(run.run_id, record.compress_config) is not None


def test_a_killed_writers_temporary_goes_with_no_age_limit_and_a_held_one_stays(store):
    import os

    from core.fileio import hold_temporary, temporary_name

    runs = store.root / "runs"
    runs.mkdir(parents=True)
    dead = runs / f".0123456789abcdef.{DEAD_PID}.{'0' * 32}.tmp"
    dead.mkdir()
    held = temporary_name(runs / "0123456789abcdef")  # a writer at work: holds its temporary
    held.mkdir()
    fd = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    try:
        hold_temporary(fd)
        os.utime(held, (1, 1))  # old, as a slow publication of a big run would look
        report = store.gc(older_than_s=0)
        assert report.removed == (f"runs/{dead.name}",) and held.exists() and not dead.exists()
    finally:
        os.close(fd)


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_run_in_store")  # the run is stored, not trained
def test_concurrent_gcs_count_each_removal_once(store, monkeypatch):
    """Two gc at once over-reported: the same paths counted by both. Here a second gc runs in full
    while the first is between deciding to remove an entry and removing it."""
    run, _ = get_or_train(store, TrainConfig(**TINY))
    broken = TrainConfig(**{**TINY, "seed": 3})
    get_or_train(store, broken)
    _edit_json(store.root / "runs" / broken.run_id() / "run.json", lambda e: e["record"].update(seconds=-1.5))
    stale = store.root / "runs" / f".{run.run_id}.{DEAD_PID}.abc.tmp"
    stale.mkdir()
    (stale / "x").write_bytes(b"x" * 100)
    first, second = RunStore(store.root), RunStore(store.root)
    real_discard = RunStore._discard
    inner = []

    def discard_after_the_other_gc(self, path):
        if self is first and not inner:
            inner.append(second.gc(older_than_s=0))
        return real_discard(self, path)

    monkeypatch.setattr(RunStore, "_discard", discard_after_the_other_gc)
    outer = first.gc(older_than_s=0)
    both = list(outer.removed) + list(inner[0].removed)
    assert sorted(both) == sorted({f"runs/{stale.name}", f"runs/{broken.run_id()}"})
    assert outer.bytes_freed + inner[0].bytes_freed > 100
    assert [r.run_id for r in store.list_runs()] == [run.run_id]


@pytest.mark.slow
def test_trainings_survive_gc_running_all_the_time(store):
    """The audit's case: four trainings publishing while `gc --older-than 0` runs over and over."""
    import threading

    stop = threading.Event()
    removed: list[str] = []

    def gc_loop() -> None:
        while not stop.is_set():
            removed.extend(RunStore(store.root).gc(older_than_s=0).removed)

    cleaner = threading.Thread(target=gc_loop, daemon=True)
    cleaner.start()
    try:
        cfgs = [TrainConfig(**{**TINY, "seed": s}) for s in range(4)]
        for cfg in cfgs:
            get_or_train(store, cfg)
    finally:
        stop.set()
        cleaner.join()
    assert sorted(r.run_id for r in store.list_runs()) == sorted(c.run_id() for c in cfgs)
    assert not [p for p in removed if p.startswith("runs/.")]  # no temporary of a live writer
