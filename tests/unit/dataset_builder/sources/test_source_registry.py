"""The source registry: spec checks that need no store, and the context built from settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

import settings as clara_settings
from dataset_builder.sources import (
    SOURCE_TYPES,
    DocumentTable,
    SourceContext,
    SourceError,
    context_from_settings,
    read_source,
    source_problems,
)
from dataset_builder.sources.embeddings import is_compatible
from dataset_builder.sources.postgres import build_query


@pytest.fixture
def context(tmp_path: Path) -> SourceContext:
    return SourceContext(
        source_database_url="postgresql://postgres@127.0.0.1:5432/unused", documents_table=DocumentTable(),
        chroma_path=str(tmp_path / "chroma"), chroma_url=None, neo4j_uri=None, neo4j_user=None,
        neo4j_password=None, upload_path=lambda dataset_id: tmp_path / f"{dataset_id}.parquet",
    )


def test_registry_names_the_four_source_types() -> None:
    assert set(SOURCE_TYPES) == {"postgres", "chroma", "neo4j", "upload"}


@pytest.mark.parametrize(("spec", "problem"), [
    ([], "sources[4]: must be an object"),
    ({}, "sources[4].type: must be one of postgres, chroma, neo4j, upload"),
    ({"type": "mysql"}, "sources[4].type: must be one of postgres, chroma, neo4j, upload"),
    ({"type": ["postgres"]}, "sources[4].type: must be one of postgres, chroma, neo4j, upload"),
])
def test_spec_must_be_an_object_of_a_known_type(context: SourceContext, spec: object, problem: str) -> None:
    assert source_problems(spec, context, 4) == [problem]  # type: ignore[arg-type]


def test_valid_postgres_spec(context: SourceContext) -> None:
    spec = {"type": "postgres", "query": "Krankenversicherung", "language": "english", "metadata": {"law": "SGB V"},
            "created_after": "2000-01-01", "created_before": "2024-12-31T23:59:59+01:00", "limit": 10000}
    assert source_problems(spec, context, 0) == []


def test_every_postgres_spec_problem_at_once(context: SourceContext) -> None:
    spec = {"type": "postgres", "query": "", "language": "klingon", "metadata": ["law"],
            "created_after": "gestern", "created_before": 2024, "limit": True, "table": "users"}
    assert source_problems(spec, context, 1) == [
        "sources[1].table: unknown field; expected one of created_after, created_before, language, limit, "
        "metadata, query, type",
        "sources[1].query: must not be empty",
        "sources[1].language: must be one of german, english",
        "sources[1].metadata: must be an object",
        "sources[1].created_after: must be an ISO 8601 date or date-time, e.g. 2024-01-31",
        "sources[1].created_before: must be an ISO 8601 date or date-time, e.g. 2024-01-31",
        "sources[1].limit: must be an integer",
    ]


@pytest.mark.parametrize(("spec", "problem"), [
    ({"limit": 0}, "sources[0].limit: must be between 1 and 1000000"),
    ({"limit": 1_000_001}, "sources[0].limit: must be between 1 and 1000000"),
    ({"query": "x" * 1001}, "sources[0].query: must be at most 1000 characters"),
    ({"query": 5}, "sources[0].query: must be a string"),
    ({"created_after": "2020-01-01", "created_before": "2020-01-01"},
     "sources[0].created_before: must be later than created_after"),
])
def test_postgres_spec_ranges(context: SourceContext, spec: dict, problem: str) -> None:
    assert source_problems({"type": "postgres", **spec}, context, 0) == [problem]


def test_postgres_needs_a_database(context: SourceContext) -> None:
    unconfigured = SourceContext(**{**context.__dict__, "source_database_url": ""})
    assert source_problems({"type": "postgres"}, unconfigured, 0) == [
        "sources[0]: postgres is not configured (set CLARA_SOURCE_DATABASE_URL)"
    ]


def test_postgres_query_holds_request_values_only_as_parameters() -> None:
    spec = {"type": "postgres", "query": "a'b", "language": "english", "metadata": {"k": "v"},
            "created_after": "2001-01-01", "created_before": "2002-01-01", "limit": 5}
    query, params = build_query(spec, DocumentTable(table="docs"))
    text = repr(query)
    assert "a'b" not in text and "2001" not in text and "english" not in text
    assert params == ["english", "english", "a'b", '{"k": "v"}', "2001-01-01", "2002-01-01", 5]


def test_chroma_spec_problems_before_opening_the_store(context: SourceContext) -> None:
    spec = {"type": "chroma", "query_text": "Datenschutz", "top_k": 20_000, "where": "law = BDSG", "n": 1}
    assert source_problems(spec, context, 3) == [
        "sources[3].n: unknown field; expected one of collection, query_text, top_k, type, where",
        "sources[3].collection: is required",
        "sources[3].top_k: must be between 1 and 10000",
        "sources[3].where: must be an object",
    ]


def test_invalid_spec_is_refused_before_reading(context: SourceContext) -> None:
    with pytest.raises(SourceError, match=r"^source.limit: must be between 1 and 1000000$"):
        read_source({"type": "postgres", "limit": 0}, context)


@pytest.mark.parametrize(("persisted", "compatible"), [
    (None, True),
    ({"type": "legacy"}, True),
    ({"name": "clara_all_minilm_l6_v2", "config": {"model": "all-MiniLM-L6-v2"}}, True),
    ({"name": "default", "config": {}}, True),
    ({"name": "sentence_transformer", "config": {"model_name": "sentence-transformers/all-MiniLM-L6-v2"}}, True),
    ({"name": "sentence_transformer", "config": {"model_name": "all-mpnet-base-v2"}}, False),
    ({"name": "openai", "config": {"model_name": "text-embedding-3-small"}}, False),
])
def test_embedding_compatibility(persisted: dict | None, compatible: bool) -> None:
    assert is_compatible(persisted) is compatible


def test_context_from_current_settings(tmp_path: Path) -> None:
    current = clara_settings.load({"database_url": "postgresql://db.example/clara", "datasets_dir": tmp_path},
                                  environ={})
    context = context_from_settings(current)
    assert context.source_database_url == "postgresql://db.example/clara"
    assert context.documents_table == DocumentTable()
    assert context.chroma_path == str(current.chroma_path) and context.chroma_url is None
    assert context.neo4j_uri is None
    assert context.batch_size == current.dataset_batch_size
    assert context.upload_path("ds1") == tmp_path / "ds1" / "records.parquet"
    with pytest.raises(ValueError):
        context.upload_path("../../etc/passwd")


def test_context_from_settings_with_every_source_field(tmp_path: Path) -> None:
    current = clara_settings.load({
        "database_url": "postgresql://db.example/clara", "source_database_url": "postgresql://docs.example/archive",
        "documents_table": "akten", "documents_columns": "id=akten_id, content=volltext",
        "chroma_path": tmp_path / "chroma", "chroma_url": "http://chroma.example:8000",
        "neo4j_uri": "bolt://graph.example:7687", "neo4j_user": "reader", "neo4j_password": "pw",
        "dataset_batch_size": 250,
    }, environ={})
    context = context_from_settings(current)
    assert context.source_database_url == "postgresql://docs.example/archive"
    assert context.documents_table == DocumentTable(table="akten", id="akten_id", content="volltext")
    assert context.chroma_path == str(tmp_path / "chroma") and context.chroma_url == "http://chroma.example:8000"
    assert (context.neo4j_uri, context.neo4j_user, context.neo4j_password) == ("bolt://graph.example:7687",
                                                                                "reader", "pw")
    assert context.batch_size == 250


def test_context_takes_the_callers_upload_path_and_batch_size() -> None:
    current = SimpleNamespace(database_url="postgresql://db.example/clara")
    context = context_from_settings(current, upload_path=lambda dataset_id: Path("/stored") / dataset_id,
                                    batch_size=10)
    assert context.upload_path("x") == Path("/stored/x")
    assert context.batch_size == 10
    assert context.source_database_url == "postgresql://db.example/clara"
    assert context.documents_table == DocumentTable()


@pytest.mark.parametrize("columns", ["identifier=x", "id", "id=", "table=other"])
def test_bad_documents_columns_are_refused(columns: str) -> None:
    with pytest.raises(ValueError, match="documents columns must look like id=doc_id,title=name"):
        DocumentTable.from_setting("documents", columns)


@pytest.mark.parametrize(("spec", "problem"), [
    ({"type": "postgres"}, "sources[0].type: postgres table 'documents' is not allowed here; allowed: none"),
    ({"type": "chroma", "collection": "personal"},
     "sources[0].collection: chroma collection 'personal' is not allowed here; allowed: laws, faq"),
    ({"type": "neo4j", "label": "Person"}, "sources[0].label: neo4j label 'Person' is not allowed here; allowed: Law"),
    ({"type": "neo4j"}, "sources[0].label: neo4j label 'Document' is not allowed here; allowed: Law"),
])
def test_the_allowlist_refuses_what_it_does_not_name(context: SourceContext, spec: dict, problem: str) -> None:
    allowed = replace(context, allowlist=("chroma:laws", "chroma:faq", "neo4j:Law"))
    assert source_problems(spec, allowed, 0) == [problem]


def test_the_allowlist_lets_through_what_it_names(context: SourceContext) -> None:
    allowed = replace(context, allowlist=("postgres:documents", "neo4j:Law"), neo4j_uri="bolt://localhost:7687")
    assert source_problems({"type": "postgres"}, allowed, 0) == []
    assert source_problems({"type": "neo4j", "label": "Law", "properties": {"law": "BDSG"}}, allowed, 0) == []
    # Uploads are the users' own records, whatever the allowlist.
    assert source_problems({"type": "upload", "dataset_id": "x"}, allowed, 0) == [
        "sources[0].dataset_id: no uploaded dataset 'x'"]


def test_the_allowlist_comes_from_settings() -> None:
    settings = clara_settings.load(environ={"CLARA_SOURCE_ALLOWLIST": "postgres:documents, chroma:laws"})
    assert context_from_settings(settings).allowlist == ("postgres:documents", "chroma:laws")
    with pytest.raises(clara_settings.SettingsError, match="CLARA_SOURCE_ALLOWLIST entries must look like"):
        clara_settings.load(environ={"CLARA_SOURCE_ALLOWLIST": "mysql:users"})
