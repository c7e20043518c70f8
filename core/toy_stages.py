"""The three stages of Deep Compression (prune, quantize, entropy-code) on a toy weight, and the size
ledger of any compression read stage by stage: the Learn page's walkthrough (no streamlit here).

The toy is a seeded 64 x 64 weight matrix, dataset-free, and every number it shows comes from the
code path a real compression takes: `core.prune.magnitude_mask` prunes it and `core.methods.
quantize_model` codes the survivors (k-means, or PQ for d > 1); the file writer of `core.export`
stores the codes and the mask (entropy-coding each only where that is smaller) and
`core.export.stored_code_bits` counts what it stored, exactly as `core.compress.compress_run` does;
`core.size.size_report` is the ledger. `core.entropy` codes the mask and the codes for the side by
side (packed, rANS-coded, and the entropy bound n * H(p)).

`stage_ledger` reads a SizeReport (the toy's, or a stored CompressionRecord's) as the cumulative
stages: float32, after pruning (the survivors still in float32, plus the bitmap), after
quantization (codes + codebooks + bitmap: the ledger's fc_bits), after entropy coding (the codes
and masks as stored: the ledger's entropy line).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import entropy
from .config import CompressConfig
from .export import stored_code_bits
from .filewriter import add_coded  # the writer itself: the toy stores what a file would
from .methods import quantize_model
from .pq import check_fits, n_chunks
from .prune import n_kept
from .size import FLOAT_BITS, SizeReport, code_width, size_report

TOY_SHAPE = (64, 64)  # (out, in): 4,096 weights, coded in milliseconds
TOY_LAYER = "toy.weight"
DISTRIBUTIONS = ("laplace", "gaussian", "two wells")
TOY_SCALE = 0.05  # the weights' spread, about that of a trained FC layer's


def toy_weight(distribution: str = "laplace", seed: int = 0) -> torch.Tensor:
    """A seeded (64, 64) weight matrix. laplace: peaked at zero with heavy tails, like a trained layer;
    gaussian: the usual init; two wells: +/- alpha with a little spread, what the binarizing term leaves."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r} is not one of {', '.join(DISTRIBUTIONS)}")
    generator = torch.Generator().manual_seed(seed)
    if distribution == "laplace":
        uniform = torch.rand(TOY_SHAPE, generator=generator) - 0.5  # inverse CDF of the Laplace
        return -TOY_SCALE * torch.sign(uniform) * torch.log1p(-2 * uniform.abs())
    normal = torch.randn(TOY_SHAPE, generator=generator)  # (out, in)
    if distribution == "gaussian":
        return TOY_SCALE * normal
    signs = torch.where(torch.rand(TOY_SHAPE, generator=generator) < 0.5, -1.0, 1.0)
    return TOY_SCALE * (signs + 0.15 * normal)


def toy_config(sparsity: float, subvector_size: int, n_centroids: int, seed: int = 0) -> CompressConfig:
    """The compression the toy runs: k-means (d = 1) or PQ with one shared codebook, entropy-coded."""
    return CompressConfig(
        method="pq",  # d = 1 with the shared layout is k-means: the config says so itself
        subvector_size=subvector_size,
        n_centroids=n_centroids,
        layout="shared",
        sparsity=sparsity,
        entropy="ans",
        seed=seed,
    )


def toy_subvectors(sparsity: float, subvector_size: int) -> int:
    """Subvectors the toy's survivors make (read as one row): past this k, every one is its own centroid."""
    return n_chunks(n_kept(math.prod(TOY_SHAPE), sparsity), subvector_size)


@dataclass(frozen=True)
class SymbolCost:
    """What n symbols in [0, k) (a layer's codes, or its mask with k = 2) cost in each form."""

    n_symbols: int
    alphabet: int  # k
    packed_bits: int  # n * ceil(log2 k): bit-packed (for the mask: the bitmap)
    ans_bits: int  # core.entropy's rANS stream and its frequency table, every bit
    table_bits: int  # of which the frequency table (32 bits a symbol of the alphabet)
    entropy_bound_bits: float  # n * H(p), the empirical entropy: what an ideal coder needs, table aside
    stored: str  # what the file writer kept: "ans" or "packed" (whichever is smaller)

    @property
    def stored_bits(self) -> int:
        return self.ans_bits if self.stored == "ans" else self.packed_bits

    @property
    def bits_per_symbol(self) -> float:
        """H(p) in bits a symbol."""
        return self.entropy_bound_bits / self.n_symbols


def symbol_cost(symbols: np.ndarray, alphabet: int, width: int, stored: str) -> SymbolCost:
    """The costs of `symbols` (any shape) packed at `width` bits, and rANS-coded by core.entropy."""
    coded = entropy.encode(symbols, alphabet)
    n = int(symbols.size)
    return SymbolCost(
        n_symbols=n,
        alphabet=alphabet,
        packed_bits=n * width,
        ans_bits=coded.bits,
        table_bits=entropy.COUNT_BITS * len(coded.counts),
        entropy_bound_bits=n * entropy.entropy_bits_per_code(symbols, alphabet),
        stored=stored,
    )


@dataclass(frozen=True)
class LedgerStage:
    """One line of the stage-by-stage ledger: the coded layers' bits once this stage is applied."""

    stage: str
    value_bits: int  # the weights' values: float32 survivors, or their codes (as stored at the last stage)
    mask_bits: int | None  # the survivors' mask (bitmap, or as stored); None: counted inside value_bits
    table_bits: int  # codebooks and scales
    fc_float_bits: int  # the coded layers in float32
    rest_bits: int  # everything left in float32 (biases, uncoded convs)

    @property
    def fc_bits(self) -> int:
        return self.value_bits + (self.mask_bits or 0) + self.table_bits

    @property
    def fc_ratio(self) -> float:
        return self.fc_float_bits / self.fc_bits

    @property
    def model_ratio(self) -> float:
        return (self.fc_float_bits + self.rest_bits) / (self.fc_bits + self.rest_bits)


def stage_ledger(
    size: SizeReport, n_kept_weights: int | None = None, stored_mask_bits: int | None = None
) -> list[LedgerStage]:
    """The ledger of `size` stage by stage. `n_kept_weights`: the survivors of every coded layer, for
    the line after pruning (a pruned ledger without it skips that line: the SizeReport alone does not
    hold it). `stored_mask_bits`: the masks as stored, to split the entropy line (its codes and masks
    are one field of the SizeReport)."""
    common = dict(fc_float_bits=size.fc_float_bits, rest_bits=size.rest_bits)
    stages = [LedgerStage("float32", size.fc_float_bits, 0, 0, **common)]
    pruned = size.mask_bits > 0
    if pruned and n_kept_weights is not None:
        stages.append(LedgerStage("pruned", FLOAT_BITS * n_kept_weights, size.mask_bits, 0, **common))
    tables = size.codebook_bits + size.scale_bits
    stages.append(LedgerStage("quantized", size.code_bits, size.mask_bits, tables, **common))
    if size.entropy_code_bits is not None:
        if stored_mask_bits is None:
            stages.append(LedgerStage("entropy-coded", size.entropy_code_bits, None if pruned else 0, tables, **common))
        else:
            codes = size.entropy_code_bits - stored_mask_bits
            stages.append(LedgerStage("entropy-coded", codes, stored_mask_bits, tables, **common))
    return stages


def kept_weights(shapes: Sequence[tuple[int, ...]], sparsity: float) -> int:
    """The survivors of weights of these shapes at this sparsity, each layer pruned on its own."""
    return sum(n_kept(math.prod(shape), sparsity) for shape in shapes)


@dataclass(frozen=True)
class StagesToy:
    """The toy after each stage, with the numbers the Learn page shows."""

    config: CompressConfig
    kept: list[float]  # the surviving weights' float values
    pruned: list[float]  # the pruned weights' float values (stored as exact zeros)
    centroids: list[list[float]]  # (k, d) the shared codebook
    code_counts: list[int]  # (k,) how often each code occurs
    mask: SymbolCost | None  # None without pruning
    codes: SymbolCost
    size: SizeReport  # the ledger, with its entropy-coded line measured on what the writer stored
    stages: list[LedgerStage]
    mse: float  # mean squared error of the decoded weight (pruned ones included) against the float one


def stages_toy(
    sparsity: float, subvector_size: int, n_centroids: int, distribution: str = "laplace", seed: int = 0
) -> StagesToy:
    """Prune, quantize and entropy-code the toy weight as a compression would; ValueError (one line)
    for a setting that is not valid or does not fit the toy."""
    cfg = toy_config(sparsity, subvector_size, n_centroids, seed)
    check_fits([(TOY_LAYER, TOY_SHAPE)], cfg)
    weight = toy_weight(distribution, seed)  # (64, 64)
    (layer,) = quantize_model(torch.nn.Module(), cfg, [(TOY_LAYER, weight)])
    tensors: dict[str, torch.Tensor] = {}
    (info,) = add_coded(tensors, [layer], cfg)
    size = size_report([TOY_SHAPE], 0, cfg)
    size = dataclasses.replace(size, entropy_code_bits=stored_code_bits(tensors, {"layers": [info]}))
    k = layer.n_centroids
    codes = symbol_cost(layer.codes.numpy(), k, code_width(k), "ans" if info["entropy"] == "ans" else "packed")
    mask = None
    if layer.mask is not None:
        survives = layer.mask.flatten().long().numpy()
        mask = symbol_cost(survives, 2, 1, "ans" if info["mask"] == "ans" else "packed")
    kept = n_kept(weight.numel(), sparsity)
    flat_mask = layer.mask.flatten() if layer.mask is not None else torch.ones(weight.numel(), dtype=torch.bool)
    return StagesToy(
        config=cfg,
        kept=weight.flatten()[flat_mask].tolist(),
        pruned=weight.flatten()[~flat_mask].tolist(),
        centroids=layer.codebooks[0].tolist(),
        code_counts=entropy.code_counts(layer.codes.numpy(), k).tolist(),
        mask=mask,
        codes=codes,
        size=size,
        stages=stage_ledger(size, kept, mask.stored_bits if mask is not None else None),
        mse=float(((layer.decode() - weight) ** 2).mean()),
    )
