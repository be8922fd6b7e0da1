"""The neo4j source without a server: spec checks, record-to-document mapping, batching over a stand-in driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import neo4j
import pytest
from neo4j import Record
from neo4j.exceptions import ServiceUnavailable
from neo4j.time import Date, DateTime

from dataset_builder.sources import DocumentTable, NodeFields, SourceContext, SourceError, read_source, source_problems
from dataset_builder.sources.neo4j_source import record_document


def context(uri: str | None = "bolt://graph.example:7687", batch_size: int = 1000, **extra: Any) -> SourceContext:
    return SourceContext(
        source_database_url="", documents_table=DocumentTable(), chroma_path="unused", chroma_url=None,
        neo4j_uri=uri, neo4j_user="reader" if uri else None, neo4j_password="secret" if uri else None,
        upload_path=lambda dataset_id: Path("unused"), batch_size=batch_size, **extra,
    )


def test_record_maps_to_a_document_with_the_rest_as_metadata() -> None:
    record = Record({
        "element_id": "4:abc:12",
        "properties": {
            "id": "bdsg#3", "title": "§ 3", "content": "Verarbeitung durch öffentliche Stellen.",
            "created_at": DateTime(2018, 5, 25, 0, 0, 0), "law": "BDSG", "paragraph": 3,
            "metadata": '{"topic": "datenschutz"}', "valid_from": Date(2018, 5, 25), "tags": ["a", "b"],
        },
    })
    document = record_document(record)
    assert document.source == "neo4j"
    assert document.id == "bdsg#3"
    assert document.text == "Verarbeitung durch öffentliche Stellen."
    assert document.fields == {
        "title": "§ 3",
        "content": "Verarbeitung durch öffentliche Stellen.",
        "metadata": {"law": "BDSG", "paragraph": 3, "valid_from": "2018-05-25", "tags": ["a", "b"],
                     "topic": "datenschutz"},
        "created_at": "2018-05-25T00:00:00.000000000",
    }


def test_record_without_an_id_property_is_named_by_its_element_id() -> None:
    document = record_document({"element_id": "4:abc:99", "properties": {"content": "Text", "metadata": "kein JSON"}})
    assert document.id == "4:abc:99"
    assert document.fields == {"title": "", "content": "Text", "metadata": {"metadata": "kein JSON"},
                               "created_at": None}


def test_configured_node_fields() -> None:
    fields = NodeFields(id="uid", title="heading", content="body", metadata="props", created_at="published")
    record = {"element_id": "e1", "properties": {"uid": 42, "heading": "H", "body": "B", "published": "2020-01-01",
                                                 "id": "other"}}
    document = record_document(record, fields)
    assert document.id == "42"
    assert document.fields == {"title": "H", "content": "B", "metadata": {"id": "other"}, "created_at": "2020-01-01"}


def test_spec_problems() -> None:
    ok = context()
    assert source_problems({"type": "neo4j", "seed_ids": ["a"], "relationships": ["CITES"], "depth": 2}, ok, 0) == []
    assert source_problems({"type": "neo4j", "label": "Document", "properties": {"law": "BDSG"}, "limit": 1000},
                           ok, 0) == []
    assert source_problems({"type": "neo4j", "seed_ids": ["a"]}, context(uri=None), 2) == [
        "sources[2]: neo4j is not configured (set CLARA_NEO4J_URI)"
    ]
    assert source_problems({"type": "neo4j", "seed_ids": [], "relationships": ["CITES`]"], "depth": 6,
                            "direction": "up", "properties": {"a": 1}, "cypher": "MATCH (n) RETURN n"}, ok, 1) == [
        "sources[1].cypher: unknown field; expected one of depth, direction, label, limit, properties, "
        "relationships, seed_ids, type",
        "sources[1].seed_ids: must be a non-empty list of strings or integers",
        "sources[1].relationships: must be a list of relationship types of letters, digits and underscores",
        "sources[1].depth: must be between 1 and 5",
        "sources[1].direction: must be one of out, in, both",
        "sources[1].properties: cannot be combined with seed_ids",
    ]
    assert source_problems({"type": "neo4j", "label": "Doc ument", "depth": 2, "limit": 0,
                            "properties": {"bad key": 1, "law": {"nested": 1}}}, ok, 0) == [
        "sources[0].label: must be a name of letters, digits and underscores",
        "sources[0].limit: must be between 1 and 1000000",
        "sources[0].depth: only applies with seed_ids",
        "sources[0].properties: key 'bad key' must be a name of letters, digits and underscores",
        "sources[0].properties.law: must be a string, number, boolean or a list of them",
    ]


class StandInSession:
    def __init__(self, records: list[Record], calls: dict[str, Any]) -> None:
        self.records, self.calls = records, calls

    def __enter__(self) -> StandInSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls["session_closed"] = True

    def run(self, query: str, parameters: dict[str, Any]) -> list[Record]:
        self.calls["run"] = (query, parameters)
        return self.records


class StandInDriver:
    def __init__(self, records: list[Record], calls: dict[str, Any]) -> None:
        self.records, self.calls = records, calls

    def __enter__(self) -> StandInDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls["driver_closed"] = True

    def session(self, **config: Any) -> StandInSession:
        self.calls["session"] = config
        return StandInSession(self.records, self.calls)


def test_read_streams_batches_from_a_read_session(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, Any] = {}
    records = [Record({"element_id": f"e{n}", "properties": {"id": f"d{n}", "content": "x"}}) for n in range(5)]

    def driver(uri: str, auth: Any = None) -> StandInDriver:
        calls["driver"] = (uri, auth)
        return StandInDriver(records, calls)

    monkeypatch.setattr(neo4j.GraphDatabase, "driver", driver)
    spec = {"type": "neo4j", "label": "Document", "properties": {"law": "BDSG"}, "limit": 20}
    batches = list(read_source(spec, context(batch_size=2)))
    assert [[d.id for d in batch] for batch in batches] == [["d0", "d1"], ["d2", "d3"], ["d4"]]
    assert calls["driver"] == ("bolt://graph.example:7687", ("reader", "secret"))
    assert calls["session"] == {"default_access_mode": neo4j.READ_ACCESS, "fetch_size": 2}
    assert calls["run"][1] == {"limit": 20, "value_0": "BDSG"}
    assert calls["session_closed"] and calls["driver_closed"]


def test_unreachable_graph_raises_source_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def driver(uri: str, auth: Any = None) -> StandInDriver:
        raise ServiceUnavailable("Couldn't connect to graph.example:7687")

    monkeypatch.setattr(neo4j.GraphDatabase, "driver", driver)
    with pytest.raises(SourceError, match="neo4j: cannot read the graph"):
        list(read_source({"type": "neo4j", "seed_ids": ["a"]}, context()))
