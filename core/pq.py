"""Product quantization of weight matrices (FC, and conv weights flattened to (out, in*kh*kw)): k-means,
encode / decode, quantize a layer.

Everything is batched over *groups*: a group is one codebook and the subvectors it codes.
The `shared` layout has one group per layer; `per-chunk` has one group per chunk position
(Jegou 2011 / Gong 2014). One k-means implementation serves both, and scalar k-means is d = 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .prune import coded_rows

if TYPE_CHECKING:
    from .config import CompressConfig  # config imports the methods, which import this module

# k-means++ makes k sequential passes over the data; above this k it is slower than the whole
# Lloyd loop, and random init (faiss's choice) is used instead.
KMEANS_PP_MAX_K = 1024
# k-means++ seeds from at most this many points a centroid (16: 2.2x faiss's time on the shared
# 300x784 layer, against 2.5x at 64, with the MSE still below faiss's)
KMEANS_PP_SAMPLE_PER_CENTROID = 16
# Elements of one (groups, rows, k) distance block in `nearest`: big enough to amortize the start of
# each multi-threaded op over it, small enough to stay near the cache (interleaved probes on 2 cores:
# 2^20-2^21 1.3x faster than 2^18 and 2^22) and to bound memory at k = 65,536.
_DIST_BLOCK = 1 << 20
DIST_BLOCK = _DIST_BLOCK  # public: the cost model (core/methods/pq.py) counts passes in blocks
_SMALL_BLOCK = 1 << 15  # below this many distances, plain argmin (fewer ops) beats `_first_argmin`


def row_shape(shape: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """(out, ...) -> (out, product of the rest): a conv's filters as the rows PQ cuts."""
    return int(shape[0]), int(math.prod(shape[1:]))


def as_rows(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) or (out, in, kh, kw) -> (out, in * kh * kw), each output filter flattened in that order."""
    return weight.reshape(weight.shape[0], -1)


def n_chunks(in_features: int, subvector_size: int) -> int:
    return math.ceil(in_features / subvector_size)


def to_subvectors(weight: torch.Tensor, subvector_size: int) -> torch.Tensor:
    """(out, in) -> (out, ceil(in / d), d); the last chunk of each row is zero-padded."""
    out_features, in_features = weight.shape
    pad = n_chunks(in_features, subvector_size) * subvector_size - in_features
    padded = torch.nn.functional.pad(weight, (0, pad))  # (out, in + pad)
    return padded.reshape(out_features, -1, subvector_size)


def from_subvectors(subvectors: torch.Tensor, in_features: int) -> torch.Tensor:
    """(out, n_chunks, d) -> (out, in); drops the padding."""
    out_features = subvectors.shape[0]
    return subvectors.reshape(out_features, -1)[:, :in_features]


def to_groups(subvectors: torch.Tensor, layout: str) -> torch.Tensor:
    """(out, n_chunks, d) -> (G, N, d): shared (1, out * n_chunks, d), per-chunk (n_chunks, out, d)."""
    if layout == "shared":
        return subvectors.reshape(1, -1, subvectors.shape[-1])
    return subvectors.transpose(0, 1)


def from_groups(grouped: torch.Tensor, layout: str, out_features: int) -> torch.Tensor:
    """(G, N, d) -> (out, n_chunks, d), the inverse of `to_groups`."""
    if layout == "shared":
        return grouped.reshape(out_features, -1, grouped.shape[-1])
    return grouped.transpose(0, 1)


# ----------------------------------------------------------------------------------------- k-means


def assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every subvector: (G, N, d), (G, k, d) -> codes (G, N), sq. errors (G, N)."""
    codes = nearest(x, centroids)
    return codes, code_errors(x, centroids, codes)


def augment(x: torch.Tensor) -> torch.Tensor:
    """(G, N, d) -> (G, N, d + 1): each subvector with a trailing 1, as `nearest` multiplies it."""
    return torch.cat([x, torch.ones_like(x[..., :1])], -1)


def nearest(x: torch.Tensor, centroids: torch.Tensor, x_aug: torch.Tensor | None = None) -> torch.Tensor:
    """Codes only: the nearest centroid of every subvector, (G, N, d), (G, k, d) -> (G, N).

    ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the ||x||^2 term does not change the argmin, so it is
    left out, and the rest is one product: [x, 1] . [-2c, ||c||^2] (no pass to broadcast ||c||^2 into
    the block first). Works in blocks of groups (or of rows, when one group is too big) so that each
    (groups, rows, k) distance block stays small enough to live in the cache (one buffer, reused).
    `x_aug`: `augment(x)`, when the caller has it (k-means computes it once for all its iterations).
    """
    n_groups, n_points, _ = x.shape
    k = centroids.shape[1]
    if x.shape[-1] == 1:
        return _assign_scalar(x, centroids)[0]
    per_group = n_points * k
    group_step = max(1, _DIST_BLOCK // per_group)
    row_step = n_points if per_group <= _DIST_BLOCK else max(1, _DIST_BLOCK // k)
    c_sq = (centroids * centroids).sum(-1, keepdim=True)  # (G, k, 1)
    # (G, d + 1, k), contiguous: bmm is ~3x faster
    c_aug = torch.cat([centroids * -2, c_sq], -1).transpose(1, 2).contiguous()
    x_aug = augment(x) if x_aug is None else x_aug  # (G, N, d + 1)
    codes = torch.empty(n_groups, n_points, dtype=torch.long, device=x.device)
    index = torch.arange(k, dtype=x.dtype, device=x.device)
    buffer = torch.empty(min(group_step, n_groups) * min(row_step, n_points) * k, dtype=x.dtype, device=x.device)
    for g0 in range(0, n_groups, group_step):
        groups = slice(g0, g0 + group_step)
        for r0 in range(0, n_points, row_step):
            rows = slice(r0, r0 + row_step)
            part = x_aug[groups, rows]  # (g, r, d + 1)
            partial = buffer[: part.shape[0] * part.shape[1] * k].view(part.shape[0], part.shape[1], k)
            torch.bmm(part, c_aug[groups], out=partial)  # (g, r, k): ||c||^2 - 2 x.c
            codes[groups, rows] = _first_argmin(partial, index)
    return codes


def _first_argmin(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`values.argmin(-1)` (the first minimum on ties), exactly, overwriting `values`.

    On the CPU, torch's argmin over a short last dimension runs row by row, unvectorized; `amin` is
    vectorized. So: m = the row minimum; sign(v - m) is 0 exactly where v == m (IEEE subtraction), 1
    elsewhere; the first minimum is the smallest of sign * k + position (1.8x faster for k = 256).
    """
    if values.device.type != "cpu" or values.numel() < _SMALL_BLOCK:
        return values.argmin(-1)  # on small blocks the fewer ops win
    low = values.amin(-1, keepdim=True)
    steps = values.sub_(low).sign_()  # 0 where minimal, 1 elsewhere
    keyed = torch.addcmul(
        index, steps, index.new_full((), float(values.shape[-1])), out=steps
    )  # k + position elsewhere
    return keyed.amin(-1).long()


def code_errors(x: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Squared error of every subvector against its centroid: (G, N)."""
    chosen = torch.gather(centroids, 1, codes.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (G, N, d)
    return ((x - chosen) ** 2).sum(-1)


def _assign_scalar(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`assign` for d = 1 in O(N log k): sort the centroids, binary-search the midpoints."""
    values = x.squeeze(-1)  # (G, N)
    sorted_c, order = centroids.squeeze(-1).sort(dim=1)  # (G, k)
    midpoints = (sorted_c[:, 1:] + sorted_c[:, :-1]) / 2  # (G, k - 1)
    rank = torch.searchsorted(midpoints.contiguous(), values.contiguous())  # (G, N)
    codes = torch.gather(order, 1, rank)
    errors = (values - torch.gather(sorted_c, 1, rank)) ** 2
    return codes, errors


def _init_random(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k distinct random subvectors of each group as the first centroids: (G, N, d) -> (G, k, d)."""
    n_groups, n_points, _ = x.shape
    keys = torch.rand(n_groups, n_points, generator=generator, device=x.device)
    picks = keys.argsort(dim=1)[:, :k]  # (G, k)
    return torch.gather(x, 1, picks.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _init_kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ (D^2 sampling), batched over groups: (G, N, d) -> (G, k, d).

    Each pick inverts the cumulative D^2 of its group at a uniform draw (one cumsum and one
    searchsorted for all groups; 2x faster than torch.multinomial here), and the new centroid's
    distances come from one fused multiply-add (||x||^2 precomputed). k sequential steps of six
    small ops each: the per-step overhead is the cost on small layers. Once every point of a group
    coincides with a chosen centroid (D^2 == 0 everywhere: fewer distinct subvectors than k) the
    search lands past the end and the last point is picked: it duplicates an existing centroid and
    the coding is already lossless.
    """
    n_groups, n_points, dim = x.shape
    first = torch.randint(n_points, (n_groups, 1), generator=generator, device=x.device)
    draws = torch.rand(n_groups, k, 1, generator=generator, device=x.device, dtype=x.dtype)
    if n_groups * n_points * n_points <= _PAIRWISE_MAX:
        return _kmeans_pp_pairwise(x, k, first, draws)
    centroids = torch.empty(n_groups, k, dim, dtype=x.dtype, device=x.device)
    centroids[:, :1] = torch.gather(x, 1, first.unsqueeze(-1).expand(-1, -1, dim))
    x_sq = (x * x).sum(-1, keepdim=True)  # (G, N, 1)
    min_dist = ((x - centroids[:, :1]) ** 2).sum(-1)  # (G, N)
    cdf = torch.empty_like(min_dist)
    dist = torch.empty(n_groups, n_points, 1, dtype=x.dtype, device=x.device)
    for j in range(1, k):
        torch.cumsum(min_dist, 1, out=cdf)
        # right: the first point whose cumulative D^2 exceeds the draw, never a zero-D^2 point
        picks = torch.searchsorted(cdf, draws[:, j] * cdf[:, -1:], right=True).clamp_max_(n_points - 1)  # (G, 1)
        chosen = torch.gather(x, 1, picks.unsqueeze(-1).expand(-1, -1, dim))  # (G, 1, d)
        centroids[:, j : j + 1] = chosen
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2
        torch.baddbmm(x_sq + (chosen * chosen).sum(-1, keepdim=True), x, chosen.transpose(1, 2), alpha=-2, out=dist)
        torch.minimum(min_dist, dist.squeeze(-1).clamp_min_(0), out=min_dist)
    return centroids


# Groups * points^2 up to which k-means++ precomputes every pairwise distance (16 MB of float32):
# each of its k sequential steps is then a row lookup, not a distance computation.
_PAIRWISE_MAX = 1 << 22


def _kmeans_pp_pairwise(x: torch.Tensor, k: int, first: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """`_init_kmeans_pp` on small groups, from the (G, N, N) squared distances: the same picks."""
    _, n_points, dim = x.shape
    x_sq = (x * x).sum(-1)  # (G, N)
    pairwise = torch.baddbmm(x_sq.unsqueeze(2) + x_sq.unsqueeze(1), x, x.transpose(1, 2), alpha=-2).clamp_min_(0)
    picks = [first]
    min_dist = torch.gather(pairwise, 1, first.unsqueeze(-1).expand(-1, -1, n_points)).squeeze(1)  # (G, N)
    cdf = torch.empty_like(min_dist)
    scaled = torch.empty_like(min_dist[:, :1])
    for j in range(1, k):
        torch.cumsum(min_dist, 1, out=cdf)
        torch.mul(draws[:, j], cdf[:, -1:], out=scaled)
        pick = torch.searchsorted(cdf, scaled, right=True).clamp_max_(n_points - 1)  # (G, 1)
        picks.append(pick)
        torch.minimum(
            min_dist, torch.gather(pairwise, 1, pick.unsqueeze(-1).expand(-1, -1, n_points))[:, 0], out=min_dist
        )
    index = torch.cat(picks, 1)  # (G, k)
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, dim))


def _reseed_empty(centroids: torch.Tensor, counts: torch.Tensor, x: torch.Tensor, errors: torch.Tensor) -> None:
    """Move each empty centroid onto one of the worst-coded subvectors of its group (in place).

    Only subvectors with a positive error are used: when none is left, the group is coded
    exactly and a duplicate, never-chosen centroid costs nothing.
    """
    for group in torch.nonzero((counts == 0).any(1)).flatten().tolist():
        empty = torch.nonzero(counts[group] == 0).flatten()
        worst_err, worst = errors[group].topk(min(len(empty), errors.shape[1]))
        worst = worst[worst_err > 0]
        centroids[group, empty[: len(worst)]] = x[group, worst]


def kmeans(
    x: torch.Tensor, n_centroids: int, n_iter: int = 20, seed: int = 0, init: str = "kmeans++"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on each group: (G, N, d) -> centroids (G, k, d), codes (G, N).

    With N <= k every subvector is its own centroid (lossless), padded with copies of the
    first one up to k so that every group has exactly k centroids.
    """
    n_groups, n_points, dim = x.shape
    k = n_centroids
    x = x.contiguous()  # per-chunk groups are a transposed view; every pass below reads x
    generator = torch.Generator(device=x.device).manual_seed(seed)
    if n_points <= k:
        pad = x[:, :1].expand(-1, k - n_points, -1)
        centroids = torch.cat([x, pad], dim=1).clone()
        codes = torch.arange(n_points, device=x.device).expand(n_groups, -1).clone()
        return centroids, codes
    if init == "kmeans++" and k <= KMEANS_PP_MAX_K:
        # Seeding on a sample keeps k sequential passes cheap; Lloyd then uses every point.
        sample = x
        if n_points > KMEANS_PP_SAMPLE_PER_CENTROID * k:
            picks = torch.randperm(n_points, generator=generator, device=x.device)
            sample = x[:, picks[: KMEANS_PP_SAMPLE_PER_CENTROID * k]]
        centroids = _init_kmeans_pp(sample, k, generator)
    else:
        centroids = _init_random(x, k, generator)
    offsets = (torch.arange(n_groups, device=x.device) * k).unsqueeze(1)  # (G, 1)
    previous = None  # the codes the centroids were computed from, when none was reseeded
    x_aug = augment(x) if dim > 1 else None
    for _ in range(n_iter):
        codes = nearest(x, centroids, x_aug)
        if previous is not None and torch.equal(codes, previous):
            # converged: another update would recompute the very same centroids, exactly
            return centroids, codes
        flat = (codes + offsets).flatten()  # index into the (G * k) centroids
        sums = torch.zeros(n_groups * k, dim, dtype=x.dtype, device=x.device)
        sums.index_add_(0, flat, x.reshape(-1, dim))
        counts = torch.bincount(flat, minlength=n_groups * k).reshape(n_groups, k)
        filled = counts > 0
        means = sums.reshape(n_groups, k, dim) / counts.clamp_min(1).unsqueeze(-1)
        centroids = torch.where(filled.unsqueeze(-1), means, centroids)
        if filled.all():
            previous = codes
        else:
            _reseed_empty(centroids, counts, x, code_errors(x, centroids, codes))
            previous = None
    return centroids, nearest(x, centroids, x_aug)


# ----------------------------------------------------------------------------- quantized layers


@dataclass
class QuantizedLayer:
    """One weight as codes into codebooks: an nn.Linear's (out, in) matrix, or an nn.Conv2d's
    (out, in, kh, kw) filters, each output filter flattened to its in * kh * kw values in that order
    (`as_rows`), so that with d = kh * kw a subvector is one input channel's kernel (Stock et al. 2019).

    layout is 'shared' or 'per-chunk' (PQ, scalar k-means when d = 1) or 'sign' (binarization:
    codes are the signs, the codebook is [-alpha, +alpha] and only alpha is stored).

    With several `stages` (residual quantization) the codebooks and codes of the stages are stacked,
    stage by stage: codebooks (stages * G, k, d), codes (stages * G, N); the weight is their sum.
    """

    name: str  # state-dict key of the weight, e.g. 'fcs.0.weight'
    shape: tuple[int, ...]  # the weight's own shape: (out, in) or (out, in, kh, kw)
    subvector_size: int  # d
    layout: str  # 'shared' | 'per-chunk' | 'sign'
    codebooks: torch.Tensor  # (stages * G, k, d)
    codes: torch.Tensor  # (stages * G, N) int64, G * N = out * ceil(in / d)
    stages: int = 1  # codebooks whose centroids add up to each subvector (residual quantization)
    # pruning (core/prune.py): True where a weight survives, of the weight's shape; the codes then code
    # the survivors only, row-major as one (1, n_kept) matrix, and the pruned weights decode to exact zeros
    mask: torch.Tensor | None = None

    @property
    def n_centroids(self) -> int:
        return self.codebooks.shape[1]

    @property
    def rows(self) -> tuple[int, int]:
        """(out, in * kh * kw): the weight as the matrix that is cut into subvectors (pruned: the
        survivors as one row, (1, n_kept))."""
        if self.mask is not None:
            return (1, int(self.mask.sum()))
        return row_shape(self.shape)

    def decode(self, codebooks: torch.Tensor | None = None) -> torch.Tensor:
        """(G, N) codes -> the weight in its own shape; pass `codebooks` to decode through trainable ones."""
        books = self.codebooks if codebooks is None else codebooks
        dim = books.shape[-1]
        index = self.codes.unsqueeze(-1).expand(-1, -1, dim)  # (stages * G, N, d)
        grouped = torch.gather(books, 1, index)  # (stages * G, N, d)
        if self.stages > 1:  # the stages' centroids add up, in stage order
            staged = grouped.reshape(self.stages, -1, *grouped.shape[1:])
            grouped = staged[0]
            for stage in staged[1:]:
                grouped = grouped + stage
        out_features, in_features = self.rows
        matrix = from_subvectors(from_groups(grouped, self._group_layout, out_features), in_features)
        if self.mask is not None:  # (1, n_kept) survivors -> their places; the pruned stay exact zeros
            mask = self.mask.to(matrix.device)
            return torch.zeros(self.shape, dtype=matrix.dtype, device=matrix.device).masked_scatter(mask, matrix)
        return matrix.reshape(self.shape)  # (out, in) -> the weight's shape

    @property
    def _group_layout(self) -> str:
        return "shared" if self.layout == "sign" else self.layout


class DoesNotFit(ValueError):
    """A compression setting that the network's layers cannot take (d too wide, k too many)."""


def check_fits(fc_shapes: Sequence[tuple[str, tuple[int, ...]]], cfg: CompressConfig) -> None:
    """Raise DoesNotFit when `cfg` does not fit every layer (a conv counts as its rows of in * kh * kw
    values): the method says, and its message names the layer whose limit it states and what would fit.
    A per-layer compression (`cfg.per_layer`) asks each weight's own setting, and refuses a setting
    that names no weight here."""
    if cfg.per_layer:
        cfg.check_layer_names([name for name, _ in fc_shapes])
        for name, shape in fc_shapes:
            check_fits([(name, shape)], cfg.for_layer(name))
        return
    if fc_shapes and cfg.sparsity > 0:  # the method codes each layer's survivors, as one row
        fc_shapes = [(name, coded_rows(row_shape(shape), cfg.sparsity)) for name, shape in fc_shapes]
    if fc_shapes:
        cfg.method_spec.check_fits(list(fc_shapes), cfg)


def check_codebooks_fit(fc_shapes: Sequence[tuple[str, tuple[int, ...]]], dim: int, k: int, layout: str) -> None:
    """DoesNotFit unless subvectors of `dim` fit every layer and, per-chunk, k centroids fit its rows."""
    rows = [(name, row_shape(shape)) for name, shape in fc_shapes]
    narrowest, (_, narrowest_in) = min(rows, key=lambda entry: entry[1][1])
    if dim > narrowest_in:
        raise DoesNotFit(
            f"subvector size d={dim} is wider than layer {narrowest}, which has {narrowest_in} "
            f"inputs; use d <= {narrowest_in}"
        )
    fewest, (fewest_out, _) = min(rows, key=lambda entry: entry[1][0])
    if layout == "per-chunk" and k > fewest_out:
        raise DoesNotFit(
            f"the per-chunk layout learns each codebook from the rows of a layer, and layer {fewest} has "
            f"{fewest_out} rows, so k={k} is too many; use k <= {fewest_out} or the shared layout"
        )


def quantize_weight(
    name: str, weight: torch.Tensor, cfg: CompressConfig, moments: torch.Tensor | None = None
) -> QuantizedLayer:
    """k-means / PQ of one weight ((out, in), or a conv's (out, in, kh, kw) as its rows) with the
    settings of `cfg` (method kmeans or pq). With `cfg.weighting == "activations"`, `moments` are the
    layer's input second moments per chunk (C, d, d) (`core.calibration.input_moments`), and the
    k-means that follows plain k-means minimizes the layer's output error instead (`weighted_kmeans`)."""
    dim = cfg.subvector_size
    matrix = as_rows(weight.detach().float())  # (out, in * kh * kw)
    subvectors = to_subvectors(matrix, dim)  # (out, C, d)
    grouped = to_groups(subvectors, cfg.layout)  # (G, N, d)
    centroids, codes = kmeans(grouped, cfg.n_centroids, cfg.kmeans_iters, cfg.seed, cfg.init)
    if cfg.weighting == "activations":
        if moments is None:
            raise ValueError(f"weighting='activations' needs the input statistics of layer {name}")
        centroids, codes = weighted_kmeans(subvectors, moments, cfg.layout, centroids, cfg.kmeans_iters)
    if cfg.centroid_bits == 16:
        # Store what the file will hold; re-assign so codes match the rounded centroids.
        centroids = centroids.half().float()
        if cfg.weighting == "activations":
            assert moments is not None
            codes = _weighted_assign(_Metric(subvectors, moments, cfg.layout), centroids)
        else:
            codes = nearest(grouped, centroids)
    return QuantizedLayer(name, tuple(weight.shape), dim, cfg.layout, centroids, codes)


# ------------------------------------------------------------------- activation-aware k-means

# Damping of the input moments, relative to their mean diagonal: an input that never varies (a
# border pixel) leaves its weights free for the output error; the damping still pulls them toward
# the plain k-means answer and keeps every centroid update a well-posed linear solve.
MOMENT_DAMPING = 1e-3


@dataclass
class _Metric:
    """The output-error metric of one layer: subvectors (out, C, d) and per-chunk input moments
    (C, d, d); point (o, c) costs (w - q)^T S_c (w - q) against centroid q."""

    subvectors: torch.Tensor
    moments: torch.Tensor
    layout: str

    def __post_init__(self) -> None:
        diag = self.moments.diagonal(dim1=1, dim2=2)
        damping = MOMENT_DAMPING * float(diag.mean().clamp_min(1e-12))
        eye = torch.eye(self.moments.shape[-1], dtype=self.moments.dtype, device=self.moments.device)
        self.moments = self.moments + damping * eye  # (C, d, d)
        # S_c w for every point: fixed across iterations, so computed once. (out, C, d)
        self.weighted = torch.einsum("ocd,cde->oce", self.subvectors, self.moments)

    def grouped(self, tensor: torch.Tensor) -> torch.Tensor:
        """(out, C, ...) -> (G, N, ...) in the layout's group order."""
        if self.layout == "shared":
            return tensor.reshape(1, -1, *tensor.shape[2:])
        return tensor.transpose(0, 1)


def _weighted_assign(metric: _Metric, centroids: torch.Tensor) -> torch.Tensor:
    """Codes (G, N) minimizing q^T S_c q - 2 (S_c w)^T q (the output error, less a constant per point)."""
    out_features, n_chunks_, _ = metric.subvectors.shape
    if metric.layout == "shared":
        book = centroids[0]  # (k, d)
        quad = torch.einsum("kd,cde,ke->ck", book, metric.moments, book)  # (C, k)
        codes = torch.empty(out_features, n_chunks_, dtype=torch.long, device=book.device)
        step = max(1, _DIST_BLOCK // max(1, n_chunks_ * book.shape[0]))
        for r0 in range(0, out_features, step):
            part = metric.weighted[r0 : r0 + step]  # (r, C, d)
            scores = torch.matmul(part, book.T).mul_(-2).add_(quad)  # (r, C, k)
            codes[r0 : r0 + step] = scores.argmin(-1)
        return codes.reshape(1, -1)
    quad = torch.einsum("ckd,cde,cke->ck", centroids, metric.moments, centroids)  # (C, k)
    weighted = metric.weighted.transpose(0, 1)  # (C, out, d)
    scores = torch.baddbmm(quad.unsqueeze(1), weighted, centroids.transpose(1, 2), alpha=-2)  # (C, out, k)
    return scores.argmin(-1)


def weighted_kmeans(
    subvectors: torch.Tensor,
    moments: torch.Tensor,
    layout: str,
    centroids: torch.Tensor,
    n_iter: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means under a layer's output error, from starting centroids (plain k-means' answer;
    the first step assigns every point under the new metric).

    For a layer y = W x, coding subvector w (row o, chunk c) as q changes the output by (w - q)^T x_c;
    its mean square over the inputs is (w - q)^T S_c (w - q), S_c = E[x_c x_c^T] (And the Bit Goes
    Down, Stock et al. 2019). Assignment minimizes it per point; each centroid becomes the solution
    of sum S_c q = sum S_c w over its points (with one S per codebook, as in per-chunk, that is the
    plain mean). Both steps lower the (damped) output error, so the result never codes the layer
    worse for it than the start. subvectors (out, C, d), moments (C, d, d), centroids (G, k, d).
    """
    metric = _Metric(subvectors.float(), moments.float().to(subvectors.device), layout)
    n_groups, k, dim = centroids.shape
    points = metric.grouped(metric.weighted).reshape(-1, dim)  # (G * N, d): S_c w per point
    chunk = metric.grouped(
        torch.arange(subvectors.shape[1], device=subvectors.device).expand(subvectors.shape[0], -1)
    ).reshape(-1)  # (G * N,): each point's chunk
    offsets = (torch.arange(n_groups, device=subvectors.device) * k).unsqueeze(1)
    eye = torch.eye(dim, dtype=centroids.dtype, device=centroids.device)
    previous = None
    for _ in range(n_iter):
        codes = _weighted_assign(metric, centroids)
        if previous is not None and torch.equal(codes, previous):
            break
        previous = codes
        flat = (codes + offsets).reshape(-1)  # (G * N,) into the G * k centroids
        rhs = torch.zeros(n_groups * k, dim, dtype=points.dtype, device=points.device)
        rhs.index_add_(0, flat, points)
        pair_counts = torch.zeros(n_groups * k, subvectors.shape[1], dtype=points.dtype, device=points.device)
        pair_counts.index_put_((flat, chunk), torch.ones_like(flat, dtype=points.dtype), accumulate=True)
        lhs = torch.einsum("jc,cde->jde", pair_counts, metric.moments)  # (G * k, d, d)
        filled = pair_counts.sum(1) > 0
        solved = torch.linalg.solve(lhs + (~filled).to(lhs.dtype)[:, None, None] * eye, rhs)
        centroids = torch.where(filled.reshape(n_groups, k, 1), solved.reshape(n_groups, k, dim), centroids)
    else:
        codes = _weighted_assign(metric, centroids)
    return centroids, codes


def output_error(weight: torch.Tensor, decoded: torch.Tensor, inputs: torch.Tensor) -> float:
    """Mean squared change of a linear layer's outputs on `inputs` (n, in) when `weight` (out, in)
    is replaced by `decoded`: what activation-aware k-means minimizes."""
    return float(((inputs @ (weight - decoded).T) ** 2).mean())


def reconstruction_mse(weight: torch.Tensor, layer: QuantizedLayer) -> float:
    return float(((weight.detach().float() - layer.decode()) ** 2).mean())
