"""Where a build's documents come from: the document stores a team already runs, or an upload.

Every source type checks its request spec (`source_problems`) and reads its documents in batches
(`read_source`); where the stores are comes from settings (`SourceContext`), never from a request.

A request is checked in two steps. `request_problems` looks at the spec alone, with the light
`*_spec` modules: the API checks every build request this way and never loads a store's client
library (chromadb, neo4j, psycopg, pyarrow). `source_problems` adds what only the store can tell
(does the Chroma collection exist?); a worker checks that before a build, in the module that reads.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from dataset_builder.documents import Document
from dataset_builder.sources import chroma_spec, neo4j_spec, postgres_spec, upload_spec
from dataset_builder.sources.context import DocumentTable, SourceContext, SourceError
from dataset_builder.sources.neo4j_cypher import DEFAULT_LABEL, NodeFields
from dataset_builder.sources.upload_spec import stored_upload_path

__all__ = [
    "SOURCE_TYPES",
    "DocumentTable",
    "NodeFields",
    "SourceContext",
    "SourceError",
    "SourceType",
    "context_from_settings",
    "ensure_documents_table",
    "read_source",
    "request_problems",
    "source_problems",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceType:
    """How one type of source checks its spec and reads its documents."""

    problems: Callable[[Mapping[str, Any], SourceContext, str], list[str]]
    """(spec, context, prefix) -> problems the spec shows without its store, each starting with the prefix."""
    reader: str
    """The module that reaches the store: read(valid spec, context) yields batches of documents, and an
    optional store_problems(spec, context, prefix) checks what only the store can tell. It is imported
    on first use, so that checking a request loads no store's client library."""

    def module(self) -> ModuleType:
        """The reading module, imported now if it was not yet."""
        return importlib.import_module(self.reader)


SOURCE_TYPES: dict[str, SourceType] = {
    "postgres": SourceType(postgres_spec.spec_problems, "dataset_builder.sources.postgres"),
    "chroma": SourceType(chroma_spec.spec_problems, "dataset_builder.sources.chroma"),
    "neo4j": SourceType(neo4j_spec.spec_problems, "dataset_builder.sources.neo4j_source"),
    "upload": SourceType(upload_spec.spec_problems, "dataset_builder.sources.upload_source"),
}


def request_problems(spec: Mapping[str, Any], context: SourceContext, index: int) -> list[str]:
    """Return every problem the request's sources[index] shows without reaching its store."""
    return _problems(spec, context, f"sources[{index}]", reach_store=False)


def source_problems(spec: Mapping[str, Any], context: SourceContext, index: int) -> list[str]:
    """Return every problem with the request's sources[index], its store asked too, each prefixed "sources[index]"."""
    return _problems(spec, context, f"sources[{index}]", reach_store=True)


def read_source(spec: Mapping[str, Any], context: SourceContext) -> Iterator[list[Document]]:
    """Return the batches of one source's documents, at most context.batch_size each; SourceError if invalid."""
    # Checked here, not on the first batch, so a bad spec fails before a build starts writing.
    problems = _problems(spec, context, "source", reach_store=True)
    if problems:
        raise SourceError("; ".join(problems))
    logger.info("Reading a %s source", spec["type"])
    return SOURCE_TYPES[spec["type"]].module().read(spec, context)


def ensure_documents_table(url: str, table: DocumentTable = DocumentTable()) -> None:
    """Create the documents table and its text-search index if missing (see postgres.ensure_documents_table)."""
    SOURCE_TYPES["postgres"].module().ensure_documents_table(url, table)


def _problems(spec: Mapping[str, Any], context: SourceContext, prefix: str, *, reach_store: bool) -> list[str]:
    """Check the spec is an object of a known type, then let that type check the rest, its store too if asked."""
    if not isinstance(spec, Mapping):
        return [f"{prefix}: must be an object"]
    name = spec.get("type")
    source_type = SOURCE_TYPES.get(name) if isinstance(name, str) else None
    if source_type is None:
        return [f"{prefix}.type: must be one of {', '.join(SOURCE_TYPES)}"]
    # A source the deployment does not allow is refused before its store is even asked about it.
    problems = allowlist_problems(spec, context, prefix) or source_type.problems(spec, context, prefix)
    if problems or not reach_store:
        return problems
    store_problems = getattr(source_type.module(), "store_problems", None)
    return store_problems(spec, context, prefix) if store_problems is not None else []


def allowlist_problems(spec: Mapping[str, Any], context: SourceContext, prefix: str) -> list[str]:
    """Refuse a table, collection or label the deployment's CLARA_SOURCE_ALLOWLIST does not name."""
    if not context.allowlist or spec["type"] == "upload":
        # Uploads are the users' own records, not a store of the deployment's.
        return []
    if spec["type"] == "postgres":
        field, name = "type", context.documents_table.table
    elif spec["type"] == "chroma":
        field, name = "collection", spec.get("collection")
    else:
        field, name = "label", spec.get("label", DEFAULT_LABEL)
    if not isinstance(name, str) or f"{spec['type']}:{name}" in context.allowlist:
        return []
    allowed = [entry.partition(":")[2] for entry in context.allowlist if entry.startswith(f"{spec['type']}:")]
    where = {"type": "table", "collection": "collection", "label": "label"}[field]
    return [f"{prefix}.{field}: {spec['type']} {where} {name!r} is not allowed here; allowed: "
            f"{', '.join(allowed) or 'none'}"]


def context_from_settings(settings: Any, *, upload_path: Callable[[str], Path] | None = None,
                          batch_size: int | None = None) -> SourceContext:
    """Build the source context from Clara's settings; upload_path and batch_size replace theirs when given."""
    # Without upload_path, an upload's records are at <datasets_dir>/<dataset id>/records.parquet.
    datasets_dir = Path(getattr(settings, "datasets_dir", Path("var/datasets")))
    table = DocumentTable.from_setting(getattr(settings, "documents_table", "documents"),
                                       getattr(settings, "documents_columns", ""))
    return SourceContext(
        source_database_url=getattr(settings, "source_database_url", "") or settings.database_url,
        documents_table=table,
        chroma_path=str(getattr(settings, "chroma_path", Path("var/chroma"))),
        chroma_url=getattr(settings, "chroma_url", "") or None,
        neo4j_uri=getattr(settings, "neo4j_uri", "") or None,
        neo4j_user=getattr(settings, "neo4j_user", "") or None,
        neo4j_password=getattr(settings, "neo4j_password", "") or None,
        upload_path=upload_path or partial(stored_upload_path, datasets_dir),
        batch_size=batch_size or getattr(settings, "dataset_batch_size", 1000),
        allowlist=tuple(getattr(settings, "source_allowlist", ())),
    )
