"""What a build request's "quality" object may ask of the quality stages, checked without running any.

The API checks build requests with this module, so it loads no stage's libraries: of the stages it
imports only the language codes, and lingua is loaded when a build first detects a language.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dataset_builder.quality.language import SUPPORTED_LANGUAGES

DEDUP_MODES = ("none", "exact", "near")


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
