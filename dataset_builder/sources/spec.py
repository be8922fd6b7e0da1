"""Checks shared by the source specs of a build request: known fields, strings, integers, timestamps.

Each check takes the spec, a field name and the prefix ("sources[2]") and returns problems worded
"sources[2].limit: must be ...", so a request is answered with every problem at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

DEFAULT_LIMIT = 10_000
MAX_LIMIT = 1_000_000
MAX_TEXT_LENGTH = 1_000


def unknown_field_problems(spec: Mapping[str, Any], allowed: Iterable[str], prefix: str) -> list[str]:
    """Name every field of the spec that its source type does not know."""
    known = {"type", *allowed}
    expected = ", ".join(sorted(known))
    return [f"{prefix}.{key}: unknown field; expected one of {expected}" for key in spec if key not in known]


def integer_problems(spec: Mapping[str, Any], name: str, low: int, high: int, prefix: str) -> list[str]:
    """Check an optional integer field lies in [low, high]; booleans are not integers here."""
    if name not in spec:
        return []
    value = spec[name]
    if isinstance(value, bool) or not isinstance(value, int):
        return [f"{prefix}.{name}: must be an integer"]
    if not low <= value <= high:
        return [f"{prefix}.{name}: must be between {low} and {high}"]
    return []


def text_problems(spec: Mapping[str, Any], name: str, prefix: str, *, required: bool = False,
                  max_length: int = MAX_TEXT_LENGTH) -> list[str]:
    """Check a field is a non-blank string of at most max_length characters."""
    if name not in spec:
        return [f"{prefix}.{name}: is required"] if required else []
    value = spec[name]
    if not isinstance(value, str):
        return [f"{prefix}.{name}: must be a string"]
    if not value.strip():
        return [f"{prefix}.{name}: must not be empty"]
    if len(value) > max_length:
        return [f"{prefix}.{name}: must be at most {max_length} characters"]
    return []


def object_problems(spec: Mapping[str, Any], name: str, prefix: str) -> list[str]:
    """Check an optional field is a JSON object with string keys."""
    if name not in spec:
        return []
    value = spec[name]
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        return [f"{prefix}.{name}: must be an object"]
    return []


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO 8601 date or date-time; naive ones are taken as UTC so any two compare."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def range_problems(spec: Mapping[str, Any], after: str, before: str, prefix: str) -> list[str]:
    """Check two optional ISO timestamps parse and, when both are given, that after < before."""
    problems: list[str] = []
    parsed: dict[str, datetime] = {}
    for name in (after, before):
        if name not in spec:
            continue
        value = spec[name]
        try:
            if not isinstance(value, str):
                raise TypeError
            parsed[name] = parse_timestamp(value)
        except (TypeError, ValueError):
            problems.append(f"{prefix}.{name}: must be an ISO 8601 date or date-time, e.g. 2024-01-31")
    if len(parsed) == 2 and parsed[after] >= parsed[before]:
        problems.append(f"{prefix}.{before}: must be later than {after}")
    return problems
