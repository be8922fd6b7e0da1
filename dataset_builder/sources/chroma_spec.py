"""The chroma source's request checks, and its filter as Chroma reads it; Chroma itself is not loaded.

What needs Chroma (its own check of the where clause, whether the collection exists and how it was
embedded) is chroma.store_problems, run where a build reaches the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataset_builder.sources.context import SourceContext
from dataset_builder.sources.spec import (
    MAX_LIMIT,
    integer_problems,
    object_problems,
    text_problems,
    unknown_field_problems,
)

FIELDS = ("collection", "query_text", "top_k", "where")
DEFAULT_TOP_K = 1_000
MAX_QUERY_TOP_K = 10_000
"""A query returns its results in one response, so it is held smaller than a paged get."""


def chroma_where(where: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Chroma's where clause for a filter; several plain keys mean all of them, as in the postgres source."""
    if not where:
        return None
    clauses = [{key: value} for key, value in where.items()]
    if len(clauses) > 1 and not any(key.startswith("$") for key in where):
        return {"$and": clauses}
    return dict(where)


def spec_problems(spec: Mapping[str, Any], context: SourceContext, prefix: str) -> list[str]:
    """Return every problem with a chroma source spec that shows without Chroma."""
    problems = unknown_field_problems(spec, FIELDS, prefix)
    problems += text_problems(spec, "collection", prefix, required=True, max_length=512)
    problems += text_problems(spec, "query_text", prefix)
    high = MAX_QUERY_TOP_K if "query_text" in spec else MAX_LIMIT
    problems += integer_problems(spec, "top_k", 1, high, prefix)
    problems += object_problems(spec, "where", prefix)
    return problems
