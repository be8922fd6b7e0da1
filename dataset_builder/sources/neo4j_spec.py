"""The neo4j source's request checks: the two forms of spec, names safe for Cypher; no graph is reached."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataset_builder.sources.context import SourceContext
from dataset_builder.sources.neo4j_cypher import DIRECTIONS, MAX_DEPTH, is_name
from dataset_builder.sources.spec import MAX_LIMIT, integer_problems, unknown_field_problems

FIELDS = ("seed_ids", "relationships", "depth", "direction", "label", "properties", "limit")
NEIGHBOURHOOD_FIELDS = ("relationships", "depth", "direction")
MAX_SEEDS = 10_000
SCALARS = (str, int, float, bool)


def spec_problems(spec: Mapping[str, Any], context: SourceContext, prefix: str) -> list[str]:
    """Return every problem with a neo4j source spec, without reaching the graph."""
    problems = unknown_field_problems(spec, FIELDS, prefix)
    if not context.neo4j_uri:
        problems.append(f"{prefix}: neo4j is not configured (set CLARA_NEO4J_URI)")
    if "label" in spec and not is_name(spec["label"]):
        problems.append(f"{prefix}.label: must be a name of letters, digits and underscores")
    problems += integer_problems(spec, "limit", 1, MAX_LIMIT, prefix)
    if "seed_ids" in spec:
        problems += _neighbourhood_problems(spec, prefix)
        if "properties" in spec:
            problems.append(f"{prefix}.properties: cannot be combined with seed_ids")
    else:
        problems += [f"{prefix}.{name}: only applies with seed_ids" for name in NEIGHBOURHOOD_FIELDS if name in spec]
        problems += _properties_problems(spec, prefix)
    return problems


def _neighbourhood_problems(spec: Mapping[str, Any], prefix: str) -> list[str]:
    """Check seed_ids, relationships, depth and direction."""
    problems = []
    seeds = spec["seed_ids"]
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(seed, (str, int)) and not isinstance(seed, bool) for seed in seeds)):
        problems.append(f"{prefix}.seed_ids: must be a non-empty list of strings or integers")
    elif len(seeds) > MAX_SEEDS:
        problems.append(f"{prefix}.seed_ids: must hold at most {MAX_SEEDS} ids")
    relationships = spec.get("relationships", [])
    if not isinstance(relationships, list) or not all(is_name(name) for name in relationships):
        problems.append(f"{prefix}.relationships: must be a list of relationship types "
                        "of letters, digits and underscores")
    problems += integer_problems(spec, "depth", 1, MAX_DEPTH, prefix)
    if "direction" in spec and spec["direction"] not in DIRECTIONS:
        problems.append(f"{prefix}.direction: must be one of {', '.join(DIRECTIONS)}")
    return problems


def _properties_problems(spec: Mapping[str, Any], prefix: str) -> list[str]:
    """Check properties maps names to a scalar or a list of scalars."""
    properties = spec.get("properties", {})
    if not isinstance(properties, Mapping):
        return [f"{prefix}.properties: must be an object"]
    problems = []
    for key, value in properties.items():
        if not is_name(key):
            problems.append(f"{prefix}.properties: key {key!r} must be a name of letters, digits and underscores")
        elif not isinstance(value, SCALARS) and not (
            isinstance(value, list) and all(isinstance(item, SCALARS) for item in value)
        ):
            problems.append(f"{prefix}.properties.{key}: must be a string, number, boolean or a list of them")
    return problems
