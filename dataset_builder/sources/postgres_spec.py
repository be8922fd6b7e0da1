"""The postgres source's request checks: fields, text-search languages, limits; no database is reached."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataset_builder.sources.context import SourceContext
from dataset_builder.sources.spec import (
    MAX_LIMIT,
    integer_problems,
    object_problems,
    range_problems,
    text_problems,
    unknown_field_problems,
)

LANGUAGES = {"german": "german", "english": "english"}
"""Request language -> PostgreSQL text-search configuration; the only configurations ever used."""
DEFAULT_LANGUAGE = "german"
FIELDS = ("query", "language", "metadata", "created_after", "created_before", "limit")


def spec_problems(spec: Mapping[str, Any], context: SourceContext, prefix: str) -> list[str]:
    """Return every problem with a postgres source spec."""
    problems = unknown_field_problems(spec, FIELDS, prefix)
    problems += text_problems(spec, "query", prefix)
    if "language" in spec and spec["language"] not in LANGUAGES:
        problems.append(f"{prefix}.language: must be one of {', '.join(LANGUAGES)}")
    problems += object_problems(spec, "metadata", prefix)
    problems += range_problems(spec, "created_after", "created_before", prefix)
    problems += integer_problems(spec, "limit", 1, MAX_LIMIT, prefix)
    if not context.source_database_url:
        problems.append(f"{prefix}: postgres is not configured (set CLARA_SOURCE_DATABASE_URL)")
    return problems
