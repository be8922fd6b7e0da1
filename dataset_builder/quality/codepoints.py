"""A batch of texts as one numpy array of code points, with character-class tables and segment hashes.

The heuristic filters and the MinHash stage look at every character of every document; doing that
in Python costs microseconds per word. Here a batch is encoded once to UTF-32 and everything that
follows (character classes, word and line boundaries, hashes of words, lines and shingles) is a
handful of vectorised passes over that array.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

_CODE_POINTS = 0x110000
# Odd multiplier of the polynomial hashes; odd so that it is invertible modulo 2**64.
_POLY = np.uint64(0x9E3779B97F4A7C15)
_POLY_INVERSE = np.uint64(pow(int(_POLY), -1, 1 << 64))
_FMIX_1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX_2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT = np.uint64(33)


@dataclass(frozen=True)
class CharacterTables:
    """Per code point: whether it is whitespace (str.isspace) and whether it is a letter (str.isalpha)."""

    space: np.ndarray
    alpha: np.ndarray


@functools.cache
def character_tables() -> CharacterTables:
    """Tables over all of Unicode, built from Python's own str methods once per process (about 0.3 s)."""
    chars = [chr(point) for point in range(_CODE_POINTS)]
    space = np.fromiter((char.isspace() for char in chars), dtype=bool, count=_CODE_POINTS)
    alpha = np.fromiter((char.isalpha() for char in chars), dtype=bool, count=_CODE_POINTS)
    return CharacterTables(space=space, alpha=alpha)


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, a bijection that spreads every input bit over the output (in place)."""
    values ^= values >> _SHIFT
    values *= _FMIX_1
    values ^= values >> _SHIFT
    values *= _FMIX_2
    values ^= values >> _SHIFT
    return values


def mix_pair(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Hash of an ordered pair of 64-bit hashes (a new array)."""
    combined = left * _POLY
    combined += right
    return fmix64(combined)


@dataclass
class CodePointBatch:
    """Texts joined by newlines into one code point array; text i spans starts[i]:ends[i]."""

    points: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def encode(cls, texts: list[str]) -> CodePointBatch:
        """Encode texts, each followed by a newline so that no word or line runs from one text into the next."""
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        # Lone surrogates are legal in Python strings; surrogatepass keeps one code unit per character.
        raw = ("\n".join(texts) + "\n").encode("utf-32-le", "surrogatepass")
        points = np.frombuffer(raw, dtype=np.uint32)
        ends = np.cumsum(lengths + 1) - 1
        return cls(points=points, starts=ends - lengths, ends=ends)

    @property
    def size(self) -> int:
        """Number of texts in the batch."""
        return len(self.starts)

    @property
    def lengths(self) -> np.ndarray:
        """Length of each text in characters."""
        return self.ends - self.starts

    def owner(self, positions: np.ndarray) -> np.ndarray:
        """Index of the text that contains each position."""
        return np.searchsorted(self.starts, positions, side="right") - 1


_powers_cache: tuple[np.ndarray, np.ndarray] = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


def _powers(count: int) -> tuple[np.ndarray, np.ndarray]:
    """P**i and Q**i for i < count; kept between batches, grown by doubling."""
    global _powers_cache
    powers, inverse_powers = _powers_cache
    if len(powers) < count:
        size = max(count, 2 * len(powers))
        powers = np.full(size, _POLY, dtype=np.uint64)
        inverse_powers = np.full(size, _POLY_INVERSE, dtype=np.uint64)
        powers[0] = inverse_powers[0] = 1
        np.cumprod(powers, out=powers)
        np.cumprod(inverse_powers, out=inverse_powers)
        # One assignment of a tuple: a concurrent reader sees the old pair or the new one.
        _powers_cache = (powers, inverse_powers)
    return powers, inverse_powers


class SegmentHasher:
    """Hashes any substrings of a code point array in O(1) each, from polynomial prefix sums."""

    # With prefix[i] = sum(points[j] * Q**j for j < i) and Q the inverse of P modulo 2**64, the
    # substring [s, e) hashes to (prefix[e] - prefix[s]) * P**s = sum(points[j] * Q**(j - s)):
    # equal substrings get equal hashes wherever they are.

    def __init__(self, points: np.ndarray) -> None:
        count = len(points)
        self._powers, inverse_powers = _powers(count + 1)
        self._prefix = np.zeros(count + 1, dtype=np.uint64)
        np.cumsum(points * inverse_powers[:count], out=self._prefix[1:])

    def hash(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """64-bit hashes of the substrings [starts, ends); the length is mixed in, so "" differs from "\\0"."""
        values = self._prefix[ends] - self._prefix[starts]
        values *= self._powers[starts]
        values += (ends - starts).astype(np.uint64) * _FMIX_1
        return fmix64(values)
