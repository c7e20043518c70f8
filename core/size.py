"""The bit accounting: one function, exact to the bit (see docs/method.md, "Size accounting").

FC ratio    = 32 * N_fc / (code bits + codebook bits + per-layer scale bits)
model ratio = 32 * N_all / (compressed FC bits + 32 * N_rest)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import CompressConfig
from .pq import n_chunks

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


def size_report(fc_shapes: list[tuple[int, int]], n_rest: int, cfg: CompressConfig) -> SizeReport:
    """Bits of a model whose FC weight matrices have `fc_shapes` (out, in), compressed by `cfg`,
    with `n_rest` other parameters kept in float32. Pure accounting: whether the setting fits the
    layers is `core.pq.check_fits`'s question, asked once by the caller."""
    n_fc = sum(out * inp for out, inp in fc_shapes)
    code_bits = codebook_bits = scale_bits = 0
    if cfg.method == "float":
        code_bits = FLOAT_BITS * n_fc
    elif cfg.method == "binarize":
        code_bits = n_fc  # one sign bit a weight
        scale_bits = cfg.centroid_bits * len(fc_shapes)  # alpha_l
    else:
        dim, k = cfg.subvector_size, cfg.n_centroids
        for out, inp in fc_shapes:
            chunks = n_chunks(inp, dim)
            code_bits += out * chunks * code_width(k)
            n_codebooks = chunks if cfg.layout == "per-chunk" else 1
            codebook_bits += n_codebooks * k * dim * cfg.centroid_bits
    fc_bits = code_bits + codebook_bits + scale_bits
    rest_bits = FLOAT_BITS * n_rest
    model_bits = fc_bits + rest_bits
    model_float_bits = FLOAT_BITS * (n_fc + n_rest)
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
