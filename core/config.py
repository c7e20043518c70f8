"""Frozen configs for training and compression.

`asdict(cfg)` is both the cache key material and the metadata saved with a run, so every field
that changes a result lives here and nothing else does (the device, for instance, does not).
Validation raises `ValueError` with a sentence a user can act on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace

DATASETS = ("digits", "mnist-5k", "fashion-mnist", "mnist", "cifar10")
MODELS = ("mlp", "lenet5", "cifar-cnn")
REGULARIZERS = ("none", "binary", "levels", "pq")
METHODS = ("float", "binarize", "kmeans", "pq")
LAYOUTS = ("shared", "per-chunk")
INITS = ("kmeans++", "random")
MAX_CENTROIDS = 65_536

# Bumped when a change to the training or compression code changes results, so old cache
# entries are not mistaken for new ones.
CODE_VERSION = 2  # 2: closed-form regularizer gradients, faster k-means++ seeding


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def check_centroids(n_centroids: int) -> None:
    if not isinstance(n_centroids, int) or not 2 <= n_centroids <= MAX_CENTROIDS:
        raise ValueError(
            f"number of centroids k={n_centroids!r} is out of range; use an integer from 2 to {MAX_CENTROIDS:,}"
        )


def check_subvector_size(subvector_size: int) -> None:
    if not isinstance(subvector_size, int) or subvector_size < 1:
        raise ValueError(f"subvector size d={subvector_size!r} must be an integer >= 1 (d = 1 is scalar k-means)")


def config_hash(payload: dict) -> str:
    """Short, stable hash of a JSON-able dict (sorted keys, no whitespace)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "mnist-5k"  # one of DATASETS; mnist-5k is offline and the paper's dataset
    model: str = "mlp"  # one of MODELS; mlp is LeNet-300-100
    hidden: tuple[int, ...] = (300, 100)  # hidden FC widths of `mlp` (ignored by the conv models)
    reg: str = "none"  # regularizer on FC weights: none | binary (the paper, our reading) | levels | pq
    lam: float = 0.0  # weight of the regularizer in the loss; 0 turns it off
    warmup_epochs: int = 0  # lam ramps linearly from 0 over this many epochs
    reg_levels: int = 2  # `levels`: number of scalar levels per layer (k-means of its weights)
    reg_subvector_size: int = 8  # `pq`: subvector size d the regularizer aims at
    reg_centroids: int = 256  # `pq`: number of centroids k the regularizer aims at
    epochs: int = 5  # passes over the training set
    lr: float = 1e-3  # Adam learning rate
    batch_size: int = 64  # mini-batch size
    seed: int = 0  # seeds weight init and shuffling; same seed on CPU, same run

    def __post_init__(self) -> None:
        # Accept lists from JSON / argparse but keep the dataclass hashable.
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        self.validate()

    def validate(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, MODELS)
        _choice("regularizer", self.reg, REGULARIZERS)
        if self.model == "cifar-cnn" and self.dataset != "cifar10":
            raise ValueError("model cifar-cnn expects 32x32 colour images; use it with --dataset cifar10")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes {self.hidden} must be one or more positive integers, e.g. 300 100")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ValueError(f"lam={self.lam} must be a finite number >= 0 (0 turns the regularizer off)")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be >= 0")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be a positive number, e.g. 0.001")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.reg_levels < 2:
            raise ValueError(f"reg_levels={self.reg_levels} must be >= 2")
        check_subvector_size(self.reg_subvector_size)
        check_centroids(self.reg_centroids)

    def canonical(self) -> TrainConfig:
        """The same run with fields that cannot matter reset, so equal runs share one cache key."""
        cfg = self
        if cfg.reg == "none" or cfg.lam == 0:
            cfg = replace(cfg, reg="none", lam=0.0, warmup_epochs=0)
        if cfg.reg != "levels":
            cfg = replace(cfg, reg_levels=2)
        if cfg.reg != "pq":
            cfg = replace(cfg, reg_subvector_size=8, reg_centroids=256)
        if cfg.model != "mlp":
            cfg = replace(cfg, hidden=(300, 100))
        return cfg

    def run_id(self) -> str:
        payload = asdict(self.canonical())
        payload["code_version"] = CODE_VERSION
        return config_hash(payload)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class CompressConfig:
    method: str = "pq"  # float | binarize (sign * alpha) | kmeans (scalar, d = 1) | pq
    subvector_size: int = 8  # PQ subvector size d (inputs per chunk); forced to 1 for kmeans
    n_centroids: int = 256  # k centroids per codebook; code width is ceil(log2 k) bits
    layout: str = "shared"  # shared: one codebook per layer | per-chunk: one per chunk position
    centroid_bits: int = 32  # 32 (float32) or 16 (float16) centroids
    kmeans_iters: int = 20  # Lloyd iterations after initialisation
    init: str = "kmeans++"  # k-means initialisation: kmeans++ | random
    seed: int = 0  # seeds k-means
    finetune_epochs: int = 0  # epochs of centroid fine-tuning (codes fixed) after quantization
    finetune_lr: float = 1e-4  # Adam learning rate of the centroid fine-tuning

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("layout", self.layout, LAYOUTS)
        _choice("k-means init", self.init, INITS)
        check_subvector_size(self.subvector_size)
        check_centroids(self.n_centroids)
        if self.centroid_bits not in (16, 32):
            raise ValueError(f"centroid_bits={self.centroid_bits} must be 32 (float32) or 16 (float16)")
        if self.kmeans_iters < 0:
            raise ValueError(f"kmeans_iters={self.kmeans_iters} must be >= 0")
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs={self.finetune_epochs} must be >= 0")
        if not math.isfinite(self.finetune_lr) or self.finetune_lr <= 0:
            raise ValueError(f"finetune_lr={self.finetune_lr} must be a positive number, e.g. 0.0001")

    def canonical(self) -> CompressConfig:
        """Reset the fields a method ignores, so equal compressions share one cache key."""
        defaults = CompressConfig()
        if self.method == "float":
            return CompressConfig(method="float")
        if self.method == "binarize":
            return replace(
                defaults,
                method="binarize",
                subvector_size=1,
                n_centroids=2,
                finetune_epochs=self.finetune_epochs,
                finetune_lr=self.finetune_lr if self.finetune_epochs else defaults.finetune_lr,
            )
        cfg = self
        if cfg.method == "kmeans":
            cfg = replace(cfg, subvector_size=1, layout="shared")
        if cfg.finetune_epochs == 0:
            cfg = replace(cfg, finetune_lr=defaults.finetune_lr)
        return cfg

    def key(self) -> str:
        payload = asdict(self.canonical())
        payload["code_version"] = CODE_VERSION
        return config_hash(payload)

    def label(self) -> str:
        """Short human label, e.g. 'pq d=8 k=256 shared'."""
        c = self.canonical()
        if c.method == "float":
            return "float"
        if c.method == "binarize":
            text = "binarize"
        elif c.method == "kmeans":
            text = f"kmeans k={c.n_centroids}"
        else:
            text = f"pq d={c.subvector_size} k={c.n_centroids} {c.layout}"
        if c.centroid_bits == 16:
            text += " fp16"
        if c.finetune_epochs:
            text += f" +ft{c.finetune_epochs}"
        return text

    @classmethod
    def from_dict(cls, data: dict) -> CompressConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})
