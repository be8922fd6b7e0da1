"""The chroma source: documents of a Chroma collection, by semantic query or by metadata filter.

Queries are embedded by Clara's offline all-MiniLM-L6-v2 function and sent as query embeddings,
so collections that an existing deployment filled with Chroma's default function (the same model)
can be queried too, without Chroma ever reaching for a download.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import chromadb
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import validate_where
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import ChromaError, NotFoundError

from dataset_builder.documents import Document
from dataset_builder.sources.chroma_spec import DEFAULT_TOP_K, chroma_where, spec_problems
from dataset_builder.sources.context import SourceContext, SourceError
from dataset_builder.sources.embeddings import FUNCTION_NAME, embedding_function, is_compatible

__all__ = ["chroma_client", "chroma_where", "open_collection", "read", "spec_problems", "store_problems"]

logger = logging.getLogger(__name__)

INCLUDE = ["documents", "metadatas"]


def chroma_client(context: SourceContext) -> ClientAPI:
    """The HTTP client when chroma_url is set, else the embedded client on chroma_path."""
    # Chroma keeps one client per path and refuses a second with other settings: always these.
    settings = ChromaSettings(anonymized_telemetry=False)
    if context.chroma_url:
        url = urlsplit(context.chroma_url)
        ssl = url.scheme == "https"
        port = url.port or (443 if ssl else 8000)
        return chromadb.HttpClient(host=url.hostname or "localhost", port=port, ssl=ssl, settings=settings)
    return chromadb.PersistentClient(path=str(context.chroma_path), settings=settings)


def open_collection(client: ClientAPI, name: str) -> Collection:
    """Open a collection with Clara's embedding function, or as it is when made with a compatible one."""
    collection = client.get_collection(name)
    persisted = (collection.configuration_json or {}).get("embedding_function") or {}
    if persisted.get("name") in (None, FUNCTION_NAME):
        return client.get_collection(name, embedding_function=embedding_function())
    # Chroma refuses to open a collection with a function of another name; queries carry embeddings.
    return collection


def store_problems(spec: Mapping[str, Any], context: SourceContext, prefix: str) -> list[str]:
    """Problems of a spec that passed spec_problems that only Chroma sees: its where clause, the collection."""
    if spec.get("where"):
        try:
            validate_where(chroma_where(spec["where"]))
        except ValueError as error:
            return [f"{prefix}.where: {error}"]
    return _collection_problems(spec, context, prefix)


def _collection_problems(spec: Mapping[str, Any], context: SourceContext, prefix: str) -> list[str]:
    """Check the collection exists and, for a query, was embedded with our model."""
    name = spec["collection"]
    try:
        collection = open_collection(chroma_client(context), name)
    except NotFoundError:
        return [f"{prefix}.collection: no Chroma collection named {name!r}"]
    except (ChromaError, ValueError) as error:
        return [f"{prefix}: cannot open Chroma collection {name!r} ({error})"]
    persisted = (collection.configuration_json or {}).get("embedding_function")
    if "query_text" in spec and not is_compatible(persisted):
        return [f"{prefix}.query_text: collection {name!r} was embedded with {persisted.get('name')!r}; "
                f"Clara can only query collections embedded with all-MiniLM-L6-v2"]
    return []


def read(spec: Mapping[str, Any], context: SourceContext) -> Iterator[list[Document]]:
    """Yield the collection's matching documents, closest first for a query, in batches."""
    name = spec["collection"]
    try:
        collection = open_collection(chroma_client(context), name)
    except NotFoundError as error:
        raise SourceError(f"chroma: no collection named {name!r}") from error
    except (ChromaError, ValueError) as error:
        raise SourceError(f"chroma: cannot open collection {name!r} ({error})") from error
    where = chroma_where(spec.get("where"))
    top_k = spec.get("top_k", DEFAULT_TOP_K)
    if spec.get("query_text"):
        yield from _query(collection, spec["query_text"], top_k, where, context.batch_size)
    else:
        yield from _get(collection, top_k, where, context.batch_size)


def _query(collection: Collection, text: str, top_k: int, where: dict[str, Any] | None,
           batch_size: int) -> Iterator[list[Document]]:
    """The top_k documents nearest the text, nearest first."""
    embeddings = embedding_function().embed_query([text])
    result = collection.query(query_embeddings=embeddings, n_results=top_k, where=where, include=INCLUDE)
    ids, texts, metadatas = result["ids"][0], result["documents"][0], result["metadatas"][0]
    logger.info("Chroma query on %s returned %s documents", collection.name, len(ids))
    for start in range(0, len(ids), batch_size):
        end = start + batch_size
        yield [_document(*row) for row in zip(ids[start:end], texts[start:end], metadatas[start:end], strict=True)]


def _get(collection: Collection, top_k: int, where: dict[str, Any] | None,
         batch_size: int) -> Iterator[list[Document]]:
    """Up to top_k documents matching the filter, a page of batch_size at a time."""
    offset = 0
    while offset < top_k:
        size = min(batch_size, top_k - offset)
        page = collection.get(where=where, limit=size, offset=offset, include=INCLUDE)
        ids = page["ids"]
        if ids:
            yield [_document(*row) for row in zip(ids, page["documents"], page["metadatas"], strict=True)]
        if len(ids) < size:
            return
        offset += len(ids)


def _document(chroma_id: str, text: str | None, metadata: Mapping[str, Any] | None) -> Document:
    """One Chroma record as a document; the title, if any, is kept in metadata['title']."""
    metadata = dict(metadata or {})
    title = metadata.get("title")
    fields = {"title": title if isinstance(title, str) else "", "content": text or "", "metadata": metadata}
    return Document(source="chroma", id=chroma_id, fields=fields)
