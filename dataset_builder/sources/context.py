"""What every source reads with: where the stores are, how documents map onto them, batch size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from dataset_builder.sources.neo4j_cypher import NodeFields


class SourceError(RuntimeError):
    """Raised when a source cannot be read; the message names the source and is safe to show users."""


@dataclass(frozen=True)
class DocumentTable:
    """Where documents live in an existing PostgreSQL schema; every name comes from settings."""

    table: str = "documents"
    id: str = "id"
    title: str = "title"
    content: str = "content"
    metadata: str = "metadata"
    """A jsonb column; metadata filters use containment (@>)."""
    created_at: str = "created_at"
    """A timestamp column; created_after and created_before compare against it."""

    @classmethod
    def from_setting(cls, table: str, columns: str = "") -> DocumentTable:
        """Build from the table name and "id=doc_id,title=name,..." as CLARA_DOCUMENTS_COLUMNS spells them."""
        names: dict[str, str] = {}
        known = [item.name for item in fields(cls) if item.name != "table"]
        for part in filter(None, (part.strip() for part in columns.split(","))):
            key, _, value = (piece.strip() for piece in part.partition("="))
            if key not in known or not value:
                raise ValueError(f"documents columns must look like id=doc_id,title=name with keys from "
                                 f"{', '.join(known)}; not {part!r}")
            names[key] = value
        return cls(table=table or "documents", **names)


@dataclass(frozen=True)
class SourceContext:
    """Deployment-side settings of the sources; nothing here comes from a request."""

    source_database_url: str
    """PostgreSQL holding the documents table (CLARA_SOURCE_DATABASE_URL)."""
    documents_table: DocumentTable
    """Table and column names of the documents in that database."""
    chroma_path: str
    """Directory of the embedded Chroma PersistentClient."""
    chroma_url: str | None
    """When set, Chroma is reached over HTTP at this URL instead of the embedded client."""
    neo4j_uri: str | None
    """Bolt or neo4j URI of the graph; None when no graph is configured."""
    neo4j_user: str | None
    neo4j_password: str | None
    upload_path: Callable[[str], Path]
    """Maps the id of an uploaded dataset to its stored Parquet records file."""
    batch_size: int = 1000
    """Most documents per yielded batch."""
    neo4j_fields: NodeFields = field(default_factory=NodeFields)
    """Which node properties hold a document's id, title, content, metadata and creation time."""
    allowlist: tuple[str, ...] = ()
    """What builds may read, as postgres:<table>, chroma:<collection>, neo4j:<label>; empty: anything."""
