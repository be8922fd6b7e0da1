"""Cypher for the neo4j source: names checked and quoted, values only as parameters."""

from __future__ import annotations

import pytest

from dataset_builder.sources.neo4j_cypher import (
    CypherError,
    NodeFields,
    neighbourhood_query,
    property_query,
    quote,
    spec_query,
)

RETURN = "RETURN elementId(node) AS element_id, properties(node) AS properties\n"


def test_neighbourhood_query_over_given_relationships() -> None:
    query, parameters = neighbourhood_query(["bdsg#3", 7], ["CITES", "AMENDS"], 2, limit=100)
    assert query == (
        "MATCH (seed:`Document`) WHERE seed.`id` IN $seed_ids\n"
        "MATCH (seed)-[:`CITES`|`AMENDS`*0..2]-(node:`Document`)\n"
        "WITH DISTINCT node\n"
        + RETURN
        + "ORDER BY node.`id`, element_id\n"
        "LIMIT $limit"
    )
    assert parameters == {"seed_ids": ["bdsg#3", 7], "limit": 100}


def test_neighbourhood_query_directions_labels_and_any_relationship() -> None:
    fields = NodeFields(id="uid")
    query, _ = neighbourhood_query(["a"], [], 3, limit=5, label="Paragraph", direction="out", node_fields=fields)
    assert "MATCH (seed:`Paragraph`) WHERE seed.`uid` IN $seed_ids\n" in query
    assert "MATCH (seed)-[*0..3]->(node:`Paragraph`)\n" in query
    assert "ORDER BY node.`uid`, element_id\n" in query
    query, _ = neighbourhood_query(["a"], ["CITES"], 1, limit=5, direction="in")
    assert "MATCH (seed)<-[:`CITES`*0..1]-(node:`Document`)\n" in query


@pytest.mark.parametrize("depth", [0, 6, -1, True, "2"])
def test_depth_outside_one_to_five_is_refused(depth: object) -> None:
    with pytest.raises(CypherError, match="depth must be an integer from 1 to 5"):
        neighbourhood_query(["a"], ["CITES"], depth, limit=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["CITES`]->(x) DETACH DELETE x //", "1abc", "", "a-b", "a b", "ä", None])
def test_names_that_could_break_out_of_quotes_are_refused(name: object) -> None:
    with pytest.raises(CypherError):
        quote(name)  # type: ignore[arg-type]
    with pytest.raises(CypherError):
        neighbourhood_query(["a"], [name], 1, limit=1)  # type: ignore[list-item]
    with pytest.raises(CypherError):
        property_query({}, limit=1, label=name)  # type: ignore[arg-type]
    with pytest.raises(CypherError):
        property_query({name: 1}, limit=1)  # type: ignore[dict-item]


def test_unknown_direction_is_refused() -> None:
    with pytest.raises(CypherError, match="direction must be one of out, in, both"):
        neighbourhood_query(["a"], [], 1, limit=1, direction="sideways")


def test_property_query_passes_values_only_as_parameters() -> None:
    hostile = "x' OR 1=1 WITH node MATCH (n) DETACH DELETE n //"
    query, parameters = property_query({"law": "BDSG", "title": hostile}, limit=1000)
    assert query == (
        "MATCH (node:`Document`) WHERE node.`law` = $value_0 AND node.`title` = $value_1\n"
        + RETURN
        + "ORDER BY node.`id`, element_id\n"
        "LIMIT $limit"
    )
    assert parameters == {"limit": 1000, "value_0": "BDSG", "value_1": hostile}
    assert hostile not in query


def test_property_query_without_properties_reads_the_label() -> None:
    query, parameters = property_query({}, limit=10, label="Law")
    assert query.startswith("MATCH (node:`Law`)\nRETURN")
    assert parameters == {"limit": 10}


def test_node_fields_are_checked_names() -> None:
    with pytest.raises(CypherError):
        NodeFields(content="text`) DELETE n")


def test_spec_query_picks_the_form_and_defaults() -> None:
    query, parameters = spec_query({"type": "neo4j", "seed_ids": ["a"]}, 50, NodeFields())
    assert "-[*0..1]-" in query and parameters == {"seed_ids": ["a"], "limit": 50}
    query, parameters = spec_query({"type": "neo4j", "label": "Law", "properties": {"year": 2018}}, 9, NodeFields())
    assert query.startswith("MATCH (node:`Law`) WHERE node.`year` = $value_0") and parameters["value_0"] == 2018
