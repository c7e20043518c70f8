"""The bit accounting: one function, exact to the bit (see docs/method.md, "Size accounting").

FC ratio    = 32 * N_fc / (code bits + codebook bits + per-layer scale bits)
model ratio = 32 * N_all / (compressed FC bits + 32 * N_rest)

The `fc_*` names (kept: they are keys of the stored JSON) count the *coded* layers: the FC layers, plus
the conv layers when `CompressConfig.targets == "fc+conv"`; N_rest is everything left in float32.

With entropy coding (CompressConfig.entropy, core/entropy.py), the ledger gains its entropy-coded
line: `entropy_code_bits`, the bits the file holds for the codes (each entropy-coded layer's ANS
stream and its frequency table, each other layer's packed codes), measured on the written codes;
the entropy_* ratios put it in place of `code_bits`. With pruning (core/prune.py), the codes count
the survivors only and `mask_bits` (1 bit a coded weight: the bitmap) is part of fc_bits; the
entropy line then holds the masks as stored too (bitmap, or ANS stream and table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import CompressConfig  # config imports the methods, which import this module

FLOAT_BITS = 32


def code_width(n_centroids: int) -> int:
    """Bits of one code into a codebook of k centroids: ceil(log2 k), and at least 1."""
    return max(1, (n_centroids - 1).bit_length())


@dataclass(frozen=True)
class SizeReport:
    code_bits: int  # packed codes of every coded layer (FC, plus conv with targets fc+conv)
    codebook_bits: int  # centroids (PQ / k-means)
    scale_bits: int  # one alpha per layer (binarize)
    fc_bits: int  # code + codebook + scale (+ mask) bits: the coded layers (FC, plus conv with fc+conv)
    fc_float_bits: int  # 32 * N_fc: the coded layers uncompressed (convs included when they are coded)
    rest_bits: int  # 32 * N_rest: biases, uncoded convs, anything left in float32
    model_bits: int  # fc_bits + rest_bits
    model_float_bits: int  # 32 * (N_fc + N_rest)
    fc_ratio: float  # fc_float_bits / fc_bits: the coded layers' ratio
    model_ratio: float
    # the codes (and masks) as the file holds them entropy-coded (streams + tables); None: not entropy-coded
    entropy_code_bits: int | None = None
    mask_bits: int = 0  # pruning: the survivors' bitmaps, 1 bit a coded weight (part of fc_bits)

    @property
    def entropy_fc_bits(self) -> int:
        """The coded layers' bits with the codes as stored (entropy-coded when they are)."""
        if self.entropy_code_bits is None:
            return self.fc_bits
        return self.entropy_code_bits + self.codebook_bits + self.scale_bits  # masks inside the entropy line

    @property
    def entropy_model_bits(self) -> int:
        return self.entropy_fc_bits + self.rest_bits

    @property
    def entropy_fc_ratio(self) -> float:
        return self.fc_float_bits / self.entropy_fc_bits

    @property
    def entropy_model_ratio(self) -> float:
        return self.model_float_bits / self.entropy_model_bits

    def to_json(self) -> dict:
        data = asdict(self)
        if self.entropy_code_bits is None:
            del data["entropy_code_bits"]  # a record from before entropy coding keeps its JSON
        if self.mask_bits == 0:
            del data["mask_bits"]  # and one from before pruning
        return data

    @classmethod
    def from_json(cls, data: dict) -> SizeReport:
        """Parse and check: the parts must add up and the ratios must follow from them."""
        ints = {
            f: data[f]
            for f in (
                "code_bits",
                "codebook_bits",
                "scale_bits",
                "fc_bits",
                "fc_float_bits",
                "rest_bits",
                "model_bits",
                "model_float_bits",
            )
        }
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints.values()):
            raise ValueError("size fields must be whole numbers of bits")
        mask_bits = data.get("mask_bits", 0)
        if not isinstance(mask_bits, int) or isinstance(mask_bits, bool) or mask_bits < 0:
            raise ValueError("mask_bits must be a whole number of bits")
        entropy_code_bits = data.get("entropy_code_bits")
        if entropy_code_bits is not None and (
            not isinstance(entropy_code_bits, int) or isinstance(entropy_code_bits, bool) or entropy_code_bits < 1
        ):
            raise ValueError("entropy_code_bits must be a positive whole number of bits")
        report = cls(
            **ints,
            fc_ratio=ints["fc_float_bits"] / max(1, ints["fc_bits"]),
            model_ratio=ints["model_float_bits"] / max(1, ints["model_bits"]),
            entropy_code_bits=entropy_code_bits,
            mask_bits=mask_bits,
        )
        consistent = (
            report.fc_bits == report.code_bits + report.codebook_bits + report.scale_bits + report.mask_bits
            and report.model_bits == report.fc_bits + report.rest_bits
            and report.model_float_bits == report.fc_float_bits + report.rest_bits
            and report.fc_bits > 0
            and abs(report.fc_ratio - data["fc_ratio"]) <= 1e-9 * report.fc_ratio
            and abs(report.model_ratio - data["model_ratio"]) <= 1e-9 * report.model_ratio
        )
        if not consistent:
            raise ValueError("the size report does not add up")
        return report


@dataclass(frozen=True)
class LayerBits:
    """The bits of one coded weight: a row of the per-layer table."""

    name: str  # state-dict key
    shape: tuple[int, ...]  # the weight's shape
    code_bits: int
    codebook_bits: int
    scale_bits: int
    float_bits: int  # 32 * its number of weights
    mask_bits: int = 0  # pruning: the bitmap of the survivors, 1 bit a weight

    @property
    def bits(self) -> int:
        return self.code_bits + self.codebook_bits + self.scale_bits + self.mask_bits

    @property
    def ratio(self) -> float:
        return self.float_bits / self.bits


def layer_bits(name: str, shape: tuple[int, ...], cfg: CompressConfig) -> LayerBits:
    """The exact bits of one weight coded by `cfg`, as its method counts them (core/methods/): a conv
    counts as its rows of in * kh * kw values."""
    from .pq import row_shape  # here: reading a stored record (its SizeReport) imports no torch
    from .prune import coded_rows

    out, inp = row_shape(shape)
    cfg = cfg.for_layer(name)  # its own setting, in a per-layer compression (core/budget.py)
    cost = cfg.method_spec.layer_bits(coded_rows((out, inp), cfg.sparsity), cfg)  # pruned: its survivors
    mask_bits = out * inp if cfg.sparsity > 0 else 0
    return LayerBits(
        name, tuple(shape), cost.code_bits, cost.codebook_bits, cost.scale_bits, FLOAT_BITS * out * inp, mask_bits
    )


def size_report(
    fc_shapes: Sequence[tuple[int, ...]],
    n_rest: int,
    cfg: CompressConfig,
    rest_bits: int | None = None,
    names: Sequence[str] | None = None,
) -> SizeReport:
    """Bits of a model whose coded weights have `fc_shapes` ((out, in), or a conv's (out, in, kh, kw)),
    compressed by `cfg`, with `n_rest` other parameters kept in float32: the sum of `layer_bits`.
    Pure accounting: whether the setting fits the layers is `core.pq.check_fits`'s question, asked
    once by the caller. (The fields named fc_* count the coded layers: the FC layers, plus the conv
    layers when those are coded too.) `names`: the weights' state-dict keys, which a per-layer
    compression (`cfg.per_layer`) needs to tell each weight's own setting."""
    if names is None:
        if cfg.per_layer:
            raise ValueError("a per-layer compression's size needs the weights' names")
        names = [f"layer{i}" for i in range(len(fc_shapes))]
    layers = [layer_bits(name, tuple(shape), cfg) for name, shape in zip(names, fc_shapes, strict=True)]
    code_bits = sum(layer.code_bits for layer in layers)
    codebook_bits = sum(layer.codebook_bits for layer in layers)
    scale_bits = sum(layer.scale_bits for layer in layers)
    mask_bits = sum(layer.mask_bits for layer in layers)
    n_fc = sum(layer.float_bits for layer in layers) // FLOAT_BITS
    fc_bits = code_bits + codebook_bits + scale_bits + mask_bits
    if rest_bits is None:
        rest_bits = FLOAT_BITS * n_rest  # the built-in networks: everything else is float32
    model_bits = fc_bits + rest_bits
    model_float_bits = FLOAT_BITS * n_fc + rest_bits
    return SizeReport(
        code_bits=code_bits,
        codebook_bits=codebook_bits,
        scale_bits=scale_bits,
        fc_bits=fc_bits,
        fc_float_bits=FLOAT_BITS * n_fc,
        rest_bits=rest_bits,
        model_bits=model_bits,
        model_float_bits=model_float_bits,
        fc_ratio=FLOAT_BITS * n_fc / fc_bits,
        model_ratio=model_float_bits / model_bits,
        mask_bits=mask_bits,
    )
