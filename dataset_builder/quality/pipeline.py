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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from dataset_builder.documents import Document
from dataset_builder.quality.dedup import ExactDeduplicator, NearDeduplicator
from dataset_builder.quality.heuristics import HeuristicFilter
from dataset_builder.quality.language import SUPPORTED_LANGUAGES, LanguageFilter
from dataset_builder.quality.length import LengthFilter
from dataset_builder.quality.normalize import normalize_texts
from dataset_builder.quality.pii import PiiRedactor

logger = logging.getLogger(__name__)

DEDUP_MODES = ("none", "exact", "near")
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


class QualityConfigError(ValueError):
    """A quality configuration that cannot be read; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class QualityConfig:
    """What the quality stages do, as asked for in a build request's "quality" object."""

    normalize: bool = True
    """Normalise Unicode (NFC), whitespace and stray HTML before anything judges the text."""
    min_chars: int | None = None
    """Drop documents with fewer characters; None: no lower bound."""
    max_chars: int | None = None
    """Drop documents with more characters; None: no upper bound."""
    min_words: int | None = None
    """Drop documents with fewer whitespace-separated words; None: no lower bound."""
    max_words: int | None = None
    """Drop documents with more whitespace-separated words; None: no upper bound."""
    languages: list[str] | None = None
    """ISO 639-1 codes of the languages to keep, e.g. ["de", "en"]; None keeps every language."""
    heuristics: bool = True
    """Apply the Gopher/C4-style quality filters (repetition, symbols, word lengths, bullets)."""
    dedup: str = "exact"
    """"none", "exact" (identical normalised text) or "near" (exact, then MinHash near duplicates)."""
    near_dup_threshold: float = 0.8
    """Estimated Jaccard similarity of character 5-gram sets at which a document is a near duplicate."""
    redact_pii: bool = True
    """Replace e-mail addresses, phone numbers, IBANs, IPs, tax and social security numbers with placeholders."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityConfig:
        """The configuration from a request; unknown keys raise QualityConfigError, values are checked by problems()."""
        known = {field.name for field in fields(cls)}
        unknown = [key for key in data if key not in known]
        if unknown:
            raise QualityConfigError([f"{key}: unknown field; known: {', '.join(sorted(known))}" for key in unknown])
        return cls(**data)

    def problems(self) -> list[str]:
        """Every problem with the values, each as "field: message"; empty when the configuration is usable."""
        problems = [f"{name}: must be true or false" for name in ("normalize", "heuristics", "redact_pii")
                    if not isinstance(getattr(self, name), bool)]  # fmt: skip
        problems += self._bound_problems("chars") + self._bound_problems("words")
        problems += self._language_problems()
        if self.dedup not in DEDUP_MODES:
            problems.append(f"dedup: must be one of {', '.join(DEDUP_MODES)}")
        threshold = self.near_dup_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.5 <= threshold <= 1:
            problems.append("near_dup_threshold: must be between 0.5 and 1")
        return problems

    def _bound_problems(self, unit: str) -> list[str]:
        low, high = getattr(self, f"min_{unit}"), getattr(self, f"max_{unit}")
        problems = [
            f"{name}: must be a non-negative integer or null"
            for name, value in ((f"min_{unit}", low), (f"max_{unit}", high))
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0)
        ]
        if not problems and low is not None and high is not None and low > high:
            problems.append(f"min_{unit}: must not exceed max_{unit}")
        return problems

    def _language_problems(self) -> list[str]:
        if self.languages is None:
            return []
        if not isinstance(self.languages, list) or not all(isinstance(code, str) for code in self.languages):
            return ["languages: must be a list of ISO 639-1 codes or null"]
        if not self.languages:
            return ["languages: must not be empty; leave it out or null to keep every language"]
        supported = ", ".join(sorted(SUPPORTED_LANGUAGES))
        return [
            f"languages: unsupported language {code!r}; supported: {supported}"
            for code in dict.fromkeys(self.languages)
            if code not in SUPPORTED_LANGUAGES
        ]


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
