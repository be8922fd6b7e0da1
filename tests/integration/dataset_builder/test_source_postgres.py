"""The postgres source against a real PostgreSQL: full-text search, filters, limits, streaming, the collector."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg
import psycopg2
import pytest
from psycopg2 import sql

from dataset_builder.sources import (
    DocumentTable,
    SourceContext,
    SourceError,
    ensure_documents_table,
    postgres,
    read_source,
)
from dataset_builder.sources.postgres import build_query

Row = tuple[str, str, str, dict[str, Any], str]

ROWS: list[Row] = [
    ("d1", "§ 5 Versicherungspflicht", "Arbeitnehmer sind in der gesetzlichen Krankenversicherung versichert.",
     {"law": "SGB V", "topic": "kv"}, "2004-01-01T00:00:00+00:00"),
    ("d2", "§ 17 Anmeldung", "Wer eine Wohnung bezieht, meldet sich binnen zwei Wochen an.",
     {"law": "BMG"}, "2015-11-01T00:00:00+00:00"),
    ("d3", "Running the registry", "The registry office is open on weekdays.",
     {"law": "BMG", "language": "en"}, "1999-06-30T00:00:00+00:00"),
    ("d4", "Datenschutz", "Gesundheitsdaten sind besonders geschützt.",
     {"law": "BDSG", "topic": "gesundheit"}, "2018-05-25T00:00:00+00:00"),
    ("d5", "§ 44 Krankengeld", "Krankengeld erhalten Versicherte bei Arbeitsunfähigkeit.",
     {"law": "SGB V", "topic": "leistungen"}, "2010-01-01T00:00:00+00:00"),
]


def insert(url: str, rows: list[Row], table: DocumentTable = DocumentTable()) -> None:
    """Create the table and put the rows in it."""
    ensure_documents_table(url, table)
    statement = sql.SQL("INSERT INTO {} ({}) VALUES (%s, %s, %s, %s, %s)").format(
        sql.Identifier(table.table),
        sql.SQL(", ").join(map(sql.Identifier, (table.id, table.title, table.content, table.metadata,
                                                 table.created_at))),
    )
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            for row_id, title, content, metadata, created_at in rows:
                cursor.execute(statement, (row_id, title, content, json.dumps(metadata), created_at))
    finally:
        conn.close()


@pytest.fixture
def context(source_database_url: str, make_context: Callable[..., SourceContext]) -> SourceContext:
    """A context on a database holding ROWS."""
    insert(source_database_url, ROWS)
    return make_context(source_database_url=source_database_url)


def ids(spec: dict[str, Any], context: SourceContext) -> list[str]:
    return [document.id for batch in read_source(spec, context) for document in batch]


def test_german_query_matches_other_inflections(context: SourceContext) -> None:
    assert ids({"type": "postgres", "query": "Krankenversicherungen"}, context) == ["d1"]
    assert ids({"type": "postgres", "query": "Krankenversicherungen", "language": "german"}, context) == ["d1"]


def test_query_searches_the_title_too(context: SourceContext) -> None:
    assert ids({"type": "postgres", "query": "Versicherungspflicht"}, context) == ["d1"]


def test_english_query_uses_english_stemming(context: SourceContext) -> None:
    assert ids({"type": "postgres", "query": "runs", "language": "english"}, context) == ["d3"]
    assert ids({"type": "postgres", "query": "runs", "language": "german"}, context) == []


def test_websearch_syntax_combines_terms(context: SourceContext) -> None:
    assert ids({"type": "postgres", "query": "Krankengeld OR Wohnung"}, context) == ["d2", "d5"]
    assert ids({"type": "postgres", "query": "Krankengeld -Arbeitsunfähigkeit"}, context) == []


def test_metadata_containment(context: SourceContext) -> None:
    assert ids({"type": "postgres", "metadata": {"law": "SGB V"}}, context) == ["d1", "d5"]
    assert ids({"type": "postgres", "metadata": {"law": "SGB V", "topic": "kv"}}, context) == ["d1"]
    assert ids({"type": "postgres", "metadata": {"law": "SGB V", "topic": "none"}}, context) == []


def test_created_range_includes_after_and_excludes_before(context: SourceContext) -> None:
    spec = {"type": "postgres", "created_after": "2004-01-01", "created_before": "2010-01-01"}
    assert ids(spec, context) == ["d1"]
    assert ids({"type": "postgres", "created_after": "2010-01-01"}, context) == ["d2", "d4", "d5"]
    assert ids({"type": "postgres", "created_before": "2000-01-01T00:00:00Z"}, context) == ["d3"]


def test_filters_combine(context: SourceContext) -> None:
    spec = {"type": "postgres", "query": "Krankengeld", "metadata": {"law": "SGB V"}, "created_after": "2005-01-01"}
    assert ids(spec, context) == ["d5"]


def test_no_query_reads_every_row_in_id_order_with_its_fields(context: SourceContext) -> None:
    documents = [document for batch in read_source({"type": "postgres"}, context) for document in batch]
    assert [document.id for document in documents] == ["d1", "d2", "d3", "d4", "d5"]
    first = documents[0]
    assert first.source == "postgres"
    assert first.text_fields == ("content",)
    assert first.fields == {
        "title": "§ 5 Versicherungspflicht",
        "content": "Arbeitnehmer sind in der gesetzlichen Krankenversicherung versichert.",
        "metadata": {"law": "SGB V", "topic": "kv"},
        "created_at": "2004-01-01T00:00:00+00:00",
    }


def test_limit_keeps_the_first_rows_by_id(source_database_url: str, make_context: Callable[..., SourceContext]) -> None:
    insert(source_database_url, [(f"r{n}", "t", "Inhalt", {}, "2020-01-01") for n in (7, 3, 9, 1, 5)])
    context = make_context(source_database_url=source_database_url)
    assert ids({"type": "postgres", "limit": 3}, context) == ["r1", "r3", "r5"]


def _copies(url: str) -> list[tuple[str, str | None, str]]:
    """(state, wait event, statement) of every other connection to the database whose last statement is a COPY."""
    monitor = psycopg2.connect(url)
    try:
        with monitor.cursor() as cursor:
            cursor.execute("SELECT state, wait_event, query FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid() AND query LIKE 'COPY (%%'")
            return cursor.fetchall()
    finally:
        monitor.close()


def _wait_for(condition: Callable[[], bool], seconds: float = 5) -> bool:
    """Poll condition until it holds or the time is up; whether it held."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def _insert_large(url: str, rows: int, chars: int) -> None:
    """A documents table of rows whose content is chars long each, made by the server."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            # No full-text index: building it over this much text would take most of the test's time.
            cursor.execute("CREATE TABLE documents (id text PRIMARY KEY, title text, content text, metadata jsonb, "
                           "created_at timestamptz)")
            cursor.execute("INSERT INTO documents (id, title, content) SELECT 'r' || lpad(n::text, 6, '0'), 't', "
                           "repeat('Inhalt ', %s) FROM generate_series(1, %s) AS n", (chars // 7, rows))
    finally:
        conn.close()


def test_batches_are_bounded_and_streamed_through_a_read_only_binary_copy(
    source_database_url: str, make_context: Callable[..., SourceContext]
) -> None:
    insert(source_database_url, [(f"r{n}", "t", "Inhalt", {}, "2020-01-01") for n in range(5)])
    batches = read_source({"type": "postgres"}, make_context(source_database_url=source_database_url, batch_size=2))
    first = next(batches)
    copies = _copies(source_database_url)
    assert [len(first)] + [len(batch) for batch in batches] == [2, 2, 1]
    assert len(copies) == 1 and copies[0][2].startswith("COPY (SELECT ") and "(FORMAT BINARY)" in copies[0][2]


def test_the_server_waits_for_the_reader_so_memory_stays_bounded(
    source_database_url: str, make_context: Callable[..., SourceContext]
) -> None:
    # 40 MB of content: far more than socket buffers hold, so the server must stop and wait.
    _insert_large(source_database_url, 4000, 10_000)
    batches = read_source({"type": "postgres"}, make_context(source_database_url=source_database_url, batch_size=10))
    assert len(next(batches)) == 10
    assert _wait_for(lambda: [row[:2] for row in _copies(source_database_url)] == [("active", "ClientWrite")])
    batches.close()
    assert _wait_for(lambda: _copies(source_database_url) == [])


def test_closing_the_reader_early_releases_the_connection(
    source_database_url: str, make_context: Callable[..., SourceContext]
) -> None:
    insert(source_database_url, [(f"r{n:02}", "t", "Inhalt", {}, "2020-01-01") for n in range(50)])
    batches = read_source({"type": "postgres"}, make_context(source_database_url=source_database_url, batch_size=2))
    assert len(next(batches)) == 2
    assert len(_copies(source_database_url)) == 1
    batches.close()
    # A closed connection's backend leaves pg_stat_activity a moment after the client lets go.
    assert _wait_for(lambda: _copies(source_database_url) == [])


def test_the_source_reads_in_a_read_only_transaction(context: SourceContext, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    describe = postgres._metadata_is_json

    def recording(conn: psycopg.Connection, table: DocumentTable) -> bool:
        with conn.cursor() as cursor:
            cursor.execute("SHOW transaction_read_only")
            seen.append(cursor.fetchone()[0])
        return describe(conn, table)

    monkeypatch.setattr(postgres, "_metadata_is_json", recording)
    assert len(ids({"type": "postgres"}, context)) == len(ROWS)
    assert seen == ["on"]


def _record_gc_while_building(monkeypatch: pytest.MonkeyPatch, fail_on: int = 0) -> list[bool]:
    """Make the source note whether the collector is on each time it builds a batch; fail on call fail_on."""
    seen: list[bool] = []
    build = postgres._documents

    def recording(rows: list[tuple[Any, ...]], json_metadata: bool) -> list[Any]:
        seen.append(gc.isenabled())
        if len(seen) == fail_on:
            raise RuntimeError("consumer-visible failure while building")
        return build(rows, json_metadata)

    monkeypatch.setattr(postgres, "_documents", recording)
    return seen


def test_the_cyclic_collector_is_paused_only_while_a_batch_is_built(
    context: SourceContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _record_gc_while_building(monkeypatch)
    batches = read_source({"type": "postgres"}, replace(context, batch_size=2))
    sizes = []
    for batch in batches:
        # The consumer runs with the collector on, as everywhere else in the process.
        assert gc.isenabled()
        sizes.append(len(batch))
    assert sizes == [2, 2, 1]
    assert seen == [False] * 4 and gc.isenabled()


def test_the_collector_is_back_on_after_an_early_close_or_a_failure(
    context: SourceContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = read_source({"type": "postgres"}, replace(context, batch_size=2))
    next(batches)
    batches.close()
    assert gc.isenabled()
    seen = _record_gc_while_building(monkeypatch, fail_on=2)
    with pytest.raises(RuntimeError, match="consumer-visible failure"):
        list(read_source({"type": "postgres"}, replace(context, batch_size=2)))
    assert seen == [False, False] and gc.isenabled()
    assert _wait_for(lambda: _copies(context.source_database_url) == [])


def test_a_collector_the_caller_turned_off_stays_off(context: SourceContext) -> None:
    gc.disable()
    try:
        assert len(ids({"type": "postgres"}, replace(context, batch_size=2))) == len(ROWS)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_columns_of_other_types_arrive_as_text_in_the_order_of_the_id(
    source_database_url: str, make_context: Callable[..., SourceContext]
) -> None:
    conn = psycopg2.connect(source_database_url)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("CREATE TABLE documents (id integer PRIMARY KEY, title varchar(40), content text, "
                           "metadata jsonb, created_at timestamp)")
            cursor.execute("INSERT INTO documents VALUES (10, 'zehn', 'Inhalt', '{\"n\": 10}', '2020-01-02 03:04:05'), "
                           "(9, NULL, NULL, NULL, NULL)")
    finally:
        conn.close()
    context = make_context(source_database_url=source_database_url)
    documents = [d for batch in read_source({"type": "postgres"}, context) for d in batch]
    assert [(d.id, d.fields) for d in documents] == [
        ("9", {"title": "", "content": "", "metadata": {}, "created_at": None}),
        ("10", {"title": "zehn", "content": "Inhalt", "metadata": {"n": 10}, "created_at": "2020-01-02T03:04:05"}),
    ]


@pytest.mark.parametrize("column_type", ["jsonb", "json", "text"])
def test_metadata_of_any_column_type_becomes_a_dict(
    column_type: str, source_database_url: str, make_context: Callable[..., SourceContext]
) -> None:
    values = ['{"law": "SGB V", "n": [1, {"x": "§ 5"}]}', None, "[1, 2]", '"text"', "{}"]
    if column_type == "text":
        # Not JSON, or only JSON when read together with its neighbour: each value stands alone.
        values += ["{oops", '{"a": 1}, {"b": 2', '"c": 3}']
    conn = psycopg2.connect(source_database_url)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE TABLE documents (id text PRIMARY KEY, title text, content text, "
                                   "metadata {}, created_at timestamptz)").format(sql.SQL(column_type)))
            for number, value in enumerate(values):
                cursor.execute("INSERT INTO documents VALUES (%s, NULL, 'Inhalt', %s, NULL)", (f"m{number}", value))
    finally:
        conn.close()
    context = make_context(source_database_url=source_database_url, batch_size=3)
    documents = [d for batch in read_source({"type": "postgres"}, context) for d in batch]
    assert [d.fields["metadata"] for d in documents] == [{"law": "SGB V", "n": [1, {"x": "§ 5"}]}] + [{}] * (
        len(values) - 1
    )
    assert {(d.fields["title"], d.fields["created_at"]) for d in documents} == {("", None)}


def test_custom_table_and_column_names(source_database_url: str, make_context: Callable[..., SourceContext]) -> None:
    table = DocumentTable(table="Akten Bestand", id="akten_id", title="betreff", content="volltext",
                          metadata="merkmale", created_at="angelegt")
    insert(source_database_url, ROWS[:2], table)
    context = make_context(source_database_url=source_database_url, documents_table=table)
    documents = [d for batch in read_source({"type": "postgres", "query": "Krankenversicherungen"}, context)
                 for d in batch]
    assert [(d.id, d.fields["title"], d.fields["metadata"]) for d in documents] == [
        ("d1", "§ 5 Versicherungspflicht", {"law": "SGB V", "topic": "kv"})
    ]


def test_injection_looking_values_are_only_text(context: SourceContext) -> None:
    spec = {"type": "postgres", "query": "'; DROP TABLE documents; -- ) OR 1=1", "metadata": {"law'); --": "x"}}
    assert ids(spec, context) == []
    assert ids({"type": "postgres"}, context) == ["d1", "d2", "d3", "d4", "d5"]


def test_language_is_never_taken_from_the_request(context: SourceContext) -> None:
    with pytest.raises(SourceError, match="language: must be one of german, english"):
        read_source({"type": "postgres", "query": "x", "language": "german'::regconfig, 'x') --"}, context)


def test_full_text_search_uses_the_german_index(context: SourceContext) -> None:
    query, params = build_query({"type": "postgres", "query": "Krankenversicherungen"}, context.documents_table)
    # Bound on the client, as the source's COPY binds them, so the planner sees the same literals.
    with psycopg.connect(context.source_database_url) as conn, psycopg.ClientCursor(conn) as cursor:
        cursor.execute("SET enable_seqscan = off")
        cursor.execute(psycopg.sql.SQL("EXPLAIN ") + query, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "documents_content_fts_german_idx" in plan


def test_ensure_documents_table_is_idempotent(context: SourceContext) -> None:
    ensure_documents_table(context.source_database_url, context.documents_table)
    assert len(ids({"type": "postgres"}, context)) == len(ROWS)


def test_missing_table_raises_source_error(source_database_url: str, make_context) -> None:
    context = make_context(source_database_url=source_database_url)
    with pytest.raises(SourceError, match="cannot read table 'documents'"):
        list(read_source({"type": "postgres"}, context))


def test_unreachable_database_raises_source_error(source_database_url: str, make_context) -> None:
    context = make_context(source_database_url=source_database_url + "_missing")
    with pytest.raises(SourceError, match="cannot connect to the source database"):
        list(read_source({"type": "postgres"}, context))



def test_no_write_gets_through_the_source_connection(context: SourceContext) -> None:
    statement = "INSERT INTO documents (id, content) VALUES ('evil', 'written by a build')"
    with postgres.connect(context) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(statement)
        conn.rollback()
        # Outside the source's own transactions too: the session default is read only.
        conn.autocommit = True
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(statement)
    with psycopg.connect(context.source_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM documents WHERE id = 'evil'").fetchone()[0] == 0


def test_the_source_connects_with_the_role_of_its_own_url(context: SourceContext) -> None:
    role = f"clara_reader_{int(time.time() * 1000) % 10**9}"
    with psycopg.connect(context.source_database_url, autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN").format(psycopg.sql.Identifier(role)))
        admin.execute(psycopg.sql.SQL("GRANT SELECT ON documents TO {}").format(psycopg.sql.Identifier(role)))
    try:
        reader = replace(context, source_database_url=context.source_database_url.replace("postgres@", f"{role}@"))
        assert len(ids({"type": "postgres"}, reader)) == len(ROWS)
        with postgres.connect(reader) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == role
    finally:
        with psycopg.connect(context.source_database_url, autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(role)))
            admin.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))
