"""Config validation and canonical keys."""

from __future__ import annotations

import re

import pytest

from core.config import CompressConfig, TrainConfig


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(dataset="imagenet"), "unknown dataset 'imagenet'; choose one of"),
        (dict(model="vgg"), "unknown model 'vgg'"),
        (dict(reg="l1"), "unknown regularizer 'l1'"),
        (dict(lam=-0.1), "lam=-0.1 must be a finite number >= 0"),
        (dict(lam=float("nan")), "lam=nan"),
        (dict(epochs=0), "epochs=0 must be a whole number from 1 to 1,000"),
        (dict(lr=0), "lr=0.0 must be a finite number > 0"),
        (dict(hidden=()), "hidden widths"),
        (dict(model="cifar-cnn"), "use it with dataset cifar10"),
    ],
)
def test_train_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="zip"), "unknown method"),
        (dict(subvector_size=0), "d=0 must be a whole number from 1"),
        (dict(n_centroids=1), "k=1 must be a whole number from 2 to 65,536"),
        (dict(n_centroids=65_537), "from 2 to 65,536"),
        (dict(layout="diagonal"), "unknown layout"),
        (dict(centroid_bits=8), "centroid_bits=8"),
        (dict(finetune_epochs=-1), "finetune_epochs=-1"),
    ],
)
def test_compress_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompressConfig(**kwargs)


def test_canonical_compress_keys_ignore_unused_fields():
    assert CompressConfig(method="binarize", subvector_size=4).key() == CompressConfig(method="binarize").key()
    assert (
        CompressConfig(method="kmeans", subvector_size=4, layout="per-chunk").key()
        == CompressConfig(method="kmeans", subvector_size=1).key()
    )
    assert CompressConfig(method="pq", n_centroids=16).key() != CompressConfig(method="pq", n_centroids=32).key()
    assert CompressConfig(method="pq", subvector_size=8, n_centroids=256).label() == "pq d=8 k=256 shared"


def test_hidden_accepts_lists_and_round_trips():
    cfg = TrainConfig(hidden=[64, 32])
    assert cfg.hidden == (64, 32)
    assert TrainConfig.from_dict({**cfg.__dict__, "unknown_field": 1}) == cfg


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(epochs=1_000_000_000), "epochs=1000000000 must be a whole number from 1 to 1,000"),
        (dict(seed=2**70), "seed=1180591620717411303424 must be a whole number from 0 to 4,294,967,295"),
        (dict(hidden=(1_000_000_000,)), "hidden width=1000000000 must be a whole number from 1 to 20,000,000"),
        (dict(hidden=(100_000, 1_000)), "parameters; the limit is 20,000,000"),
        (dict(hidden=tuple([4] * 9)), "give 1 to 8 hidden widths"),
        (dict(hidden="30,abc"), "whole numbers separated by commas or spaces"),
        (dict(epochs=True), "epochs=True must be a whole number"),
        (dict(epochs=2.5), "epochs=2.5 must be a whole number"),
        (dict(lam=float("inf")), "lam=inf must be a finite number"),
        (dict(lr=1e400), "lr=inf must be a finite number"),
        (dict(batch_size=0), "batch_size=0"),
    ],
)
def test_limits_bound_every_request(kwargs, message):
    """No single request can take the machine's memory or hold it for days (issue: limits)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("text", ["300,100", "300 100", "300, 100", " 300 ,100 "])
def test_hidden_widths_one_format_everywhere(text):
    assert TrainConfig(hidden=text).hidden == (300, 100)


def test_configs_are_canonical_from_construction():
    """Equal runs and compressions share one key; pq with d = 1 and one shared codebook IS kmeans."""
    assert TrainConfig(reg="binary", lam=0.0, warmup_epochs=3) == TrainConfig()
    assert TrainConfig(model="lenet5", hidden=(10,)).hidden == (300, 100)
    pq1 = CompressConfig(method="pq", subvector_size=1, n_centroids=16)
    assert pq1 == CompressConfig(method="kmeans", n_centroids=16) and pq1.label() == "kmeans k=16"
    assert CompressConfig(method="pq", subvector_size=1, layout="per-chunk").method == "pq"
    assert CompressConfig(method="float", n_centroids=4, centroid_bits=16) == CompressConfig(method="float")
