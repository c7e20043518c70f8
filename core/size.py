"""The bit accounting: one function, exact to the bit (see docs/method.md, "Size accounting").

FC ratio    = 32 * N_fc / (code bits + codebook bits + per-layer scale bits)
model ratio = 32 * N_all / (compressed FC bits + 32 * N_rest)
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
    code_bits: int  # packed codes of every FC layer
    codebook_bits: int  # centroids (PQ / k-means)
    scale_bits: int  # one alpha per layer (binarize)
    fc_bits: int  # code + codebook + scale bits: the compressed FC layers
    fc_float_bits: int  # 32 * N_fc: the FC layers uncompressed
    rest_bits: int  # 32 * N_rest: biases, convs, anything left in float32
    model_bits: int  # fc_bits + rest_bits
    model_float_bits: int  # 32 * (N_fc + N_rest)
    fc_ratio: float
    model_ratio: float

    def to_json(self) -> dict:
        return asdict(self)

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
        report = cls(
            **ints,
            fc_ratio=ints["fc_float_bits"] / max(1, ints["fc_bits"]),
            model_ratio=ints["model_float_bits"] / max(1, ints["model_bits"]),
        )
        consistent = (
            report.fc_bits == report.code_bits + report.codebook_bits + report.scale_bits
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

    @property
    def bits(self) -> int:
        return self.code_bits + self.codebook_bits + self.scale_bits

    @property
    def ratio(self) -> float:
        return self.float_bits / self.bits


def layer_bits(name: str, shape: tuple[int, ...], cfg: CompressConfig) -> LayerBits:
    """The exact bits of one weight coded by `cfg`, as its method counts them (core/methods/): a conv
    counts as its rows of in * kh * kw values."""
    from .pq import row_shape  # here: reading a stored record (its SizeReport) imports no torch

    out, inp = row_shape(shape)
    cost = cfg.method_spec.layer_bits((out, inp), cfg)
    return LayerBits(name, tuple(shape), cost.code_bits, cost.codebook_bits, cost.scale_bits, FLOAT_BITS * out * inp)


def size_report(
    fc_shapes: Sequence[tuple[int, ...]], n_rest: int, cfg: CompressConfig, rest_bits: int | None = None
) -> SizeReport:
    """Bits of a model whose coded weights have `fc_shapes` ((out, in), or a conv's (out, in, kh, kw)),
    compressed by `cfg`, with `n_rest` other parameters kept in float32: the sum of `layer_bits`.
    Pure accounting: whether the setting fits the layers is `core.pq.check_fits`'s question, asked
    once by the caller. (The fields named fc_* count the coded layers: the FC layers, plus the conv
    layers when those are coded too.)"""
    layers = [layer_bits(f"layer{i}", tuple(shape), cfg) for i, shape in enumerate(fc_shapes)]
    code_bits = sum(layer.code_bits for layer in layers)
    codebook_bits = sum(layer.codebook_bits for layer in layers)
    scale_bits = sum(layer.scale_bits for layer in layers)
    n_fc = sum(layer.float_bits for layer in layers) // FLOAT_BITS
    fc_bits = code_bits + codebook_bits + scale_bits
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
    )
