"""Frozen configs for training and compression.

`asdict(cfg)` is both the cache key material and the metadata saved with a run, so every field
that changes a result lives here and nothing else does (the device, for instance, does not).

A config is canonical from construction: fields that cannot change the result are reset there
(the unregularized run is `reg="none", lam=0` whatever was asked; `kmeans` is `d = 1`, and `pq`
with `d = 1` and one shared codebook IS `kmeans`), so two equal runs or compressions always
share one cache key, and nothing downstream canonicalizes again.

Validation raises `ValueError` with a sentence a user can act on, and bounds every size: no
single request can take the machine's memory (parameters) or hold it for days (epochs).

Each field is declared once, with its default, its bounds and its help text (`field_help`); the
command line builds its flags from them (`core/__main__.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .data import DATASET_SOURCES
from .methods import METHOD_SPECS
from .methods.base import Method

DATASETS = tuple(DATASET_SOURCES)
# The networks of `core.models.MODEL_BUILDERS` (the same names, tested), named here so that a
# config is made and checked without importing torch: listing the store builds one a run.
MODELS = ("mlp", "lenet5", "cifar-cnn")
REGULARIZERS = ("none", "binary", "levels", "pq")  # implemented in core/regularizers.py (TERMS)
METHODS = tuple(METHOD_SPECS)  # one file each in core/methods/, in its registry
LAYOUTS = ("shared", "per-chunk")
INITS = ("kmeans++", "random")
CENTROID_BITS = (32, 16)
# What k-means minimizes: the weights' own squared error, or the layer's output error on its
# inputs (k-means under the metric of the inputs' second moment; Stock et al. 2019).
WEIGHTINGS = ("none", "activations")
# Which layers of a built-in network the regularizer acts on and the compression codes: its FC
# layers (the paper), or its FC and conv layers (beyond the paper: past the conv barrier).
TARGETS = ("fc", "fc+conv")
# How the codes are stored: bit-packed, or entropy-coded by rANS under each layer's code frequencies
# (core/entropy.py). A stage after any coding method: no method reads it, every coding method keeps it.
ENTROPY_CODERS = ("none", "ans")
# Stages that wrap any coding method's codes: kept through a method's canonical form (which resets the
# fields it does not read), reset only for a method that codes nothing.
STAGE_FIELDS = ("entropy", "sparsity", "prune_finetune_epochs")

# Fields added after the first release: left out of a config's JSON (and so of its hash) while they
# hold their default, so every run id and compression key from before stays what it was.
LATER_FIELDS = {
    "reg_targets": "fc",
    "targets": "fc",
    "warmup_start": 0,
    "weighting": "none",
    "stages": 1,
    "entropy": "none",
    "sparsity": 0.0,
    "group_size": 0,
    "prune_sparsity": 0.0,
    "prune_start_epoch": 0,
    "prune_epochs": 1,
    "prune_finetune_epochs": 0,
    "per_layer": (),
}

# Limits: each bounds what one request can cost. 20 M parameters is 80 MB of float32 weights
# (plus Adam's two moments): far beyond the networks here, far below this machine's memory.
MAX_CENTROIDS = 65_536
MAX_PARAMETERS = 20_000_000
MAX_EPOCHS = 1_000
MAX_HIDDEN_LAYERS = 8
MAX_BATCH_SIZE = 65_536
MAX_SEED = 2**32 - 1
MAX_ITERS = 1_000
MAX_STAGES = 16
# A per-layer setting (`CompressConfig.per_layer`, core/budget.py) picks one of these for a weight:
# the methods whose layer entries in the file differ only in d, k and the mask (the file's centroid
# dtype, its layer keys and its calibration are the config's, shared by every layer).
PER_LAYER_METHODS = ("float", "kmeans", "pq")
MAX_PER_LAYER = 256
# The budget search's held-out slice of the training split (core/budget.py): here, so that the command
# line builds its flags without importing torch.
HOLDOUT_EXAMPLES = 500
MAX_HOLDOUT = 20_000

# Bumped when a change to the training or compression code changes results, so old cache
# entries are not mistaken for new ones.
# 2: closed-form regularizer gradients, faster k-means++ seeding; 3: leaner passes of the terms, k-means speed-ups
CODE_VERSION = 3
# The regularizers whose terms run over the survivors of a run pruned during training since they first
# combined with pruning (they counted the pruned zeros as weights before): such a run's id says so, so that
# an entry trained the old way is never taken for a new one. Every other run id (unpruned runs, binary's,
# which always ran over the survivors) stays as it was: a CODE_VERSION bump would move them all.
SURVIVOR_TERMS = ("levels", "pq")


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A field with its help text (shown by the CLI and the app) beside its default."""
    return field(default=default, metadata={"help": help, **meta})


def field_help(cls: type, name: str) -> str:
    """The help text of a config field."""
    return next(f.metadata.get("help", "") for f in fields(cls) if f.name == name)


def field_default(cls: type, name: str) -> Any:
    value = next(f.default for f in fields(cls) if f.name == name)
    assert value is not MISSING
    return value


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def _int(name: str, value: object, low: int, high: int, hint: str = "") -> None:
    """An integer (not a bool, not a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} must be a whole number from {low:,} to {high:,}{hint}")


def _float(name: str, value: object, low: float, high: float, low_open: bool = False, hint: str = "") -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and value <= high  # type: ignore[operator]
    if not ok:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise ValueError(f"{name}={value!r} must be a finite number {bound} and <= {high:g}{hint}")


def check_centroids(n_centroids: object) -> None:
    _int("number of centroids k", n_centroids, 2, MAX_CENTROIDS)


def check_subvector_size(subvector_size: object) -> None:
    _int("subvector size d", subvector_size, 1, 1 << 20, " (d = 1 is scalar k-means)")


# The regularizer's fields, checked once here for both TrainConfig and core.Regularizer (whose
# arguments have their own names: `levels`, `subvector_size`, `n_centroids`).
MAX_LAM = 1e6


def check_lam(lam: object, name: str = "lam") -> None:
    _float(name, lam, 0.0, MAX_LAM, hint=" (0 turns the regularizer off)")


def check_warmup(name: str, epochs: object) -> None:
    """warmup_epochs or warmup_start: a whole number of epochs."""
    _int(name, epochs, 0, MAX_EPOCHS)


def check_levels(levels: object, name: str = "reg_levels") -> None:
    _int(name, levels, 2, 256, " (the levels regularizer's number of scalar levels)")


def check_seed(seed: object, name: str = "seed") -> None:
    _int(name, seed, 0, MAX_SEED)


def check_sparsity(name: str, value: object) -> None:
    """A pruning sparsity: the fraction of a weight set to zero, in [0, 1)."""
    ok = isinstance(value, float) and math.isfinite(value) and 0 <= value < 1
    if not ok:
        raise ValueError(f"{name}={value!r} must be a number from 0 (no pruning) up to but not including 1, e.g. 0.9")


def parse_hidden(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Hidden widths from '300,100', '300 100', '300, 100' or a sequence; ValueError says the format."""
    if isinstance(text, str):
        parts = text.replace(",", " ").split()
        if not parts or not all(p.isdigit() for p in parts):
            raise ValueError(
                f"hidden widths {text!r} must be whole numbers separated by commas or spaces, e.g. 300,100"
            )
        return tuple(int(p) for p in parts)
    return tuple(text)


def config_hash(payload: dict) -> str:
    """Short, stable hash of a JSON-able dict (sorted keys, no whitespace)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _without_later_defaults(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclass: canonical values are set once, in __post_init__


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = _f("mnist-5k", "dataset; mnist-5k is bundled (offline) real MNIST", choices=DATASETS)
    model: str = _f("mlp", "network; mlp is LeNet-300-100", choices=MODELS)
    hidden: tuple[int, ...] = _f((300, 100), "hidden FC widths of mlp, e.g. 300,100 (ignored by conv models)")
    reg: str = _f("none", "regularizer on the FC weights; binary is our reading of the paper's term",
                  choices=REGULARIZERS)  # fmt: skip
    lam: float = _f(0.0, "weight of the regularizer in the loss; 0 turns it off")
    warmup_epochs: int = _f(0, "lam ramps linearly from 0 over this many epochs")
    reg_levels: int = _f(2, "levels regularizer: number of scalar levels per layer")
    reg_subvector_size: int = _f(8, "pq regularizer: subvector size d it aims at")
    reg_centroids: int = _f(256, "pq regularizer: number of centroids k it aims at")
    epochs: int = _f(5, f"passes over the training set (1 to {MAX_EPOCHS:,})")
    lr: float = _f(1e-3, "Adam learning rate")
    batch_size: int = _f(64, "mini-batch size")
    seed: int = _f(0, "seeds weight init and shuffling; same seed on the CPU, same run")
    reg_targets: str = _f(
        "fc",
        "layers the regularizer (and gradual pruning) acts on: fc (the paper) or fc+conv (beyond the paper)",
        choices=TARGETS,
    )
    warmup_start: int = _f(0, "epoch at which lam starts to ramp up (lam = 0 before it)")
    prune_sparsity: float = _f(
        0.0,
        "gradual magnitude pruning during training (Zhu & Gupta 2017): the final fraction in [0, 1) of each "
        "regularized layer's weights held at exact zero; 0 turns it off",
    )
    prune_start_epoch: int = _f(0, "epoch at which gradual pruning starts (sparsity 0 before it)")
    prune_epochs: int = _f(
        1, "epochs over which the sparsity rises to prune_sparsity on the cubic schedule (then held to the end)"
    )

    def __post_init__(self) -> None:
        # Lists from JSON / argparse, strings from a text box: keep the dataclass hashable.
        try:
            hidden = parse_hidden(self.hidden)
        except TypeError:
            raise ValueError(f"hidden widths {self.hidden!r} must be whole numbers, e.g. 300,100") from None
        _set(self, "hidden", hidden)
        if isinstance(self.lam, int) and not isinstance(self.lam, bool):
            _set(self, "lam", float(self.lam))
        if isinstance(self.lr, int) and not isinstance(self.lr, bool):
            _set(self, "lr", float(self.lr))
        if isinstance(self.prune_sparsity, int) and not isinstance(self.prune_sparsity, bool):
            _set(self, "prune_sparsity", float(self.prune_sparsity))
        self._validate()
        self._canonicalize()

    def _validate(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, MODELS)
        _choice("regularizer", self.reg, REGULARIZERS)
        _choice("regularizer targets", self.reg_targets, TARGETS)
        if self.model == "cifar-cnn" and self.dataset != "cifar10":
            raise ValueError("model cifar-cnn expects 32x32 colour images; use it with dataset cifar10")
        if not 1 <= len(self.hidden) <= MAX_HIDDEN_LAYERS:
            raise ValueError(f"give 1 to {MAX_HIDDEN_LAYERS} hidden widths, e.g. 300,100 (got {len(self.hidden)})")
        for width in self.hidden:
            _int("hidden width", width, 1, MAX_PARAMETERS, " (e.g. 300,100)")
        check_lam(self.lam)
        check_warmup("warmup_epochs", self.warmup_epochs)
        check_warmup("warmup_start", self.warmup_start)
        _int("epochs", self.epochs, 1, MAX_EPOCHS)
        _float("lr", self.lr, 0.0, 10.0, low_open=True, hint=", e.g. 0.001")
        _int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        check_seed(self.seed)
        check_levels(self.reg_levels)
        check_subvector_size(self.reg_subvector_size)
        check_centroids(self.reg_centroids)
        check_sparsity("prune_sparsity", self.prune_sparsity)
        _int("prune_start_epoch", self.prune_start_epoch, 0, MAX_EPOCHS)
        _int("prune_epochs", self.prune_epochs, 1, MAX_EPOCHS)
        if self.prune_sparsity > 0 and self.prune_start_epoch + self.prune_epochs > self.epochs:
            raise ValueError(
                f"gradual pruning must reach its sparsity by the end of training: prune_start_epoch "
                f"({self.prune_start_epoch}) + prune_epochs ({self.prune_epochs}) is more than epochs ({self.epochs}); "
                f"start earlier, ramp over fewer epochs or train longer"
            )
        n_params = self.mlp_parameters() if self.model == "mlp" else 0
        if n_params > MAX_PARAMETERS:
            raise ValueError(
                f"this network has {n_params:,} parameters; the limit is {MAX_PARAMETERS:,}: use smaller hidden widths"
            )

    def mlp_parameters(self) -> int:
        """Parameters of the MLP this config builds (weights and biases of each layer), by arithmetic:
        only the MLP's size is the config's to choose (the convolutional networks are fixed and far
        under the limit, tested), and counting needs no torch (`core.models.count_parameters`
        agrees, tested)."""
        source = DATASET_SOURCES[self.dataset]
        widths = [math.prod(source.input_shape), *self.hidden, source.n_classes]
        return sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(widths))

    def _canonicalize(self) -> None:
        """Reset the fields that cannot matter, so equal runs share one cache key."""
        if self.reg == "none" or self.lam == 0:
            _set(self, "reg", "none")
            _set(self, "lam", 0.0)
            _set(self, "warmup_epochs", 0)
            _set(self, "warmup_start", 0)
        if self.reg != "levels":
            _set(self, "reg_levels", 2)
        if self.reg != "pq":
            _set(self, "reg_subvector_size", 8)
            _set(self, "reg_centroids", 256)
        if self.model != "mlp":
            _set(self, "hidden", (300, 100))
        if self.prune_sparsity == 0:
            _set(self, "prune_start_epoch", 0)
            _set(self, "prune_epochs", 1)
        if (self.reg == "none" and self.prune_sparsity == 0) or self.model == "mlp":
            _set(self, "reg_targets", "fc")  # nothing to regularize or prune, or no conv layer to add

    def run_id(self) -> str:
        payload = _without_later_defaults(asdict(self))
        payload["code_version"] = CODE_VERSION
        if self.prune_sparsity > 0 and self.reg in SURVIVOR_TERMS:
            payload["terms_over_survivors"] = True
        return config_hash(payload)

    def label(self) -> str:
        """'none', or the regularizer with its settings, e.g. 'binary λ=0.02', 'pq λ=1 d=8 k=16'; gradual
        pruning adds its sparsity, e.g. 'binary λ=0.02 prune 0.9'."""
        if self.reg == "none":
            text = "none (λ=0)"
        else:
            text = f"{self.reg} λ={self.lam:g}"
            if self.reg == "levels":
                text += f" L={self.reg_levels}"
            if self.reg == "pq":
                text += f" d={self.reg_subvector_size} k={self.reg_centroids}"
        if self.prune_sparsity:
            text += f" prune {self.prune_sparsity:g}"
        if self.reg_targets == "fc+conv":
            text += " +conv"
        return text

    def prune_schedule(self, t: float) -> float:
        """The sparsity of gradual pruning at training time `t` (in epochs, from 0): Zhu & Gupta's cubic
        s_t = s_f (1 - (1 - (t - t0) / n)^3) from t0 = prune_start_epoch over n = prune_epochs epochs;
        0 before, s_f after. Fast at first, while many weights are redundant, slower near the end."""
        if self.prune_sparsity == 0 or t <= self.prune_start_epoch:
            return 0.0
        progress = min(1.0, (t - self.prune_start_epoch) / self.prune_epochs)
        return self.prune_sparsity * (1.0 - (1.0 - progress) ** 3)

    def to_json(self) -> dict:
        return _without_later_defaults(asdict(self) | {"hidden": list(self.hidden)})

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """From a JSON dict; unknown keys are ignored, bad values raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError("a training config must be a JSON object")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as error:
            raise ValueError(f"bad training config: {error}") from None


def pruning_label(sparsity: float, retrain_epochs: int) -> str:
    """The words a label puts before its coding for the pruning stage: 'prune 0.9 +rt2 + '."""
    return f"prune {sparsity:g}{f' +rt{retrain_epochs}' if retrain_epochs else ''} + "


@dataclass(frozen=True)
class LayerSetting:
    """One coded weight's own setting in a per-layer compression (`CompressConfig.per_layer`): the
    fields a layer may choose for itself; every other field is the config's, shared by all layers."""

    name: str  # the weight's state-dict key, e.g. "fcs.0.weight"
    method: str  # one of PER_LAYER_METHODS
    subvector_size: int = 8  # PQ subvector size d (1 for kmeans)
    n_centroids: int = 256  # centroids k
    sparsity: float = 0.0  # magnitude pruning before coding, in [0, 1)

    @classmethod
    def from_value(cls, value: object) -> LayerSetting:
        """From a LayerSetting or its JSON object; ValueError (one line) for anything else."""
        if isinstance(value, LayerSetting):
            return value
        keys = {f.name for f in fields(cls)}
        if not isinstance(value, dict) or not {"name", "method"} <= set(value) <= keys:
            raise ValueError(
                "each per-layer setting must be an object with name and method (and optionally "
                "subvector_size, n_centroids, sparsity)"
            )
        if not isinstance(value["name"], str) or not 0 < len(value["name"]) <= 200:
            raise ValueError("a per-layer setting's name must be a weight's state-dict key, e.g. fcs.0.weight")
        sparsity = value.get("sparsity", 0.0)
        if isinstance(sparsity, int) and not isinstance(sparsity, bool):
            sparsity = float(sparsity)
        return cls(**(value | {"sparsity": sparsity}))

    def fields_of(self) -> dict[str, Any]:
        """The CompressConfig fields this setting sets."""
        return {
            "method": self.method,
            "subvector_size": self.subvector_size,
            "n_centroids": self.n_centroids,
            "sparsity": self.sparsity,
        }


@dataclass(frozen=True)
class CompressConfig:
    # (the names only: each method's summary is in its file, imported with torch when it is used)
    method: str = _f(
        "pq", "the compression method, one file each in core/methods/: " + ", ".join(METHODS), choices=METHODS
    )
    subvector_size: int = _f(8, "PQ subvector size d (inputs per chunk); 1 for kmeans")
    n_centroids: int = _f(256, f"centroids k per codebook, 2 to {MAX_CENTROIDS:,}; a code is ceil(log2 k) bits")
    layout: str = _f("shared", "shared: one codebook per layer | per-chunk: one per chunk position", choices=LAYOUTS)
    centroid_bits: int = _f(32, "centroid precision: 32 (float32) or 16 (float16)", choices=CENTROID_BITS)
    kmeans_iters: int = _f(20, "Lloyd iterations after initialisation")
    init: str = _f("kmeans++", "k-means initialisation", choices=INITS)
    seed: int = _f(0, "seeds k-means")
    finetune_epochs: int = _f(0, "epochs of centroid fine-tuning (codes fixed) after quantization")
    finetune_lr: float = _f(1e-4, "Adam learning rate of the centroid fine-tuning")
    targets: str = _f("fc", "layers to code: fc (the paper) or fc+conv (every conv weight too)", choices=TARGETS)
    weighting: str = _f(
        "none",
        "none: k-means on the weights | activations: k-means weighted by each layer's input statistics "
        "(minimizes the layer's output error on training inputs; Stock et al. 2019)",
        choices=WEIGHTINGS,
    )
    stages: int = _f(1, f"codebooks that add up to each subvector, 1 to {MAX_STAGES} (methods that read it)")
    entropy: str = _f(
        "none",
        "none: codes bit-packed | ans: codes entropy-coded (rANS, constriction) under each layer's code "
        "frequencies, the table counted in the size (a layer keeps packed codes where that is smaller)",
        choices=ENTROPY_CODERS,
    )
    sparsity: float = _f(
        0.0,
        "magnitude pruning before coding: the fraction s in [0, 1) of each coded weight's smallest weights set "
        "to exact zeros (the mask stored, 1 bit a weight or entropy-coded); the method codes the survivors",
    )
    group_size: int = _f(
        0, "output channels that share one lookup table (the peers coreml, torchao); 0: one per tensor"
    )
    prune_finetune_epochs: int = _f(
        0,
        "with sparsity > 0: epochs of retraining the surviving weights (the mask fixed, the run's learning "
        "rate) after pruning and before coding (Deep Compression's retraining)",
    )
    per_layer: tuple[LayerSetting, ...] = _f(
        (),
        "each listed weight's own method (float, kmeans, pq), d, k and sparsity (core/budget.py finds them "
        "for a size budget); every other field, and every weight not listed, as the rest of the config says",
    )

    def __post_init__(self) -> None:
        if isinstance(self.finetune_lr, int) and not isinstance(self.finetune_lr, bool):
            _set(self, "finetune_lr", float(self.finetune_lr))
        if isinstance(self.sparsity, int) and not isinstance(self.sparsity, bool):
            _set(self, "sparsity", float(self.sparsity))
        if not isinstance(self.per_layer, list | tuple):
            raise ValueError("per_layer must be a list of per-layer settings (name, method, d, k, sparsity)")
        _set(self, "per_layer", tuple(LayerSetting.from_value(value) for value in self.per_layer))
        self._validate()
        self._canonicalize()
        pruned = self.sparsity > 0 or any(s.sparsity > 0 for s in self.per_layer)
        if pruned and (self.layout == "per-chunk" or self.weighting == "activations"):
            raise ValueError(
                "pruning codes each layer's surviving weights as one sequence: use layout shared and "
                "weighting none with sparsity > 0"
            )
        if self.per_layer:
            self._canonicalize_per_layer()
            if self.sparsity == 0 and not any(s.sparsity > 0 for s in self.per_layer):
                _set(self, "prune_finetune_epochs", 0)  # its pruned settings were dropped: nothing to retrain

    def _validate(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("layout", self.layout, LAYOUTS)
        _choice("k-means init", self.init, INITS)
        _choice("targets", self.targets, TARGETS)
        _choice("weighting", self.weighting, WEIGHTINGS)
        _choice("entropy coder", self.entropy, ENTROPY_CODERS)
        check_sparsity("sparsity", self.sparsity)
        _int("prune_finetune_epochs", self.prune_finetune_epochs, 0, MAX_EPOCHS)
        check_subvector_size(self.subvector_size)
        check_centroids(self.n_centroids)
        if self.centroid_bits not in CENTROID_BITS:
            raise ValueError(f"centroid_bits={self.centroid_bits!r} must be 32 (float32) or 16 (float16)")
        _int("kmeans_iters", self.kmeans_iters, 0, MAX_ITERS)
        _int("seed", self.seed, 0, MAX_SEED)
        _int("finetune_epochs", self.finetune_epochs, 0, MAX_EPOCHS)
        _float("finetune_lr", self.finetune_lr, 0.0, 10.0, low_open=True, hint=", e.g. 0.0001")
        _int("stages", self.stages, 1, MAX_STAGES)
        _int("group_size", self.group_size, 0, MAX_PARAMETERS)

    @property
    def method_spec(self) -> Method:
        """The method (core/methods/): what it reads, codes, counts, writes and how it is drawn."""
        return METHOD_SPECS[self.method]

    def _canonicalize(self) -> None:
        """Reset the fields a method ignores, so equal compressions share one cache key: the method
        says (`Method.canonical`), and when it is another method for this setting, that one says."""
        defaults = {f.name: f.default for f in fields(self)}
        kept = (*STAGE_FIELDS, "per_layer")  # wrap any method: never reset by the method's canonical form
        method_defaults = {name: value for name, value in defaults.items() if name not in kept}
        values = asdict(self)
        for _ in METHODS:  # a method hands over to another at most once per method
            canonical = METHOD_SPECS[values["method"]].canonical(values, method_defaults)
            if canonical == values:
                break
            values = canonical
        if values["finetune_epochs"] == 0:
            values["finetune_lr"] = defaults["finetune_lr"]
        if not METHOD_SPECS[values["method"]].codes_weights:  # nothing coded: no stage has codes to act on
            values.update({name: defaults[name] for name in STAGE_FIELDS})
        if values["sparsity"] == 0 and not any(s.sparsity > 0 for s in self.per_layer):
            values["prune_finetune_epochs"] = 0  # nothing pruned: no survivors to retrain
        values["per_layer"] = self.per_layer  # (asdict made its settings dicts)
        for name, value in values.items():
            _set(self, name, value)

    def _canonicalize_per_layer(self) -> None:
        """Each setting canonical (as the layer's own config makes it), listed once, by name; a setting
        equal to what the config gives every unlisted weight is dropped: one compression, one key."""
        if self.method not in ("kmeans", "pq"):
            raise ValueError(
                f"per-layer settings need method kmeans or pq for the rest of the config (it gives the "
                f"shared codebook fields), not {self.method}"
            )
        if self.weighting != "none":
            raise ValueError("per-layer settings take weighting none (the input statistics depend on each d)")
        if len(self.per_layer) > MAX_PER_LAYER:
            raise ValueError(f"give at most {MAX_PER_LAYER} per-layer settings (got {len(self.per_layer):,})")
        own = LayerSetting("", self.method, self.subvector_size, self.n_centroids, self.sparsity).fields_of()
        settings: dict[str, LayerSetting] = {}
        for setting in self.per_layer:
            _choice(f"method of layer {setting.name!r}", setting.method, PER_LAYER_METHODS)
            if setting.name in settings:
                raise ValueError(f"layer {setting.name!r} has two per-layer settings; give one")
            try:
                layer = self.for_layer_fields(setting)
            except ValueError as error:
                raise ValueError(f"layer {setting.name!r}: {error}") from None
            canonical = LayerSetting(
                setting.name, layer.method, layer.subvector_size, layer.n_centroids, layer.sparsity
            )
            if canonical.fields_of() != own:
                settings[setting.name] = canonical
        _set(self, "per_layer", tuple(settings[name] for name in sorted(settings)))

    def for_layer_fields(self, setting: LayerSetting) -> CompressConfig:
        """The plain config (no per-layer settings) that codes one weight as `setting` says."""
        values = {f.name: getattr(self, f.name) for f in fields(self)} | {"per_layer": ()}
        return CompressConfig(**(values | setting.fields_of()))

    def for_layer(self, name: str) -> CompressConfig:
        """The plain config that codes the weight `name`: its own setting, else this config."""
        for setting in self.per_layer:
            if setting.name == name:
                return self.for_layer_fields(setting)
        return self if not self.per_layer else dataclasses.replace(self, per_layer=())

    @property
    def family(self) -> str:
        """What the Frontier and the sweep's CSV call it: its method, or "budget" when its layers
        have settings of their own (core/budget.py)."""
        return "budget" if self.per_layer else self.method

    def check_layer_names(self, names: Sequence[str]) -> None:
        """ValueError unless every per-layer setting names one of the weights this config codes."""
        unknown = [s.name for s in self.per_layer if s.name not in names]
        if unknown:
            raise ValueError(
                f"a per-layer setting names {unknown[0]!r}, which is not a coded weight of this run; "
                f"its coded weights are {', '.join(names)}"
            )

    def key(self) -> str:
        payload = _without_later_defaults(asdict(self))
        payload["code_version"] = CODE_VERSION
        return config_hash(payload)

    def label(self) -> str:
        """Short human label, e.g. 'pq d=8 k=256 shared'; with per-layer settings, each listed weight's
        own, e.g. 'budget fcs.0: kmeans k=4, fcs.2: float | pq d=8 k=256 shared'."""
        if self.per_layer:
            own = "; ".join(
                f"{s.name.removesuffix('.weight')}: {self.for_layer_fields(s).label()}" for s in self.per_layer
            )
            return f"budget {own} | rest {dataclasses.replace(self, per_layer=()).label()}"
        text = self.method_spec.label(self)
        if self.targets == "fc+conv":
            text += " +conv"
        if self.weighting == "activations":
            text += " act"
        if self.centroid_bits == 16:
            text += " fp16"
        if self.finetune_epochs:
            text += f" +ft{self.finetune_epochs}"
        if self.sparsity:
            text = pruning_label(self.sparsity, self.prune_finetune_epochs) + text
        if self.entropy != "none":
            text += f" +{self.entropy}"
        return text

    def to_json(self) -> dict:
        data = _without_later_defaults(asdict(self))
        if self.per_layer:
            data["per_layer"] = [asdict(setting) for setting in self.per_layer]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> CompressConfig:
        """From a JSON dict; unknown keys are ignored, bad values raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError("a compression config must be a JSON object")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as error:
            raise ValueError(f"bad compression config: {error}") from None


__all__ = [
    "CODE_VERSION",
    "DATASETS",
    "ENTROPY_CODERS",
    "INITS",
    "LAYOUTS",
    "METHODS",
    "MODELS",
    "PER_LAYER_METHODS",
    "REGULARIZERS",
    "CompressConfig",
    "LayerSetting",
    "TrainConfig",
    "config_hash",
    "field_default",
    "field_help",
    "parse_hidden",
]
