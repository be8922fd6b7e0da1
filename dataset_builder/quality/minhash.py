"""MinHash signatures of character shingles for a whole batch at once, and LSH banding.

Signatures are one-permutation MinHash (Li, Owen and Zhang 2012): each shingle is hashed once, the
top bits of its hash pick one of `num_perm` bins and the low 32 bits are its value; a bin keeps
its minimum. Classic MinHash hashes every shingle `num_perm` times, so this is about `num_perm`
times less work for an estimator as good (for sets larger than num_perm slightly better, as the
bins sample without replacement): the fraction of bins two signatures agree on estimates the
Jaccard similarity of their shingle sets. Bins a short text leaves empty are filled by
optimal densification (Shrivastava 2017): an empty bin copies the bin its fixed probe sequence
reaches first among the originally filled ones, so equal sets still get equal signatures and the
estimate stays unbiased; after 64 probes (only texts of a few shingles get there) the next filled
bin to the right is taken instead.
"""

from __future__ import annotations

import functools

import numpy as np

from dataset_builder.quality.codepoints import CodePointBatch, fmix64

SHINGLE_SIZE = 5
"""Characters per shingle."""
# 128 as datasketch's default. The estimate's standard deviation at Jaccard 0.8 is sqrt(0.8 * 0.2 / 128)
# = 0.035, small against the gap between near duplicates and merely related paragraphs; 256 would cut
# it to 0.025 for twice the signature memory (1 KB per kept document) and a fifth less speed, and on
# the law corpus found 0.6% more of datasketch's duplicates.
DEFAULT_NUM_PERM = 128
"""Signature length (bins)."""

_EMPTY = np.uint32(0xFFFFFFFF)
_PROBE_ROUNDS = 64
_PROBE_SEED = 0x5EED_C1A7A
_POLY = np.uint64(0x100000001B3)


def shingle_text(text: str) -> str:
    """The text shingles are taken from: lowercased, whitespace runs as one space, ends trimmed."""
    return " ".join(text.lower().split())


def signatures(texts: list[str], num_perm: int = DEFAULT_NUM_PERM) -> np.ndarray:
    """One-permutation MinHash signatures of the texts' shingles, shape (len(texts), num_perm), a power of two."""
    # A text shorter than a shingle is one shingle, padded with NULs.
    if num_perm < 2 or num_perm & (num_perm - 1):
        raise ValueError(f"num_perm must be a power of two, got {num_perm}")
    if not texts:
        return np.empty((0, num_perm), dtype=np.uint32)
    prepared = [shingle_text(text).ljust(SHINGLE_SIZE, "\0") for text in texts]
    batch = CodePointBatch.encode(prepared)
    hashes, owners = _shingle_hashes(batch)
    # The top bits pick the bin, the low 32 bits (what the cast keeps) are the value.
    slots = hashes >> np.uint64(64 - (num_perm.bit_length() - 1))
    slots += owners * np.uint64(num_perm)
    minima = np.full(len(texts) * num_perm, _EMPTY, dtype=np.uint32)
    np.minimum.at(minima, slots.astype(np.intp), hashes.astype(np.uint32))
    return _densify(minima.reshape(len(texts), num_perm))


def _shingle_hashes(batch: CodePointBatch) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hash of every shingle that lies inside one text, and the index of that text."""
    points = batch.points
    count = len(points) - SHINGLE_SIZE + 1
    hashes = points[:count].astype(np.uint64)
    for offset in range(1, SHINGLE_SIZE):
        hashes *= _POLY
        hashes += points[offset : offset + count]
    fmix64(hashes)
    # A shingle is inside its text when it starts at least SHINGLE_SIZE - 1 characters before the text ends.
    inside = np.ones(len(points), dtype=bool)
    inside[(batch.ends[:, None] - np.arange(SHINGLE_SIZE)).ravel()] = False
    owners = np.repeat(np.arange(batch.size, dtype=np.uint64), batch.lengths - SHINGLE_SIZE + 1)
    return hashes[inside[:count]], owners


@functools.cache
def _probes(num_perm: int) -> np.ndarray:
    """The fixed probe sequence of every bin: row r holds each bin's r-th probe."""
    return np.random.default_rng(_PROBE_SEED).integers(0, num_perm, size=(_PROBE_ROUNDS, num_perm))


def _densify(minima: np.ndarray) -> np.ndarray:
    """Fill every empty bin from an originally filled bin of the same signature."""
    empty = minima == _EMPTY
    rows, columns = np.nonzero(empty)
    if not len(rows):
        return minima
    filled = ~empty
    result = minima.copy()
    probes = _probes(minima.shape[1])
    for round_probes in probes:
        targets = round_probes[columns]
        hit = filled[rows, targets]
        result[rows[hit], columns[hit]] = minima[rows[hit], targets[hit]]
        rows, columns = rows[~hit], columns[~hit]
        if not len(rows):
            return result
    result[rows, columns] = minima[rows, _next_filled(filled, rows, columns)]
    return result


def _next_filled(filled: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """For each (row, column), the first filled column at or after it, wrapping around."""
    width = filled.shape[1]
    doubled = np.concatenate((filled, filled), axis=1)
    positions = np.where(doubled, np.arange(2 * width), 2 * width)
    following = np.minimum.accumulate(positions[:, ::-1], axis=1)[:, ::-1]
    return following[rows, columns] % width


FALSE_NEGATIVE_WEIGHT = 0.95
"""Weight of missed pairs when choosing the banding; datasketch uses 0.5 because its candidates are its answers."""


@functools.cache
def lsh_parameters(
    threshold: float, num_perm: int, false_negative_weight: float = FALSE_NEGATIVE_WEIGHT
) -> tuple[int, int]:
    """(bands, rows) minimising weighted false-positive and false-negative areas, as datasketch's MinHashLSH."""
    # A pair with Jaccard s shares at least one band with probability 1 - (1 - s**rows)**bands; the
    # false-positive area integrates that over s < threshold, the false-negative area its complement
    # over s > threshold. Candidates are verified against the whole signature here, so a false
    # positive costs one comparison while a false negative loses a duplicate: the default weighs
    # false negatives 0.95, which at 0.8 and 128 gives 16 bands of 8 rows (a pair at the threshold
    # becomes a candidate with probability 0.95, against 0.40 with datasketch's 9 bands of 13).
    # With weight 0.5 the result is exactly datasketch's.
    grid = np.linspace(0.0, 1.0, 2001)
    below, above = grid[grid <= threshold], grid[grid >= threshold]
    best, best_error = (1, num_perm), np.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_positive = np.trapezoid(1 - (1 - below**rows) ** bands, below)
            false_negative = np.trapezoid((1 - above**rows) ** bands, above)
            error = (1 - false_negative_weight) * false_positive + false_negative_weight * false_negative
            if error < best_error:
                best, best_error = (bands, rows), error
    return best


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band of each signature, shape (len(signatures), bands)."""
    # The band's number seeds its key, so equal bands in different positions differ and all bands share one index.
    banded = signatures[:, : bands * rows].reshape(len(signatures), bands, rows).astype(np.uint64)
    keys = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64), banded.shape[:2]).copy()
    for row in range(rows):
        keys *= _POLY
        keys += banded[:, :, row]
        fmix64(keys)
    return keys
