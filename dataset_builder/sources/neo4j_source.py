"""The neo4j source: document nodes around seed documents, or nodes selected by label and properties.

Two forms of spec:
    {"type": "neo4j", "seed_ids": ["bdsg#3"], "relationships": ["CITES"], "depth": 2}
    {"type": "neo4j", "label": "Document", "properties": {"law": "BDSG"}, "limit": 1000}
The Cypher comes from neo4j_cypher; records stream from the official driver in batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import neo4j
from neo4j.exceptions import DriverError, Neo4jError

from dataset_builder.documents import Document
from dataset_builder.sources.context import SourceContext, SourceError
from dataset_builder.sources.neo4j_cypher import NodeFields, spec_query
from dataset_builder.sources.neo4j_spec import SCALARS, spec_problems
from dataset_builder.sources.spec import DEFAULT_LIMIT

__all__ = ["read", "record_document", "spec_problems"]

logger = logging.getLogger(__name__)


def read(spec: Mapping[str, Any], context: SourceContext) -> Iterator[list[Document]]:
    """Yield the selected nodes as documents, in batches of at most context.batch_size."""
    if not context.neo4j_uri:
        raise SourceError("neo4j: not configured (set CLARA_NEO4J_URI)")
    query, parameters = spec_query(spec, spec.get("limit", DEFAULT_LIMIT), context.neo4j_fields)
    auth = (context.neo4j_user, context.neo4j_password or "") if context.neo4j_user else None
    try:
        with neo4j.GraphDatabase.driver(context.neo4j_uri, auth=auth) as driver, driver.session(
            default_access_mode=neo4j.READ_ACCESS, fetch_size=context.batch_size
        ) as session:
            batch: list[Document] = []
            for record in session.run(query, parameters):
                batch.append(record_document(record, context.neo4j_fields))
                if len(batch) == context.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
    except (DriverError, Neo4jError) as error:
        raise SourceError(f"neo4j: cannot read the graph ({error})") from error


def record_document(record: Mapping[str, Any], node_fields: NodeFields = NodeFields()) -> Document:
    """Map one (element_id, properties) record to a document; other properties become metadata."""
    properties = dict(record["properties"] or {})
    node_id = properties.pop(node_fields.id, None)
    title = properties.pop(node_fields.title, None)
    content = properties.pop(node_fields.content, None)
    created_at = properties.pop(node_fields.created_at, None)
    extra = properties.pop(node_fields.metadata, None)
    metadata = {key: _plain(value) for key, value in properties.items()}
    metadata.update(_metadata_object(extra))
    fields = {
        "title": title if isinstance(title, str) else "",
        "content": content if isinstance(content, str) else "",
        "metadata": metadata,
        "created_at": None if created_at is None else _plain(created_at),
    }
    document_id = record["element_id"] if node_id is None else node_id
    return Document(source="neo4j", id=str(document_id), fields=fields)


def _metadata_object(value: Any) -> dict[str, Any]:
    """Neo4j properties cannot hold maps, so metadata may arrive as a JSON object string."""
    if not isinstance(value, str):
        return {} if value is None else {"metadata": _plain(value)}
    try:
        decoded = json.loads(value)
    except ValueError:
        return {"metadata": value}
    return decoded if isinstance(decoded, dict) else {"metadata": decoded}


def _plain(value: Any) -> Any:
    """A JSON-ready form of a property value: temporal values as ISO strings, points as text."""
    if value is None or isinstance(value, SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    iso = getattr(value, "iso_format", None) or getattr(value, "isoformat", None)
    return iso() if callable(iso) else str(value)
