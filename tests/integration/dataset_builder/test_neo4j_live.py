"""The neo4j source against a real graph; runs only where CLARA_NEO4J_URI names one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import neo4j
import pytest

from dataset_builder.sources import SourceContext, read_source

URI = os.environ.get("CLARA_NEO4J_URI", "")
pytestmark = pytest.mark.skipif(not URI, reason="set CLARA_NEO4J_URI (and _USER, _PASSWORD) to test against Neo4j")

NODES = [
    {"id": "bdsg#1", "title": "§ 1", "content": "Anwendungsbereich.", "law": "BDSG"},
    {"id": "bdsg#3", "title": "§ 3", "content": "Verarbeitung durch öffentliche Stellen.", "law": "BDSG"},
    {"id": "dsgvo#6", "title": "Art. 6", "content": "Rechtmäßigkeit der Verarbeitung.", "law": "DSGVO",
     "metadata": '{"topic": "datenschutz"}'},
    {"id": "dsgvo#9", "title": "Art. 9", "content": "Besondere Kategorien.", "law": "DSGVO"},
    {"id": "sgb5#5", "title": "§ 5", "content": "Versicherungspflicht.", "law": "SGB V"},
]
# bdsg#3 -> dsgvo#6 -> dsgvo#9; bdsg#1 -> bdsg#3 by another type; sgb5#5 stands alone.
CITES = [("bdsg#3", "dsgvo#6"), ("dsgvo#6", "dsgvo#9")]
AMENDS = [("bdsg#1", "bdsg#3")]


@pytest.fixture
def graph(make_context: Callable[..., SourceContext]) -> Iterator[tuple[SourceContext, str]]:
    """A context on the live graph, and a label of this test's own holding NODES, removed afterwards."""
    user = os.environ.get("CLARA_NEO4J_USER", "neo4j")
    password = os.environ.get("CLARA_NEO4J_PASSWORD", "")
    label = f"ClaraTest_{uuid.uuid4().hex[:10]}"
    with neo4j.GraphDatabase.driver(URI, auth=(user, password)) as driver:
        driver.execute_query(f"UNWIND $nodes AS node CREATE (n:`{label}`) SET n = node", nodes=NODES)
        for rel, pairs in (("CITES", CITES), ("AMENDS", AMENDS)):
            driver.execute_query(
                f"UNWIND $pairs AS pair MATCH (a:`{label}` {{id: pair[0]}}), (b:`{label}` {{id: pair[1]}}) "
                f"CREATE (a)-[:`{rel}`]->(b)",
                pairs=[list(pair) for pair in pairs],
            )
        try:
            yield make_context(neo4j_uri=URI, neo4j_user=user, neo4j_password=password, batch_size=2), label
        finally:
            driver.execute_query(f"MATCH (n:`{label}`) DETACH DELETE n")


def ids(spec: dict, context: SourceContext) -> list[str]:
    return [document.id for batch in read_source({"type": "neo4j", **spec}, context) for document in batch]


def test_neighbourhood_over_a_relationship_type(graph: tuple[SourceContext, str]) -> None:
    context, label = graph
    spec = {"label": label, "seed_ids": ["bdsg#3"], "relationships": ["CITES"]}
    assert ids({**spec, "depth": 1}, context) == ["bdsg#3", "dsgvo#6"]
    assert ids({**spec, "depth": 2}, context) == ["bdsg#3", "dsgvo#6", "dsgvo#9"]
    assert ids({**spec, "depth": 2, "direction": "in"}, context) == ["bdsg#3"]
    assert ids({"label": label, "seed_ids": ["bdsg#3"], "depth": 1}, context) == ["bdsg#1", "bdsg#3", "dsgvo#6"]


def test_nodes_by_label_and_properties_with_their_fields(graph: tuple[SourceContext, str]) -> None:
    context, label = graph
    batches = list(read_source({"type": "neo4j", "label": label, "properties": {"law": "DSGVO"}}, context))
    documents = [document for batch in batches for document in batch]
    assert [document.id for document in documents] == ["dsgvo#6", "dsgvo#9"]
    assert documents[0].source == "neo4j"
    assert documents[0].fields == {"title": "Art. 6", "content": "Rechtmäßigkeit der Verarbeitung.",
                                   "metadata": {"law": "DSGVO", "topic": "datenschutz"}, "created_at": None}
    everything = list(read_source({"type": "neo4j", "label": label, "limit": 4}, context))
    assert [len(batch) for batch in everything] == [2, 2]
