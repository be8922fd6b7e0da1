"""Gopher- and C4-style heuristic quality filters, computed for a whole batch at once with numpy.

The filters follow Rae et al. 2021 ("Scaling Language Models: Methods, Analysis & Insights from
Training Gopher", appendix A) and Raffel et al. 2020 (C4), with these deliberate differences:

* Words are whitespace-separated tokens (punctuation stays attached), as the statistics are meant
  to be cheap and language-neutral; the English stop-word rule is left out for the same reason.
* The word-count bounds (50 to 100,000 in Gopher) are the separate length stage's job.
* Symbols are "#"-words that do not open a line (hashtags, "# # #" debris; a markdown heading
  marker opens its line) and ellipses ("..." or "…"), per word.
* N-gram fractions are measured against the characters of the words (whitespace excluded). The
  most frequent n-gram counts only when it occurs at least twice: in a ten-word text every
  bigram covers a fifth of it, and that is not repetition.
* The duplicate n-gram fraction counts every character covered by a repeated (second or later)
  occurrence of some n-gram, each character once.
* C4's terminal punctuation rule is a document-level fraction of lines and is off by default:
  hard-wrapped text such as law paragraphs breaks lines mid-sentence.

Defaults are Gopher's thresholds, except where German legal and administrative prose, checked on
105k paragraphs of federal law, needs room; each such exception says why. With these defaults the
filters remove 3.4% of that corpus (after length and language), nearly all of it tables, forms and
image lists from annexes; with Gopher's values they removed 24.6%, most of it ordinary law.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dataset_builder.quality.codepoints import CodePointBatch, SegmentHasher, character_tables, mix_pair

logger = logging.getLogger(__name__)

_HASH = ord("#")
_DOT = ord(".")
_ELLIPSIS = ord("\u2026")
_NEWLINE = 10
# Markers that open a bullet-list line: ASCII markdown markers, typographic bullets, dashes.
_BULLETS = np.array(
    [ord(char) for char in "-*+\u2013\u2014\u2022\u2023\u2043\u25aa\u25ab\u25a0\u25a1\u25cf\u25cb\u25e6\u25b6\u25ba"]
)
_TERMINAL_PUNCTUATION = np.array([ord(char) for char in '.!?"\u201c\u201d'])


@dataclass(frozen=True)
class HeuristicThresholds:
    """Thresholds of the heuristic filters; None switches a filter off."""

    min_mean_word_length: float | None = 3.0
    """Mean word length below this: lists of numbers, tables, code (Gopher: 3)."""
    # Gopher: 10, but German compounds such as "Sozialversicherungsfachangestellte" put plain sentences above 10.
    max_mean_word_length: float | None = 12.0
    """Mean word length above this: URLs, file names, run-together text."""
    max_symbol_word_ratio: float | None = 0.1
    """Hashtag-like words and ellipses per word (Gopher: 0.1)."""
    max_bullet_lines: float | None = 0.9
    """Fraction of non-empty lines that start with a bullet: navigation menus, link lists (Gopher: 0.9)."""
    max_ellipsis_lines: float | None = 0.3
    """Fraction of non-empty lines that end with an ellipsis: truncated teasers (Gopher: 0.3)."""
    # Gopher: 0.8, which drops 13% of law paragraphs: in "nach § 12 Abs. 3 Satz 2 Nr. 1" half the
    # words are numbers. Below 0.5 are tables and forms.
    min_alphabetic_words: float | None = 0.5
    """Fraction of words with at least one letter."""
    max_duplicate_lines: float | None = 0.3
    """Fraction of non-empty lines that repeat an earlier line (Gopher: 0.3)."""
    max_duplicate_line_chars: float | None = 0.2
    """Fraction of characters in lines that repeat an earlier line (Gopher: 0.2)."""
    # Gopher: 0.20, 0.18, 0.16; German compounds make n-grams long, and "der knappschaftlichen
    # Rentenversicherung" three times in a paragraph is normal.
    max_top_ngram_chars: tuple[tuple[int, float], ...] = ((2, 0.30), (3, 0.28), (4, 0.26))
    """Per n, fraction of word characters in the most frequent n-gram."""
    # Gopher: 0.15 down to 0.10; legal prose repeats its formulas, and at Gopher's values 12% of the
    # law paragraphs of 50 words or more would go.
    max_duplicate_ngram_chars: tuple[tuple[int, float], ...] = (
        (5, 0.50),
        (6, 0.48),
        (7, 0.46),
        (8, 0.44),
        (9, 0.42),
        (10, 0.40),
    )
    """Per n, fraction of word characters in repeated n-grams."""
    min_terminal_punctuation_lines: float | None = None
    """C4: fraction of non-empty lines that end with terminal punctuation; off by default."""
    # Gopher never judged shorter texts (its length filter ran first), and in a short paragraph one
    # repeated term is already a large fraction of it.
    min_words_for_repetition: int = 50
    """Duplicate-line and n-gram filters judge only texts of at least this many words."""


@dataclass(frozen=True)
class _Rule:
    name: str
    minimum: float | None
    maximum: float | None


def _is_repetition_rule(name: str) -> bool:
    return name.startswith(("duplicate_", "top_"))


def _rules(thresholds: HeuristicThresholds) -> list[_Rule]:
    rules = [
        _Rule("mean_word_length", thresholds.min_mean_word_length, thresholds.max_mean_word_length),
        _Rule("symbol_word_ratio", None, thresholds.max_symbol_word_ratio),
        _Rule("bullet_lines", None, thresholds.max_bullet_lines),
        _Rule("ellipsis_lines", None, thresholds.max_ellipsis_lines),
        _Rule("alphabetic_words", thresholds.min_alphabetic_words, None),
        _Rule("duplicate_lines", None, thresholds.max_duplicate_lines),
        _Rule("duplicate_line_chars", None, thresholds.max_duplicate_line_chars),
    ]
    rules += [_Rule(f"top_{n}gram_chars", None, limit) for n, limit in thresholds.max_top_ngram_chars]
    rules += [_Rule(f"duplicate_{n}gram_chars", None, limit) for n, limit in thresholds.max_duplicate_ngram_chars]
    rules.append(_Rule("terminal_punctuation", thresholds.min_terminal_punctuation_lines, None))
    return [rule for rule in rules if rule.minimum is not None or rule.maximum is not None]


class HeuristicFilter:
    """Judges a batch of texts; each rejected text is charged to the first filter it fails."""

    def __init__(self, thresholds: HeuristicThresholds | None = None) -> None:
        self.thresholds = thresholds or HeuristicThresholds()
        self._rules = _rules(self.thresholds)
        self._top_sizes = tuple(n for n, _ in self.thresholds.max_top_ngram_chars)
        self._duplicate_sizes = tuple(n for n, _ in self.thresholds.max_duplicate_ngram_chars)
        if any(n < 2 for n in self._top_sizes + self._duplicate_sizes):
            raise ValueError("n-gram filters need n >= 2")

    @property
    def filter_names(self) -> list[str]:
        """Names of the enabled filters, in the order they are applied."""
        return [rule.name for rule in self._rules]

    def failures(self, texts: list[str]) -> list[str | None]:
        """For each text, the name of the first filter it fails, or None if it passes them all."""
        if not texts:
            return []
        statistics = text_statistics(texts, self._top_sizes, self._duplicate_sizes)
        failed = np.full(len(texts), -1, dtype=np.int64)
        long_enough = statistics["words"] >= self.thresholds.min_words_for_repetition
        for index, rule in enumerate(self._rules):
            values = statistics[rule.name]
            fails = np.zeros(len(texts), dtype=bool)
            if rule.minimum is not None:
                fails |= values < rule.minimum
            if rule.maximum is not None:
                fails |= values > rule.maximum
            if _is_repetition_rule(rule.name):
                fails &= long_enough
            failed[(failed < 0) & fails] = index
        return [self._rules[index].name if index >= 0 else None for index in failed.tolist()]


def _grouped(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per element of keys: how often its value occurs, and whether it is the value's first occurrence."""
    # Sorting the keys with each element's index packed into the low bits is about twice as fast as
    # an argsort and leaves every group's members in index order. The packing drops the key's top
    # bits: for the pipeline's chunks (a few hundred thousand words) 45 bits or more remain, and a
    # false match, a one-in-several-hundred event per chunk, shifts one n-gram count by one.
    count = len(keys)
    bits = np.uint64(max(count - 1, 1).bit_length())
    packed = keys << bits
    packed |= np.arange(count, dtype=np.uint64)
    packed.sort()
    indices = (packed & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.int64)
    packed >>= bits
    boundary = np.empty(count, dtype=bool)
    boundary[:1] = True
    np.not_equal(packed[1:], packed[:-1], out=boundary[1:])
    group_starts = np.flatnonzero(boundary)
    sizes = np.diff(np.append(group_starts, count))
    occurrences = np.empty(count, dtype=np.int64)
    occurrences[indices] = np.repeat(sizes, sizes)
    first = np.zeros(count, dtype=bool)
    first[indices[group_starts]] = True
    return occurrences, first


def _per_text(owner: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(owner, weights=weights, minlength=size).astype(np.float64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return numerator / np.maximum(denominator, 1)


@dataclass
class _Words:
    """Whitespace-separated words of a batch, with the line and text each belongs to."""

    starts: np.ndarray
    ends: np.ndarray
    owner: np.ndarray
    line: np.ndarray
    first_in_line: np.ndarray
    last_in_line: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Length of each word in characters."""
        return self.ends - self.starts


@dataclass
class _Lines:
    """Lines of a batch (every text ends with a newline, so every line belongs to one text)."""

    starts: np.ndarray
    ends: np.ndarray
    owner: np.ndarray


def _segment(batch: CodePointBatch, space: np.ndarray) -> tuple[_Words, _Lines]:
    text = ~space
    starts = np.flatnonzero(text[1:] & space[:-1]) + 1
    if len(text) and text[0]:
        starts = np.concatenate(([0], starts))
    # The batch ends with a newline, so every word has an end.
    ends = np.flatnonzero(text[:-1] & space[1:]) + 1
    newlines = np.flatnonzero(batch.points == _NEWLINE)
    line = np.searchsorted(newlines, starts)
    changes = np.empty(len(line) + 1, dtype=bool)
    changes[0] = changes[-1] = True
    np.not_equal(line[1:], line[:-1], out=changes[1:-1])
    words = _Words(starts, ends, batch.owner(starts), line, changes[:-1], changes[1:])
    line_starts = np.concatenate(([0], newlines[:-1] + 1))
    lines = _Lines(line_starts, newlines, batch.owner(line_starts))
    return words, lines


def text_statistics(
    texts: list[str],
    top_ngram_sizes: tuple[int, ...] = (2, 3, 4),
    duplicate_ngram_sizes: tuple[int, ...] = (5, 6, 7, 8, 9, 10),
) -> dict[str, np.ndarray]:
    """Every statistic the filters judge, keyed by filter name, one float per text."""
    batch = CodePointBatch.encode(texts)
    tables = character_tables()
    space = tables.space[batch.points]
    words, lines = _segment(batch, space)
    hasher = SegmentHasher(batch.points)
    word_counts = _per_text(words.owner, batch.size)
    word_chars = _per_text(words.owner, batch.size, words.lengths)
    statistics = _word_statistics(batch, words, word_counts, word_chars)
    statistics["words"] = word_counts
    statistics.update(_line_statistics(batch, words, lines, hasher))
    statistics.update(_ngram_statistics(batch, words, hasher, word_chars, top_ngram_sizes, duplicate_ngram_sizes))
    return statistics


def _word_statistics(
    batch: CodePointBatch, words: _Words, word_counts: np.ndarray, word_chars: np.ndarray
) -> dict[str, np.ndarray]:
    points, size = batch.points, batch.size
    letters = np.zeros(len(points) + 1, dtype=np.int64)
    np.cumsum(character_tables().alpha[points], out=letters[1:])
    alphabetic = (letters[words.ends] - letters[words.starts]) > 0
    hash_words = (points[words.starts] == _HASH) & ~words.first_in_line
    symbols = _per_text(words.owner[hash_words], size) + _per_text(batch.owner(_ellipses(points)), size)
    return {
        "mean_word_length": _ratio(word_chars, word_counts),
        "symbol_word_ratio": _ratio(symbols, word_counts),
        "alphabetic_words": _ratio(_per_text(words.owner[alphabetic], size), word_counts),
    }


def _ellipses(points: np.ndarray) -> np.ndarray:
    """Positions of ellipses: the ellipsis character, or a run of three or more dots (counted once)."""
    dots = points == _DOT
    runs = dots[:-2] & dots[1:-1] & dots[2:]
    runs[1:] &= ~dots[:-3]
    return np.concatenate((np.flatnonzero(points == _ELLIPSIS), np.flatnonzero(runs)))


def _line_statistics(
    batch: CodePointBatch, words: _Words, lines: _Lines, hasher: SegmentHasher
) -> dict[str, np.ndarray]:
    points, size = batch.points, batch.size
    first_words = np.flatnonzero(words.first_in_line)
    last_words = np.flatnonzero(words.last_in_line)
    # Lines without words are blank and judged by nothing.
    nonempty = words.line[first_words]
    nonempty_counts = _per_text(lines.owner[nonempty], size)
    opening = points[words.starts[first_words]]
    bullet = np.isin(opening, _BULLETS) & ((words.lengths[first_words] == 1) | (opening > 0x2000))
    closing_ends = words.ends[last_words]
    closing = points[closing_ends - 1]
    dotted = (words.lengths[last_words] >= 3) & (closing == _DOT)
    dotted &= (points[closing_ends - 2] == _DOT) & (points[closing_ends - 3] == _DOT)
    ellipsis = (closing == _ELLIPSIS) | dotted
    terminal = np.isin(closing, _TERMINAL_PUNCTUATION)
    owner_first, owner_last = words.owner[first_words], words.owner[last_words]
    keys = mix_pair(lines.owner[nonempty].astype(np.uint64), hasher.hash(lines.starts[nonempty], lines.ends[nonempty]))
    _, first = _grouped(keys)
    repeats = nonempty[~first]
    return {
        "bullet_lines": _ratio(_per_text(owner_first[bullet], size), nonempty_counts),
        "ellipsis_lines": _ratio(_per_text(owner_last[ellipsis], size), nonempty_counts),
        "terminal_punctuation": _ratio(_per_text(owner_last[terminal], size), nonempty_counts),
        "duplicate_lines": _ratio(_per_text(lines.owner[repeats], size), nonempty_counts),
        "duplicate_line_chars": _ratio(
            _per_text(lines.owner[repeats], size, lines.ends[repeats] - lines.starts[repeats]), batch.lengths
        ),
    }


def _ngram_statistics(
    batch: CodePointBatch,
    words: _Words,
    hasher: SegmentHasher,
    word_chars: np.ndarray,
    top_sizes: tuple[int, ...],
    duplicate_sizes: tuple[int, ...],
) -> dict[str, np.ndarray]:
    """Top and duplicate n-gram character fractions, growing n-grams one word at a time."""
    # An n-gram can only repeat where the (n-1)-gram at the same position repeats, so each round
    # hashes and groups just the survivors of the previous one: in law text about a third of the
    # bigram positions reach the trigram round and fewer each round after, so all sizes up to 10
    # together cost about twice what bigrams alone cost.
    size, count = batch.size, len(words.starts)
    statistics = {f"top_{n}gram_chars": np.zeros(size) for n in top_sizes}
    statistics |= {f"duplicate_{n}gram_chars": np.zeros(size) for n in duplicate_sizes}
    word_hashes = hasher.hash(words.starts, words.ends)
    keys = mix_pair(words.owner.astype(np.uint64), word_hashes)
    lengths = words.lengths
    char_prefix = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=char_prefix[1:])
    positions = np.arange(count)
    for n in range(2, max((*top_sizes, *duplicate_sizes), default=1) + 1):
        positions = positions[positions + n - 1 < count]
        positions = positions[words.owner[positions + n - 1] == words.owner[positions]]
        if not len(positions):
            break
        keys[positions] = mix_pair(keys[positions], word_hashes[positions + n - 1])
        occurrences, first = _grouped(keys[positions])
        repeated = occurrences >= 2
        if n in top_sizes:
            starts = positions[repeated]
            # Most frequent first, then longest: count in the high bits, characters in the low ones.
            scores = (occurrences[repeated] << 32) | (char_prefix[starts + n] - char_prefix[starts])
            best = np.zeros(size, dtype=np.int64)
            np.maximum.at(best, words.owner[starts], scores)
            statistics[f"top_{n}gram_chars"] = _ratio((best >> 32) * (best & 0xFFFFFFFF), word_chars)
        if n in duplicate_sizes:
            later = positions[repeated & ~first]
            # Each repeat covers words [p, p + n); cut at the next repeat's start, the pieces do not overlap.
            ends = np.minimum(later + n, np.append(later[1:], count))
            covered_chars = char_prefix[ends] - char_prefix[later]
            statistics[f"duplicate_{n}gram_chars"] = _ratio(
                _per_text(words.owner[later], size, covered_chars), word_chars
            )
        positions = positions[repeated]
    return statistics
