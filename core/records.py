"""The typed records: a stored run and a compression, each with exactly one JSON form.

The same record travels from the store to the CLI, the pages, the charts and bench/: no dicts
indexed by strings on the way. Layers are named by their state-dict keys ('fcs.0.weight')
everywhere. A run's weights are loaded only when asked (`RunRecord.state_dict()`), so listing
runs reads no weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .config import CompressConfig, TrainConfig
from .size import SizeReport

if TYPE_CHECKING:  # records are read (listings, cache hits) without torch; tensors import it
    import torch
    from torch import nn


class CorruptEntry(ValueError):
    """A stored entry whose bytes do not match its checksum, or whose content is inconsistent."""


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _ints(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, list | tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} must be a list of whole numbers")
    return tuple(values)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number")
    return float(value)


# ------------------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class LayerShape:
    name: str  # state-dict key of the weight, e.g. 'fcs.0.weight'
    shape: tuple[int, ...]  # (out, in) for nn.Linear

    def label(self) -> str:
        """e.g. 'fcs.0.weight 300×784'."""
        return f"{self.name} {'×'.join(str(s) for s in self.shape)}"


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    loss: float  # mean training loss (cross-entropy + lam * R)
    ce: float  # mean cross-entropy
    reg: float  # mean regularizer value R(W) (unweighted)
    test_accuracy: float  # in [0, 1]
    lam: float  # lam at the end of the epoch (after warm-up)
    seconds: float

    def to_json(self) -> dict:
        return {
            "epoch": self.epoch,
            "loss": self.loss,
            "ce": self.ce,
            "reg": self.reg,
            "test_accuracy": self.test_accuracy,
            "lam": self.lam,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EpochMetrics:
        epoch = data["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError("epoch must be a whole number >= 1")
        values = {name: _number(data[name], name) for name in ("loss", "ce", "reg", "test_accuracy", "lam", "seconds")}
        if not 0.0 <= values["test_accuracy"] <= 1.0:
            raise ValueError("test_accuracy must be in [0, 1]")
        return cls(epoch=epoch, **values)


@dataclass(frozen=True)
class LayerHistogram:
    """A layer's weights in equal bins on [-limit, limit], with alpha = mean |W|: what the charts draw."""

    layer: str  # state-dict key of the weight
    alpha: float  # mean |W|
    std: float
    limit: float  # the bins cover [-limit, limit]
    counts: tuple[int, ...]

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "alpha": self.alpha,
            "std": self.std,
            "limit": self.limit,
            "counts": list(self.counts),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LayerHistogram:
        counts = _ints(data["counts"], "histogram counts")
        if not counts or any(c < 0 for c in counts):
            raise ValueError("histogram counts must be non-negative")
        limit = _number(data["limit"], "histogram limit")
        if not limit > 0:
            raise ValueError("histogram limit must be > 0")
        if not isinstance(data["layer"], str):
            raise ValueError("histogram layer must be a name")
        return cls(data["layer"], _number(data["alpha"], "alpha"), _number(data["std"], "std"), limit, counts)


class Weights(Protocol):
    """Where a run's weights come from: memory (just trained) or a verified file of the store."""

    def load(self) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class MemoryWeights:
    tensors: dict[str, torch.Tensor] = field(repr=False)

    def load(self) -> dict[str, torch.Tensor]:
        return self.tensors


@dataclass(frozen=True)
class BlobWeights:
    """A verified safetensors file, held in memory as its bytes: made into tensors at each load
    (so a lookup that only reads the record, a cache hit, imports no torch)."""

    blob: bytes = field(repr=False)

    def load(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load as st_load

        return st_load(self.blob)


@dataclass(frozen=True)
class StoredWeights:
    """A safetensors file of the store with the sha256 it must have; checked at every load."""

    path: str
    sha256: str

    def load(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load as st_load

        try:
            blob = Path(self.path).read_bytes()
        except OSError as error:
            raise CorruptEntry(f"the weights of this run cannot be read ({error.strerror}); train it again") from None
        if sha256(blob) != self.sha256:
            raise CorruptEntry("the weights of this run do not match their checksum; train it again")
        return st_load(blob)


@dataclass(frozen=True)
class RunRecord:
    """A trained run: its config, its FC layers, per-epoch metrics and histograms; weights on demand."""

    run_id: str
    config: TrainConfig
    input_shape: tuple[int, int, int]
    n_classes: int
    layers: tuple[LayerShape, ...]  # the FC weights (compression targets), in forward order
    history: tuple[EpochMetrics, ...]  # one per epoch
    histograms: tuple[tuple[LayerHistogram, ...], ...]  # index 0: at init; i: after epoch i; one per layer
    device: str = "cpu"
    seconds: float = 0.0
    weights: Weights | None = field(default=None, compare=False, repr=False)

    @property
    def test_accuracy(self) -> float:
        return self.history[-1].test_accuracy

    @property
    def epochs_trained(self) -> int:
        return len(self.history)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights (float32, CPU); read (and checked) from the store on each call."""
        if self.weights is None:
            raise CorruptEntry(f"run {self.run_id} has no weights attached")
        return self.weights.load()

    def model(self, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """A fresh model with the trained weights (safe to modify: it holds copies). `state`: the
        weights already read by `state_dict()`, so a caller that needs both reads and checks them once."""
        from .models import build_model

        model = build_model(self.config.model, self.input_shape, self.n_classes, self.config.hidden)
        model.load_state_dict(self.state_dict() if state is None else state)
        return model.eval()

    def label(self) -> str:
        """One line naming the run: 'mnist-5k · mlp 300-100 · binary λ=0.02 · 5 ep · seed 0 · acc 93.1% · 1a2b3c'."""
        c = self.config
        model = f"{c.model} {'-'.join(str(h) for h in c.hidden)}" if c.model == "mlp" else c.model
        return (
            f"{c.dataset} · {model} · {c.label()} · {c.epochs} ep · seed {c.seed} · "
            f"acc {100 * self.test_accuracy:.1f}% · {self.run_id[:6]}"
        )

    def with_weights(self, weights: Weights | None) -> RunRecord:
        return RunRecord(
            self.run_id,
            self.config,
            self.input_shape,
            self.n_classes,
            self.layers,
            self.history,
            self.histograms,
            self.device,
            self.seconds,
            weights,
        )

    def to_json(self) -> dict:
        """The one JSON form (weights are not part of it: they live beside it)."""
        return {
            "run_id": self.run_id,
            "config": self.config.to_json(),
            "input_shape": list(self.input_shape),
            "n_classes": self.n_classes,
            "layers": [{"name": layer.name, "shape": list(layer.shape)} for layer in self.layers],
            "history": [m.to_json() for m in self.history],
            "histograms": [[h.to_json() for h in epoch] for epoch in self.histograms],
            "device": self.device,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], weights: Weights | None = None) -> RunRecord:
        """Parse and check the JSON form; ValueError (or KeyError/TypeError) on anything inconsistent."""
        config = TrainConfig.from_dict(data["config"])
        run_id = data["run_id"]
        if run_id != config.run_id():
            raise ValueError(f"run id {run_id!r} is not the hash of its config ({config.run_id()})")
        input_shape = _ints(data["input_shape"], "input_shape")
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError("input_shape must be 3 positive numbers")
        layers = tuple(LayerShape(str(entry["name"]), _ints(entry["shape"], "layer shape")) for entry in data["layers"])
        history = tuple(EpochMetrics.from_json(m) for m in data["history"])
        if len(history) != config.epochs or [m.epoch for m in history] != list(range(1, config.epochs + 1)):
            raise ValueError(f"the history must hold epochs 1 to {config.epochs}")
        histograms = tuple(tuple(LayerHistogram.from_json(h) for h in epoch) for epoch in data["histograms"])
        if len(histograms) != config.epochs + 1 or any(
            [h.layer for h in epoch] != [layer.name for layer in layers] for epoch in histograms
        ):
            raise ValueError("the histograms must cover every FC layer at initialisation and after every epoch")
        n_classes = data["n_classes"]
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError("n_classes must be a whole number >= 2")
        return cls(
            run_id=run_id,
            config=config,
            input_shape=(input_shape[0], input_shape[1], input_shape[2]),
            n_classes=n_classes,
            layers=layers,
            history=history,
            histograms=histograms,
            device=str(data.get("device", "cpu")),
            seconds=_number(data.get("seconds", 0.0), "seconds"),
            weights=weights,
        )


# ---------------------------------------------------------------------------------- compressions


@dataclass(frozen=True)
class CompressionRecord:
    """One compression of one run: the configs, the measured accuracy, the exact size, the file."""

    run_id: str
    train_config: TrainConfig
    compress_config: CompressConfig
    accuracy: float  # test accuracy of the model rebuilt from the exported file
    float_accuracy: float  # test accuracy of the run before compression
    size: SizeReport
    file_bytes: int  # exact size of the exported file
    layer_mse: tuple[tuple[str, float], ...] = ()  # reconstruction MSE per coded weight (state-dict key)
    seconds: float = 0.0
    file_path: str | None = field(default=None, compare=False)  # where the store keeps the file
    # computed while a slider passed over it on the Compress page and not settled on: in the store
    # (moving back is instant) but kept off the Frontier until a user stays on it
    transient: bool = field(default=False, compare=False)

    @property
    def key(self) -> str:
        return self.compress_config.key()

    @property
    def accuracy_drop(self) -> float:
        """float accuracy - accuracy, as a fraction (x 100 for points)."""
        return self.float_accuracy - self.accuracy

    def label(self) -> str:
        return self.compress_config.label()

    def row(self) -> dict:
        """One flat row: the frontier's, the sweep CSV's and bench/'s unit."""
        t, c, s = self.train_config, self.compress_config, self.size
        return {
            "run_id": self.run_id,
            "key": self.key,
            "dataset": t.dataset,
            "model": t.model,
            "hidden": "-".join(str(h) for h in t.hidden) if t.model == "mlp" else "",
            "reg": t.reg,
            "lam": t.lam,
            "reg_label": t.label(),
            "epochs": t.epochs,
            "seed": t.seed,
            "method": c.family,  # "budget" for per-layer settings (core/budget.py): its own family
            "subvector_size": c.subvector_size,
            "n_centroids": c.n_centroids,
            "layout": c.layout,
            "centroid_bits": c.centroid_bits,
            "finetune_epochs": c.finetune_epochs,
            "label": c.label(),
            "float_accuracy": self.float_accuracy,
            "accuracy": self.accuracy,
            "accuracy_drop": self.accuracy_drop,
            # fc_*: the coded layers (FC, plus conv with targets fc+conv); the names are the stored keys
            "fc_bits": s.fc_bits,
            "fc_ratio": s.fc_ratio,
            "model_bits": s.model_bits,
            "model_ratio": s.model_ratio,
            "code_bits": s.code_bits,
            "codebook_bits": s.codebook_bits,
            "scale_bits": s.scale_bits,
            "rest_bits": s.rest_bits,
            # the sizes with the codes as stored: entropy-coded where the compression is (else the raw ones)
            "entropy": c.entropy,
            "sparsity": c.sparsity,
            "mask_bits": s.mask_bits,
            "entropy_fc_bits": s.entropy_fc_bits,
            "entropy_fc_ratio": s.entropy_fc_ratio,
            "entropy_model_bits": s.entropy_model_bits,
            "entropy_model_ratio": s.entropy_model_ratio,
            "file_bytes": self.file_bytes,
            "seconds": self.seconds,
        }

    def with_file(self, path: str | None, transient: bool = False) -> CompressionRecord:
        return CompressionRecord(
            self.run_id,
            self.train_config,
            self.compress_config,
            self.accuracy,
            self.float_accuracy,
            self.size,
            self.file_bytes,
            self.layer_mse,
            self.seconds,
            path,
            transient,
        )

    def to_json(self) -> dict:
        """The one JSON form (the file path is where the store keeps it, not part of the record)."""
        return {
            "run_id": self.run_id,
            "train_config": self.train_config.to_json(),
            "compress_config": self.compress_config.to_json(),
            "accuracy": self.accuracy,
            "float_accuracy": self.float_accuracy,
            "size": self.size.to_json(),
            "file_bytes": self.file_bytes,
            "layer_mse": dict(self.layer_mse),
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], file_path: str | None = None, transient: bool = False
    ) -> CompressionRecord:
        train_config = TrainConfig.from_dict(data["train_config"])
        run_id = data["run_id"]
        if run_id != train_config.run_id():
            raise ValueError(f"run id {run_id!r} is not the hash of its training config")
        accuracy = _number(data["accuracy"], "accuracy")
        float_accuracy = _number(data["float_accuracy"], "float_accuracy")
        if not (0 <= accuracy <= 1 and 0 <= float_accuracy <= 1):
            raise ValueError("accuracies must be in [0, 1]")
        file_bytes = data["file_bytes"]
        if isinstance(file_bytes, bool) or not isinstance(file_bytes, int) or file_bytes < 1:
            raise ValueError("file_bytes must be a positive whole number")
        mse = data.get("layer_mse", {})
        if not isinstance(mse, dict):
            raise ValueError("layer_mse must be an object")
        return cls(
            run_id=run_id,
            train_config=train_config,
            compress_config=CompressConfig.from_dict(data["compress_config"]),
            accuracy=accuracy,
            float_accuracy=float_accuracy,
            size=SizeReport.from_json(data["size"]),
            file_bytes=file_bytes,
            layer_mse=tuple((str(k), _number(v, "layer_mse")) for k, v in mse.items()),
            seconds=_number(data.get("seconds", 0.0), "seconds"),
            file_path=file_path,
            transient=transient,
        )
