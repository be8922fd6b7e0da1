"""Cypher for the neo4j source, built from validated parts; never a user's Cypher.

Cypher cannot take labels, relationship types, property keys or path lengths as parameters, so
those are checked against a strict name pattern (or a small integer range) and backtick-quoted;
every value travels as a parameter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_DEPTH = 5
DIRECTIONS = {"out": ("-", "->"), "in": ("<-", "-"), "both": ("-", "-")}
DEFAULT_LABEL = "Document"
RETURN = "RETURN elementId(node) AS element_id, properties(node) AS properties"


class CypherError(ValueError):
    """Raised when a name or number cannot be placed safely into Cypher."""


@dataclass(frozen=True)
class NodeFields:
    """Which node properties hold a document's parts; the rest become its metadata."""

    id: str = "id"
    title: str = "title"
    content: str = "content"
    metadata: str = "metadata"
    """A property holding a JSON object string, merged into the metadata when present."""
    created_at: str = "created_at"

    def __post_init__(self) -> None:
        """Refuse a property name that could not be quoted safely."""
        for field in fields(self):
            quote(getattr(self, field.name))


def is_name(value: object) -> bool:
    """Whether a value may be used as a label, relationship type or property key."""
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def quote(name: str) -> str:
    """Backtick-quote a checked name."""
    if not is_name(name):
        raise CypherError(f"{name!r} is not a valid name; use letters, digits and underscores")
    return f"`{name}`"


def neighbourhood_query(seed_ids: Sequence[str | int], relationships: Sequence[str], depth: int, *,
                        limit: int, label: str = DEFAULT_LABEL, direction: str = "both",
                        node_fields: NodeFields = NodeFields()) -> tuple[str, dict[str, Any]]:
    """Nodes of a label within depth hops of the seeds (seeds included) over the given relationships."""
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise CypherError(f"depth must be an integer from 1 to {MAX_DEPTH}")
    if direction not in DIRECTIONS:
        raise CypherError(f"direction must be one of {', '.join(DIRECTIONS)}")
    types = "|".join(quote(name) for name in relationships)
    left, right = DIRECTIONS[direction]
    node_label, id_key = quote(label), quote(node_fields.id)
    query = (
        f"MATCH (seed:{node_label}) WHERE seed.{id_key} IN $seed_ids\n"
        f"MATCH (seed){left}[{':' + types if types else ''}*0..{depth}]{right}(node:{node_label})\n"
        f"WITH DISTINCT node\n"
        f"{RETURN}\n"
        f"ORDER BY node.{id_key}, element_id\n"
        f"LIMIT $limit"
    )
    return query, {"seed_ids": list(seed_ids), "limit": limit}


def property_query(properties: Mapping[str, Any], *, limit: int, label: str = DEFAULT_LABEL,
                   node_fields: NodeFields = NodeFields()) -> tuple[str, dict[str, Any]]:
    """Nodes of a label whose properties equal the given values."""
    parameters: dict[str, Any] = {"limit": limit}
    conditions = []
    for index, (key, value) in enumerate(sorted(properties.items())):
        parameters[f"value_{index}"] = value
        conditions.append(f"node.{quote(key)} = $value_{index}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    query = (
        f"MATCH (node:{quote(label)}){where}\n"
        f"{RETURN}\n"
        f"ORDER BY node.{quote(node_fields.id)}, element_id\n"
        f"LIMIT $limit"
    )
    return query, parameters


def spec_query(spec: Mapping[str, Any], limit: int, node_fields: NodeFields) -> tuple[str, dict[str, Any]]:
    """The query a validated neo4j source spec asks for: a neighbourhood when it has seed_ids."""
    label = spec.get("label", DEFAULT_LABEL)
    if "seed_ids" in spec:
        return neighbourhood_query(
            spec["seed_ids"], spec.get("relationships", ()), spec.get("depth", 1), limit=limit, label=label,
            direction=spec.get("direction", "both"), node_fields=node_fields,
        )
    return property_query(spec.get("properties", {}), limit=limit, label=label, node_fields=node_fields)
