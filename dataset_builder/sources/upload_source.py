"""The upload source: the records of an uploaded dataset, as stored by uploads.store_upload."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dataset_builder.documents import Document
from dataset_builder.sources.context import SourceContext, SourceError
from dataset_builder.sources.upload_spec import spec_problems

__all__ = ["INSTRUCTION_FIELDS", "read", "spec_problems", "upload_document"]

logger = logging.getLogger(__name__)

INSTRUCTION_FIELDS = ("instruction", "input", "output")


def read(spec: Mapping[str, Any], context: SourceContext) -> Iterator[list[Document]]:
    """Yield the dataset's records as documents, in file order, in batches of at most batch_size."""
    dataset_id = spec["dataset_id"]
    try:
        path = context.upload_path(dataset_id)
        parquet = pq.ParquetFile(path)
    except (ValueError, OSError, pa.ArrowException) as error:
        raise SourceError(f"upload: cannot open dataset {dataset_id!r} ({error})") from error
    number = 0
    with parquet:
        for batch in parquet.iter_batches(batch_size=context.batch_size):
            documents = []
            for row in batch.to_pylist():
                number += 1
                documents.append(upload_document(row, dataset_id, number))
            if documents:
                yield documents
    logger.info("Read %s records of uploaded dataset %s", number, dataset_id)


def upload_document(row: Mapping[str, Any], dataset_id: str, number: int) -> Document:
    """One stored record as a document whose text fields are those of its shape."""
    record_id = row.get("id")
    document_id = f"{dataset_id}:{number}" if record_id in (None, "") else str(record_id)
    if row.get("messages") is not None:
        shape: tuple[str, ...] = ("messages",)
    elif row.get("text") is not None:
        shape = ("text",)
    else:
        shape = INSTRUCTION_FIELDS
    fields = {name: row[name] for name in shape if row.get(name) is not None}
    return Document(source="upload", id=document_id, fields=fields, text_fields=shape)
