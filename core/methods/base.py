"""What a compression method is: the one interface every method file implements (`Method`).

A method owns everything that differs from one method to the next, so that the config, the size
ledger, the file writer and reader, the pipeline, the sweep, the charts and the pages ask it
instead of branching on its name:

    reads / canonical     which CompressConfig fields it reads, and their canonical values
    quantize              how it codes one weight (a QuantizedLayer), or None when it keeps it float
    layer_bits            its exact bits for one weight (size.py sums them)
    check_fits            whether a setting fits the layers, with the sentence a user reads
    estimate_seconds      its cost on this machine (a measured model: bench/estimate.py)
    layer_format / ...    the tensors it writes into the file, and what the reader expects of them
    label, color          how it is named and drawn
    controls, options     which Compress-page controls it uses, and the controls of its own
    codes_weights         whether it codes weights at all (the stages after it act on its codes)
    uses_calibration      whether its output-error weighting needs the model's inputs

This module imports no config at run time: core/config.py imports the registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..config import CompressConfig
    from ..pq import QuantizedLayer

Shapes = Sequence[tuple[str, tuple[int, ...]]]  # (state-dict key, weight shape) of each coded weight

# The controls of the Compress page that several methods share, by the CompressConfig field each sets.
SHARED_CONTROLS = (
    "layout",
    "subvector_size",
    "n_centroids",
    "centroid_bits",
    "finetune_epochs",
    "weighting",
    "targets",
)


@dataclass(frozen=True)
class MethodOption:
    """A control of one method's own (the page draws it only for that method): a CompressConfig field,
    the values offered, the page's default, the label and the help."""

    field: str
    label: str
    options: tuple[int, ...]
    default: int
    help: str = ""


@dataclass(frozen=True)
class LayerFormat:
    """What one coded weight is in the file: its layer entry's values and its tensors beside the codes
    (name suffix -> shape, in the centroid dtype)."""

    layout: str
    subvector_size: int
    n_centroids: int
    code_bits: int
    groups: int  # rows of the codes tensor before packing
    codes_per_group: int
    tensors: dict[str, tuple[int, ...]]
    extra: dict[str, int]  # the method's own layer keys (e.g. RQ's stages)


@dataclass(frozen=True)
class LayerCost:
    """The bits of one coded weight, by part."""

    code_bits: int
    codebook_bits: int
    scale_bits: int


class Method:
    """One compression method. Subclasses set the class attributes and override what differs."""

    name: str = ""
    summary: str = ""  # one line: what it does (the CLI's and the page's help)
    color: str = "#333333"  # its colour on every chart (Okabe-Ito)
    # CompressConfig fields it reads besides `method`; the others go to their defaults
    reads: tuple[str, ...] = ()
    # fields whose value it fixes, whatever was asked (e.g. kmeans is d = 1)
    fixed: Mapping[str, Any] = MappingProxyType({})
    controls: frozenset[str] = frozenset()  # the SHARED_CONTROLS it uses (the others are disabled)
    options: tuple[MethodOption, ...] = ()  # controls of its own, drawn only for it
    # the grid axes a sweep spans for it, in the sweep's order (subvector_size, n_centroids, layout,
    # finetune_epochs, stages); the other fields are fixed
    axes: tuple[str, ...] = ()
    tensor_names: tuple[str, ...] = ()  # suffixes of its tensors in the file, beside `.codes`
    layer_keys: tuple[str, ...] = ()  # keys of its own in a layer entry of the file's metadata
    uses_calibration: bool = False  # whether cfg.weighting == "activations" needs calibration inputs
    # whether it codes any weight: a method that keeps them float has no codes for the stages after
    # it (pruning, entropy coding: config resets them) and counts the chosen layers at 32 bits
    codes_weights: bool = True

    # ------------------------------------------------------------------------------ the config

    def canonical(self, values: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
        """The canonical field values of a setting of this method: the fixed ones set, the unread ones
        reset to their defaults. A method that is another one for some settings (pq with d = 1 and one
        shared codebook is kmeans) returns that one's name in `method`; config asks it again."""
        out = dict(values)
        out.update(self.fixed)
        for name, default in defaults.items():
            if name != "method" and name not in self.reads and name not in self.fixed:
                out[name] = default
        return out

    def label(self, cfg: CompressConfig) -> str:
        """Its part of the config's label, e.g. 'pq d=8 k=256 shared'."""
        return self.name

    # --------------------------------------------------------------------------- the weights

    def quantize(
        self, name: str, weight: torch.Tensor, cfg: CompressConfig, moments: torch.Tensor | None = None
    ) -> QuantizedLayer | None:
        """One weight coded as `cfg` says; None when the method keeps it float. `moments`: the layer's
        input second moments when `uses_calibration` and cfg.weighting is 'activations'."""
        raise NotImplementedError

    def layer_bits(self, rows: tuple[int, int], cfg: CompressConfig) -> LayerCost:
        """The exact bits of one weight of `rows` (out, in * kh * kw)."""
        raise NotImplementedError

    def check_fits(self, shapes: Shapes, cfg: CompressConfig) -> None:
        """Raise core.pq.DoesNotFit (a sentence that says what would fit) when `cfg` cannot code
        weights of these shapes; `shapes` is never empty."""

    def cost_features(self, shapes: Shapes, cfg: CompressConfig) -> dict[str, float]:
        """Its quantization work, by kind (what `estimate_seconds` prices): none unless it says so."""
        return {}

    def estimate_seconds(self, shapes: Shapes, cfg: CompressConfig) -> float:
        """Seconds of quantization work on this machine, from its measured cost model (the rest of a
        compression, fine-tuning included, is counted by the pipeline)."""
        return 0.0

    # ------------------------------------------------------------------------------- the file

    def code_bits(self, layer: QuantizedLayer) -> int:
        """Bits of one of the layer's codes in the file."""
        raise NotImplementedError

    def layer_tensors(self, layer: QuantizedLayer) -> dict[str, torch.Tensor]:
        """Its tensors beside the codes (suffix -> tensor, float32; the writer casts to the centroid dtype)."""
        raise NotImplementedError

    def layer_extra(self, layer: QuantizedLayer) -> dict[str, int]:
        """Its own keys of the layer entry (`layer_keys`)."""
        return {}

    def layer_format(self, rows: tuple[int, int], cfg: CompressConfig) -> LayerFormat | None:
        """What the file must hold for a weight of `rows` coded by `cfg`; None: the method codes none."""
        return None

    def read_layer(
        self, name: str, info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], codes: torch.Tensor
    ) -> QuantizedLayer:
        """The QuantizedLayer of a checked layer entry: `codes` unpacked (groups, codes_per_group)."""
        raise NotImplementedError
