"""The quality pipeline: every enabled stage, in order, over the batches of a streaming build.

Order: normalisation, length bounds, language, heuristic filters, exact dedup, near dedup, PII
redaction. Cheap filters come first so that expensive ones see fewer documents, dedup comes
after the filters so that a rejected document never shadows a later good copy, and redaction
comes last so that it only works on what is kept (and dedup sees the original text).

Memory is bounded by the batch, which is cut into chunks of at most CHUNK_CHARS characters,
plus the dedup indexes, which hold hashes and signatures of the kept documents only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dataset_builder.documents import Document
from dataset_builder.quality.config import DEDUP_MODES, QualityConfig, QualityConfigError
from dataset_builder.quality.dedup import ExactDeduplicator, NearDeduplicator
from dataset_builder.quality.heuristics import HeuristicFilter
from dataset_builder.quality.language import LanguageFilter
from dataset_builder.quality.length import LengthFilter
from dataset_builder.quality.normalize import normalize_texts
from dataset_builder.quality.pii import PiiRedactor

__all__ = ["CHUNK_CHARS", "DEDUP_MODES", "QualityConfig", "QualityConfigError", "QualityPipeline"]

logger = logging.getLogger(__name__)

CHUNK_CHARS = 2_000_000
"""Characters per chunk a batch is processed in: the stages need up to about 50 bytes per character."""
_STAGES = ("normalize", "length", "language", "heuristics", "exact_dedup", "near_dedup", "pii")
_COUNTS = (
    "read",
    "after_normalize",
    "after_length",
    "after_language",
    "after_heuristics",
    "after_exact_dedup",
    "after_near_dedup",
)


class QualityPipeline:
    """Runs the enabled stages over batch after batch, keeping dedup state and counts across them."""

    def __init__(self, config: QualityConfig) -> None:
        problems = config.problems()
        if problems:
            raise QualityConfigError(problems)
        self.config = config
        self._length = LengthFilter(config.min_chars, config.max_chars, config.min_words, config.max_words)
        self._language = LanguageFilter(config.languages) if config.languages is not None else None
        self._heuristics = HeuristicFilter()
        self._exact = ExactDeduplicator() if config.dedup in ("exact", "near") else None
        self._near = NearDeduplicator(config.near_dup_threshold) if config.dedup == "near" else None
        self._redactor = PiiRedactor()
        self._counts = dict.fromkeys(_COUNTS, 0)
        self._removed_by_filter = dict.fromkeys(self._heuristics.filter_names, 0)
        self._changed = 0
        self._seconds = dict.fromkeys(_STAGES, 0.0)

    def process(self, batch: list[Document]) -> list[Document]:
        """The documents of the batch that pass every enabled stage, in order, redacted if asked."""
        kept: list[Document] = []
        for chunk in _chunks(batch, CHUNK_CHARS):
            kept += self._process_chunk(chunk)
        logger.debug("Quality stages kept %s of %s documents.", len(kept), len(batch))
        return kept

    def report(self) -> dict[str, Any]:
        """Counts after each stage, removals per stage and per heuristic filter, changes, redactions, seconds."""
        counts = dict(self._counts)
        return {
            "counts": counts,
            "removed": {
                "length": counts["after_normalize"] - counts["after_length"],
                "language": counts["after_length"] - counts["after_language"],
                "heuristics": counts["after_language"] - counts["after_heuristics"],
                "exact_duplicates": counts["after_heuristics"] - counts["after_exact_dedup"],
                "near_duplicates": counts["after_exact_dedup"] - counts["after_near_dedup"],
            },
            "removed_by_filter": dict(self._removed_by_filter),
            "changed": {"normalize": self._changed},
            "redactions": dict(self._redactor.counts),
            "seconds": {stage: round(seconds, 3) for stage, seconds in self._seconds.items()},
        }

    def _process_chunk(self, documents: list[Document]) -> list[Document]:
        self._counts["read"] += len(documents)
        if self.config.normalize:
            with self._timed("normalize"):
                self._changed += _rewrite_strings(documents, normalize_texts)
        self._counts["after_normalize"] += len(documents)
        texts = [document.text for document in documents]
        if self._length.active:
            documents, texts = self._filter("length", documents, texts, self._length.keep)
        self._counts["after_length"] += len(documents)
        if self._language is not None:
            documents, texts = self._filter("language", documents, texts, self._language.keep)
        self._counts["after_language"] += len(documents)
        if self.config.heuristics:
            documents, texts = self._filter("heuristics", documents, texts, self._heuristic_keep)
        self._counts["after_heuristics"] += len(documents)
        if self._exact is not None:
            documents, texts = self._filter("exact_dedup", documents, texts, self._exact.keep)
        self._counts["after_exact_dedup"] += len(documents)
        if self._near is not None:
            documents, texts = self._filter("near_dedup", documents, texts, self._near.keep)
        self._counts["after_near_dedup"] += len(documents)
        if self.config.redact_pii:
            with self._timed("pii"):
                _rewrite_strings(documents, self._redactor.redact_texts)
        return documents

    def _heuristic_keep(self, texts: list[str]) -> list[bool]:
        failures = self._heuristics.failures(texts)
        for name in failures:
            if name is not None:
                self._removed_by_filter[name] += 1
        return [name is None for name in failures]

    def _filter(
        self, stage: str, documents: list[Document], texts: list[str], keep: Callable[[list[str]], list[bool]]
    ) -> tuple[list[Document], list[str]]:
        with self._timed(stage):
            verdicts = keep(texts)
        return (
            [document for document, kept in zip(documents, verdicts, strict=True) if kept],
            [text for text, kept in zip(texts, verdicts, strict=True) if kept],
        )

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[stage] += time.perf_counter() - started


def _chunks(batch: list[Document], max_chars: int) -> Iterator[list[Document]]:
    """The batch in consecutive pieces of at most max_chars characters (a longer document is a piece alone)."""
    chunk: list[Document] = []
    size = 0
    for document in batch:
        length = len(document.text)
        if chunk and size + length > max_chars:
            yield chunk
            chunk, size = [], 0
        chunk.append(document)
        size += length
    if chunk:
        yield chunk


def _strings(document: Document) -> list[str]:
    """Every string in the document's text fields, in the order map_strings visits them."""
    found: list[str] = []

    def collect(value: str) -> str:
        """Note the string, leave it as it is."""
        found.append(value)
        return value

    document.map_strings(collect)
    return found


def _rewrite_strings(documents: list[Document], rewrite: Callable[[list[str]], list[str]]) -> int:
    """Rewrite every string in the documents' text fields with one call for the batch; returns documents changed."""
    per_document = [_strings(document) for document in documents]
    rewritten = iter(rewrite([value for strings in per_document for value in strings]))
    changed = 0
    for document, strings in zip(documents, per_document, strict=True):
        replacements = [next(rewritten) for _ in strings]
        if replacements != strings:
            document.map_strings(_replay(replacements))
            changed += 1
    return changed


def _replay(values: list[str]) -> Callable[[str], str]:
    """A map_strings transform that hands out the given values in order, whatever it is passed."""
    remaining = iter(values)
    return lambda _: next(remaining)
