"""Length bounds: characters and whitespace-separated words, each bound optional."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dataset_builder.quality.codepoints import CodePointBatch, character_tables

logger = logging.getLogger(__name__)


def word_counts(texts: list[str]) -> np.ndarray:
    """Number of whitespace-separated words in each text (what str.split() would return, counted)."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    batch = CodePointBatch.encode(texts)
    space = character_tables().space[batch.points]
    # A word starts at a non-space character after a space; every text is preceded by a newline or nothing.
    starts = np.flatnonzero(~space[1:] & space[:-1]) + 1
    if len(space) and not space[0]:
        starts = np.concatenate(([0], starts))
    return np.bincount(batch.owner(starts), minlength=batch.size)


@dataclass(frozen=True)
class LengthFilter:
    """Keeps texts within every configured bound; a bound of None does not apply."""

    min_chars: int | None = None
    max_chars: int | None = None
    min_words: int | None = None
    max_words: int | None = None

    @property
    def active(self) -> bool:
        """Whether any bound is set."""
        return any(bound is not None for bound in (self.min_chars, self.max_chars, self.min_words, self.max_words))

    def keep(self, texts: list[str]) -> list[bool]:
        """For each text, whether its length is within the bounds."""
        keep = np.ones(len(texts), dtype=bool)
        if self.min_chars is not None or self.max_chars is not None:
            chars = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
            keep &= _within(chars, self.min_chars, self.max_chars)
        if self.min_words is not None or self.max_words is not None:
            keep &= _within(word_counts(texts), self.min_words, self.max_words)
        return keep.tolist()


def _within(values: np.ndarray, low: int | None, high: int | None) -> np.ndarray:
    inside = np.ones(len(values), dtype=bool)
    if low is not None:
        inside &= values >= low
    if high is not None:
        inside &= values <= high
    return inside
