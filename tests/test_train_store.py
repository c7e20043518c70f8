"""Training and the run store: determinism, cache hits, corruption, concurrency, divergence."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
import torch

from core.config import TrainConfig
from core.pipeline import get_or_compress, get_or_train
from core.store import RunStore
from core.train import TrainingDiverged, train
from tests.tiny import TINY


def test_train_records_what_the_app_needs(store):
    cfg = TrainConfig(**TINY, reg="binary", lam=0.05)
    seen = []
    result, cached = get_or_train(store, cfg, device="cpu", on_epoch=lambda e, m: seen.append((e, m)))
    assert not cached and [e for e, _ in seen] == [1, 2]
    assert set(seen[0][1]) >= {"loss", "ce", "reg", "test_accuracy", "seconds", "histograms"}
    assert len(result.histograms) == cfg.epochs + 1  # before training, then after each epoch
    layer = result.histograms[-1][0]
    assert layer["layer"] == "fcs.0" and layer["alpha"] > 0 and sum(layer["counts"]) == 64 * 32
    assert result.history[-1]["reg"] > 0 and 0.3 < result.test_accuracy <= 1


def test_same_config_same_run_and_accuracy():
    cfg = TrainConfig(**TINY)
    a, b = train(cfg, device="cpu"), train(cfg, device="cpu")
    assert a.run_id == b.run_id == cfg.run_id()
    assert a.test_accuracy == b.test_accuracy
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_run_id_ignores_fields_that_cannot_matter():
    assert TrainConfig(reg="binary", lam=0.0).run_id() == TrainConfig().run_id()
    assert TrainConfig(reg="binary", lam=0.1, reg_centroids=16).run_id() == TrainConfig(reg="binary", lam=0.1).run_id()
    assert TrainConfig(reg="binary", lam=0.1).run_id() != TrainConfig(reg="binary", lam=0.2).run_id()


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
    assert all(torch.equal(first.state_dict[k], again.state_dict[k]) for k in first.state_dict)
    assert [r.run_id for r in store.list_runs()] == [cfg.run_id()]


def test_corrupt_entry_is_recomputed_not_loaded(store):
    cfg = TrainConfig(**TINY)
    get_or_train(store, cfg)
    weights = store.root / "runs" / cfg.run_id() / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 0xFF  # flip bits inside a tensor: still parseable, checksum no longer matches
    weights.write_bytes(bytes(blob))
    assert store.load_run(cfg.run_id()) is None
    _, cached = get_or_train(store, cfg)
    assert not cached and store.load_run(cfg.run_id()) is not None
    # A half-written entry (no run.json) is never loaded either.
    (store.root / "runs" / cfg.run_id() / "run.json").unlink()
    assert store.load_run(cfg.run_id()) is None
    assert get_or_train(store, cfg)[1] is False


def test_compression_cache_and_corruption(tiny_store):
    from core.config import CompressConfig

    run = tiny_store.list_runs()[0]
    cfg = CompressConfig(method="pq", subvector_size=2, n_centroids=8)
    result, path, cached = get_or_compress(tiny_store, run, cfg)
    assert not cached or tiny_store.load_compression(run.run_id, cfg) is not None
    again, _, cached = get_or_compress(tiny_store, run, cfg)
    assert cached and again.accuracy == result.accuracy
    path.write_bytes(path.read_bytes()[:-5])  # truncated file
    assert tiny_store.load_compression(run.run_id, cfg) is None
    _, _, cached = get_or_compress(tiny_store, run, cfg)
    assert not cached


def _train_into(root: str, conn) -> None:
    store = RunStore(root)
    run, cached = get_or_train(store, TrainConfig(**TINY), device="cpu")
    conn.send((run.run_id, cached))


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


def test_same_entry_published_twice_keeps_one(store):
    result = train(TrainConfig(**TINY), device="cpu")
    store.save_run(result)
    store.save_run(result)  # the second rename fails; the first, valid entry stays
    assert len(store.list_runs()) == 1
    meta = json.loads((store.root / "runs" / result.run_id / "run.json").read_text())
    assert meta["run_id"] == result.run_id


@pytest.mark.parametrize("lr", [1e20, 1e6])  # a NaN loss; a finite loss that blew up
def test_divergence_stores_nothing(store, lr):
    cfg = TrainConfig(**{**TINY, "lr": lr})
    with pytest.raises(TrainingDiverged, match=r"lower lam .* or the learning rate"):
        get_or_train(store, cfg)
    assert not (store.root / "runs").exists() or store.list_runs() == []


def test_interrupted_training_stores_nothing(store):
    def interrupt(epoch, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_or_train(store, TrainConfig(**TINY), on_epoch=interrupt)
    assert store.list_runs() == []
    assert not (store.root / "runs").exists()
