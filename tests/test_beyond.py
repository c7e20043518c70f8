"""Beyond the paper: centroid fine-tuning, the `pq` regularizer, and the bench scripts' smoke runs.

Tiny and seeded: the 8x8 digits, hidden (32, 16), a few epochs; files only under tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from core.compress import compress_run, finetune_centroids
from core.config import CompressConfig, TrainConfig
from core.data import load_dataset
from core.methods import quantize_model
from core.models import fc_layers
from core.pq import quantize_weight, reconstruction_mse
from core.train import train
from tests.marks import fast_cases

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(dataset="digits", model="mlp", hidden=(32, 16), epochs=3, lr=3e-3, batch_size=64, seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def tiny_run(digits):
    return train(TrainConfig(**TINY), device="cpu", data=digits)


def train_ce(run, layers, data) -> float:
    """Training cross-entropy of `run` with its FC weights decoded from `layers`."""
    model = run.model()
    weights = {layer.name: layer.decode() for layer in layers}
    with torch.no_grad():
        logits = torch.func.functional_call(model, run.state_dict() | weights, (data.x_train,))
        return float(F.cross_entropy(logits, data.y_train))


@pytest.mark.slow
@fast_cases(1)
@pytest.mark.parametrize(
    "cfg",
    [
        CompressConfig(method="pq", subvector_size=4, n_centroids=8, finetune_epochs=3, finetune_lr=1e-3),
        CompressConfig(
            method="pq", subvector_size=4, n_centroids=4, layout="per-chunk", finetune_epochs=3, finetune_lr=1e-3
        ),
        CompressConfig(method="kmeans", subvector_size=1, n_centroids=4, finetune_epochs=3, finetune_lr=1e-3),
        CompressConfig(method="binarize", finetune_epochs=3, finetune_lr=1e-3),
    ],
    ids=["pq-shared", "pq-per-chunk", "kmeans", "binarize"],
)
def test_finetune_lowers_task_loss_with_codes_fixed(tiny_run, digits, cfg):
    layers = quantize_model(tiny_run.model(), cfg)
    tuned = finetune_centroids(tiny_run.model(), layers, digits, cfg, tiny_run.config.batch_size, torch.device("cpu"))
    assert train_ce(tiny_run, tuned, digits) < train_ce(tiny_run, layers, digits)
    for before, after in zip(layers, tuned):
        assert torch.equal(before.codes, after.codes)  # codes never move
        assert after.codebooks.shape == before.codebooks.shape
        assert not torch.allclose(before.codebooks, after.codebooks)  # the centroids did
        if cfg.method == "binarize":  # only alpha is trained: the codebook stays [-alpha, +alpha]
            assert torch.equal(after.codebooks[0, 0], -after.codebooks[0, 1])
            assert float(after.codebooks[0, 1]) > 0


@pytest.mark.slow
@fast_cases(1)
@pytest.mark.parametrize("method", ["pq", "binarize"])
def test_finetune_keeps_size_accounting_and_file_size(tiny_run, digits, method):
    plain = CompressConfig(method=method, subvector_size=4, n_centroids=8)
    tuned = replace(plain, finetune_epochs=2, finetune_lr=1e-3)
    result_plain, blob_plain = compress_run(tiny_run, plain, data=digits, device="cpu")
    result_tuned, blob_tuned = compress_run(tiny_run, tuned, data=digits, device="cpu")
    assert result_tuned.size == result_plain.size
    assert len(blob_tuned) == len(blob_plain)
    assert result_tuned.row()["finetune_epochs"] == 2


@pytest.mark.slow
def test_pq_regularizer_lowers_pq_reconstruction_error(digits):
    d, k = 4, 8
    base = TrainConfig(**(TINY | {"epochs": 4}))
    plain = train(base, device="cpu", data=digits)
    regularized = train(
        replace(base, reg="pq", lam=1.0, reg_subvector_size=d, reg_centroids=k), device="cpu", data=digits
    )
    cfg = CompressConfig(method="pq", subvector_size=d, n_centroids=k)
    for name, _ in fc_layers(plain.model()):
        key = f"{name}.weight"
        errors = []
        for run in (plain, regularized):
            weight = run.state_dict()[key]
            mse = reconstruction_mse(weight, quantize_weight(key, weight, cfg))
            errors.append((mse, mse / float(weight.var())))  # absolute, and relative to the layer's spread
        (mse_plain, rel_plain), (mse_reg, rel_reg) = errors
        assert mse_reg < mse_plain, key
        assert rel_reg < rel_plain, key


# Bench smoke runs have no wall-clock limit of their own (a busy 2-core machine needs many times a
# quiet one's time; what they assert is what was written): only pytest-timeout's safety net, set
# generously on each below, stops one that hangs.
BENCH_SMOKE_SAFETY_NET_S = 1800


def _run_script(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"COMPRESSION_LAB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.mark.slow
@pytest.mark.timeout(BENCH_SMOKE_SAFETY_NET_S)
def test_paper_smoke(tmp_path):
    out = tmp_path / "results"
    _run_script([str(ROOT / "bench" / "paper.py"), "--smoke", "--out", str(out)], tmp_path)
    for name in ("points.csv", "budget.csv", "budget.md", "headline.csv", "headline.md", "frontier.png"):
        assert (out / name).stat().st_size > 0, name
    import pandas as pd

    points = pd.read_csv(out / "points.csv")
    assert {"Gong binarize", "Gong PQ", "Deep Compression (kmeans+ft)"} <= set(points["family"])
    assert (points["finetune_epochs"] > 0).any() and (points["reg"] != "none").any()


@pytest.mark.slow
@pytest.mark.timeout(BENCH_SMOKE_SAFETY_NET_S)
def test_speed_smoke(tmp_path):
    out = tmp_path / "results"
    proc = _run_script([str(ROOT / "bench" / "speed.py"), "--smoke", "--out", str(out)], tmp_path)
    import pandas as pd

    rows = pd.read_csv(out / "speed_smoke.csv")
    assert {"pq", "train", "app"} <= set(rows["section"]), proc.stdout[-2000:]
    assert (rows["device"] == rows["device"].iloc[0]).all()
    # every comparison is a ratio of interleaved pairs, with its spread
    compared = rows[rows["section"] != "app"]
    assert compared["pairs"].ge(1).all() and (compared["ratio_min"] <= compared["ratio_max"]).all()


def test_interleaved_timing_pairs_neighbours_and_ratios_are_per_pair():
    sys.path.insert(0, str(ROOT / "bench"))
    from speed import interleaved

    calls: list[str] = []
    timings = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "c": lambda: calls.append("c")},
        rounds=3,
        only_first={"c": 1},
    )
    assert calls == ["a", "b", "a", "b", "c", "a", "b", "a", "b"]  # warm-up round, then A B (C) A B ...
    assert [len(timings.seconds[n]) for n in "abc"] == [3, 3, 1]
    timings.seconds = {"a": [1.0, 2.0, 4.0], "b": [2.0, 2.0, 2.0], "c": [3.0]}
    assert timings.ratio("b", "a") == (1.0, 0.5, 2.0, 3)  # per-pair ratios 2, 1, 0.5
    assert timings.ratio("c", "a") == (3.0, 3.0, 3.0, 1)


@pytest.mark.slow
@pytest.mark.timeout(BENCH_SMOKE_SAFETY_NET_S)
def test_headline_smoke(tmp_path):
    out = tmp_path / "results"
    _run_script(
        [str(ROOT / "bench" / "headline.py"), "--smoke", "--out", str(out), "--cache-dir", str(tmp_path / "c")],
        tmp_path,
    )
    import pandas as pd

    table = pd.read_csv(out / "headline_search_smoke.csv")
    assert {"paper", "long", "no reg (2 ep)"} <= set(table["variant"])
    assert (table["drop_worst"] >= table["drop_mean"] - 1e-9).all() and (table["seeds"] == 2).all()
