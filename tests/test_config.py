"""Config validation and canonical keys."""

from __future__ import annotations

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
        (dict(epochs=0), "epochs=0 must be >= 1"),
        (dict(lr=0), "lr=0 must be a positive number"),
        (dict(hidden=()), "hidden sizes"),
        (dict(model="cifar-cnn"), "use it with --dataset cifar10"),
    ],
)
def test_train_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="zip"), "unknown method"),
        (dict(subvector_size=0), "d=0 must be an integer >= 1"),
        (dict(n_centroids=1), "k=1 is out of range"),
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
