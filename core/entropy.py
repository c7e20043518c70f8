"""Entropy coding of a coded layer's codes: a stage after any coding method (Deep Compression's third
stage; we use rANS where it used Huffman).

A layer's codes (any method's: pq, kmeans, rq, binarize; each an integer in [0, k)) are coded by
constriction's ANS coder (`constriction.stream.stack.AnsCoder`) under one categorical model a layer:
the empirical frequencies of its own codes. The file holds, for such a layer,

    W.codes        uint8, the ANS stream (whole 32-bit words, little-endian)
    W.code_counts  int32, (k,): how often each code occurs (the model; 32 bits a count, all counted)

and the reader rebuilds the same model from the counts, decodes exactly groups x codes_per_group codes,
and checks that the stream is used up and that the decoded codes occur exactly as often as the counts
say. The writer codes a layer this way only when stream + table are smaller than the bit-packed codes
(a small layer's table can outweigh what it saves), so `entropy="ans"` is never larger than "none".
"""

from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

COUNT_BITS = 32  # width of one frequency-table entry in the file (int32)
WORD_BITS = 32  # the ANS stream is a sequence of 32-bit words


@dataclass(frozen=True)
class CodedStream:
    """One layer's codes, entropy-coded: the stream and the model (the code frequencies)."""

    stream: np.ndarray  # (words,) uint32
    counts: np.ndarray  # (k,) int64: occurrences of each code

    @property
    def bits(self) -> int:
        """Every bit the file holds for it: the stream's words and the frequency table."""
        return WORD_BITS * len(self.stream) + COUNT_BITS * len(self.counts)


def _model(counts: np.ndarray) -> constriction.stream.model.Categorical:
    """The categorical model of these counts. Leaky (perfect=False): every code keeps a non-zero
    probability, so the encoder and the decoder quantize the same floats into the same model."""
    probabilities = counts.astype(np.float64) / float(counts.sum())
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def code_counts(codes: np.ndarray, n_centroids: int) -> np.ndarray:
    """(k,) int64 occurrences of each code in `codes` (any shape, values in [0, k))."""
    return np.bincount(codes.reshape(-1), minlength=n_centroids).astype(np.int64)


def encode(codes: np.ndarray, n_centroids: int) -> CodedStream:
    """Codes in [0, k) (any shape, read row-major) -> their ANS stream and frequency table."""
    flat = codes.reshape(-1).astype(np.int32)
    counts = code_counts(flat, n_centroids)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(flat, _model(counts))  # a stack: encoded in reverse, decoded in order
    return CodedStream(coder.get_compressed().astype(np.uint32), counts)


def decode(stream: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The counts.sum() codes of a stream from `encode`, as (n,) int64; ValueError when the stream is
    not exactly that many codes distributed as `counts` says."""
    n = int(counts.sum())
    if n < 1 or int(counts.min()) < 0:
        raise ValueError("its code counts are not non-negative numbers with a positive sum")
    coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(stream, dtype=np.uint32))
    codes = np.asarray(coder.decode(_model(counts), n), dtype=np.int64)
    if not coder.is_empty():
        raise ValueError(f"its stream holds more than the {n:,} codes its counts sum to")
    if not np.array_equal(code_counts(codes, len(counts)), counts):
        raise ValueError("its stream does not decode to codes distributed as its counts say")
    return codes


def entropy_bits_per_code(codes: np.ndarray, n_centroids: int) -> float:
    """The empirical entropy of the codes, in bits a code (the bound the ANS stream approaches)."""
    counts = code_counts(codes, n_centroids)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())
