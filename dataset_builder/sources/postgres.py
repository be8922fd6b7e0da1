"""The postgres source: documents of an existing table, found by full-text search and filters.

Only values from the request reach the database, and only as parameters; table and column names
come from settings and are quoted as identifiers; the text-search configuration is picked from a
whitelist. Rows stream through a binary COPY of the query, read a batch at a time, so a million-row
read never sits in memory: the server waits on the socket until the reader asks for more.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from typing import Any

import psycopg
from psycopg import sql

from dataset_builder.documents import Document
from dataset_builder.sources.context import DocumentTable, SourceContext, SourceError
from dataset_builder.sources.postgres_spec import DEFAULT_LANGUAGE, LANGUAGES, spec_problems
from dataset_builder.sources.spec import DEFAULT_LIMIT

__all__ = ["DocumentTable", "LANGUAGES", "build_query", "ensure_documents_table", "read", "spec_problems"]

logger = logging.getLogger(__name__)

JSON_TYPES = (114, 3802)
"""The type oids of json and jsonb: the server has checked their values, so they are valid JSON text."""
COLUMN_TYPES = ["text"] * 5
"""The query casts every column to text, so the binary COPY rows decode with one loader whatever the table."""


def _text_vector(table: DocumentTable, config: sql.Composable) -> sql.Composed:
    """The tsvector expression; queries and the index share it so the planner can use the index."""
    return sql.SQL("to_tsvector({config}, coalesce({title}, '') || ' ' || coalesce({content}, ''))").format(
        config=config, title=sql.Identifier(table.title), content=sql.Identifier(table.content)
    )


def build_query(spec: Mapping[str, Any], table: DocumentTable) -> tuple[sql.Composed, list[Any]]:
    """Build the parameterised SELECT for a validated spec: filters, order by id, limit."""
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    if spec.get("query"):
        config = LANGUAGES[spec.get("language", DEFAULT_LANGUAGE)]
        conditions.append(
            sql.SQL("{vector} @@ websearch_to_tsquery(%s::regconfig, %s)").format(
                vector=_text_vector(table, sql.SQL("%s::regconfig"))
            )
        )
        params += [config, config, spec["query"]]
    if spec.get("metadata"):
        conditions.append(sql.SQL("{} @> %s::jsonb").format(sql.Identifier(table.metadata)))
        params.append(json.dumps(spec["metadata"]))
    if "created_after" in spec:
        conditions.append(sql.SQL("{} >= %s").format(sql.Identifier(table.created_at)))
        params.append(spec["created_after"])
    if "created_before" in spec:
        conditions.append(sql.SQL("{} < %s").format(sql.Identifier(table.created_at)))
        params.append(spec["created_before"])
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    # Every column as text, whatever its type; the server renders created_at as ISO 8601 text, since
    # parsing timestamps in Python costs more than the rest. ORDER BY names the table's column, not the
    # text output column of the same name, so an integer id still sorts as a number and uses its index.
    query = sql.SQL("SELECT {id}::text, {title}::text, {content}::text, {metadata}::text, "
                    "to_json({created_at}) #>> '{{}}' FROM {table}{where} ORDER BY {table}.{id} LIMIT %s").format(
        id=sql.Identifier(table.id),
        title=sql.Identifier(table.title),
        content=sql.Identifier(table.content),
        metadata=sql.Identifier(table.metadata),
        created_at=sql.Identifier(table.created_at),
        table=sql.Identifier(table.table),
        where=where,
    )
    params.append(spec.get("limit", DEFAULT_LIMIT))
    return query, params


def read(spec: Mapping[str, Any], context: SourceContext) -> Iterator[list[Document]]:
    """Yield the matching rows as documents, in batches of at most context.batch_size."""
    table = context.documents_table
    query, params = build_query(spec, table)
    conn = connect(context)
    try:
        json_metadata = _metadata_is_json(conn, table)
        # COPY streams: the server fills the socket while this process decodes, where a cursor's FETCH
        # leaves one side idle per batch. COPY takes no bind parameters, so psycopg merges the values on
        # the client as quoted literals, as psycopg2's execute always did.
        copy_query = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)
        with conn.cursor() as cursor, cursor.copy(copy_query, params) as copy:
            copy.set_types(COLUMN_TYPES)
            rows = copy.rows()
            while True:
                with _cyclic_gc_paused():
                    batch = _documents(list(islice(rows, context.batch_size)), json_metadata)
                if not batch:
                    break
                yield batch
    except psycopg.Error as error:
        raise SourceError(f"postgres: cannot read table {table.table!r} ({_first_line(error)})") from error
    finally:
        conn.close()


def connect(context: SourceContext) -> psycopg.Connection:
    """A read-only connection to the source database, with CLARA_SOURCE_DATABASE_URL's role.

    The source is someone else's system of record: the session's default and every transaction are read
    only, so even a role that may write cannot through this connection.
    """
    try:
        conn = psycopg.connect(context.source_database_url)
    except psycopg.OperationalError as error:
        raise SourceError(f"postgres: cannot connect to the source database ({_first_line(error)})") from error
    try:
        conn.autocommit = True
        conn.execute("SET default_transaction_read_only = on")
        conn.autocommit = False
        conn.read_only = True
    except psycopg.Error as error:
        conn.close()
        raise SourceError(f"postgres: cannot open a read-only session ({_first_line(error)})") from error
    return conn


def _metadata_is_json(conn: psycopg.Connection, table: DocumentTable) -> bool:
    """Whether the metadata column is json or jsonb, whose values the server has already checked."""
    with conn.cursor() as cursor:
        cursor.execute(sql.SQL("SELECT {} FROM {} LIMIT 0").format(sql.Identifier(table.metadata),
                                                                    sql.Identifier(table.table)))
        return cursor.description is not None and cursor.description[0].type_code in JSON_TYPES


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch of acyclic documents is built."""
    # Each row allocates a tuple, a document and two dicts, none in a cycle: left on, the collector
    # walks the young batch over and over, and promotes it into full collections, for nothing (up to a
    # third of the client's time). The pause is process-wide but short and never spans a yield, so the
    # consumer always runs with the collector on; reference counting still frees meanwhile, and
    # whatever cycles other threads make are only collected a batch later.
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _documents(rows: list[tuple[Any, ...]], json_metadata: bool) -> list[Document]:
    """Turn (id, title, content, metadata text, created_at text) rows into documents."""
    metadatas = _decode_metadata([row[3] for row in rows], json_metadata)
    # Positional arguments: keywords make the dataclass call measurably slower at 100,000 rows a read.
    return [
        Document("postgres", row_id, {
            "title": title or "",
            "content": content or "",
            "metadata": metadata if isinstance(metadata, dict) else {},
            "created_at": created_at,
        })
        for (row_id, title, content, _, created_at), metadata in zip(rows, metadatas, strict=True)
    ]


def _decode_metadata(values: list[Any], json_metadata: bool) -> list[Any]:
    """Decode a batch of metadata texts; what is not JSON becomes None."""
    if json_metadata:
        # Valid JSON values joined by commas make an array of exactly len(values) items.
        return json.loads("[" + ",".join("null" if value is None else value for value in values) + "]")
    # A text column may hold anything, so each value is decoded on its own.
    return [_loads_or_none(value) for value in values]


def _loads_or_none(value: Any) -> Any:
    """The decoded JSON of one text value; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def _first_line(error: Exception) -> str:
    """The first line of a driver error, which carries the cause without the SQL."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def ensure_documents_table(url: str, table: DocumentTable = DocumentTable()) -> None:
    """Create the documents table and its German full-text and metadata indexes if missing."""
    names = {
        "table": sql.Identifier(table.table),
        "id": sql.Identifier(table.id),
        "title": sql.Identifier(table.title),
        "content": sql.Identifier(table.content),
        "metadata": sql.Identifier(table.metadata),
        "created_at": sql.Identifier(table.created_at),
        "fts_index": sql.Identifier(f"{table.table}_{table.content}_fts_german_idx"[:63]),
        "metadata_index": sql.Identifier(f"{table.table}_{table.metadata}_idx"[:63]),
        "vector": _text_vector(table, sql.SQL("'german'::regconfig")),
    }
    statements = (
        "CREATE TABLE IF NOT EXISTS {table} ({id} text PRIMARY KEY, {title} text NOT NULL DEFAULT '', "
        "{content} text NOT NULL, {metadata} jsonb NOT NULL DEFAULT '{{}}'::jsonb, "
        "{created_at} timestamptz NOT NULL DEFAULT now())",
        "CREATE INDEX IF NOT EXISTS {fts_index} ON {table} USING gin ({vector})",
        "CREATE INDEX IF NOT EXISTS {metadata_index} ON {table} USING gin ({metadata} jsonb_path_ops)",
    )
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        for statement in statements:
            cursor.execute(sql.SQL(statement).format(**names))
    logger.info("Documents table %s is in place", table.table)
