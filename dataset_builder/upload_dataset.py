"""Turning an uploaded file into a dataset: validated, stored for builds, exported for training."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from dataset_builder import BUILDER_VERSION
from dataset_builder.build import MANIFEST_FILE
from dataset_builder.export import DatasetWriter
from dataset_builder.formatting import record_kind, token_estimate
from dataset_builder.sources.upload_source import upload_document
from dataset_builder.sources.upload_spec import UPLOAD_RECORDS_FILE
from dataset_builder.sources.upload_spec import incoming_path as incoming_path
from dataset_builder.sources.uploads import UploadError, UploadLimits, UploadStopped, store_upload

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ["jsonl", "parquet", "csv"]


class UploadRejected(ValueError):
    """The uploaded file has bad records; `problems` names each by line or row and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def store_uploaded_dataset(upload: Path, file_format: str, out_dir: Path, *, dataset_id: str, name: str,
                           filename: str, limits: UploadLimits = UploadLimits(), escape_formulas: bool = True,
                           should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any] | None:
    """Check every record, store them, export them as the train split, and return the manifest.

    Raises UploadRejected naming the bad records; returns None, storing nothing, when should_stop said so.
    """
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        try:
            count = store_upload(upload, file_format, partial / UPLOAD_RECORDS_FILE, limits,
                                 should_stop=should_stop)
            kinds, files, tokens = _export(partial, dataset_id, limits, escape_formulas, should_stop)
        except UploadError as exc:
            raise UploadRejected(exc.problems) from None
        except UploadStopped:
            shutil.rmtree(partial, ignore_errors=True)
            return None
        manifest = {
            "name": name, "source": {"type": "upload", "filename": filename, "format": file_format},
            "counts": {"read": count, "written": count}, "records": {"train": count, "validation": 0},
            "format": kinds[0] if len(kinds) == 1 else "mixed", "token_estimate": tokens, "files": files,
            "created_at": datetime.now(UTC).isoformat(), "builder_version": BUILDER_VERSION,
        }
        (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)
                                             + "\n", encoding="utf-8")
        if out_dir.exists():
            # A retried attempt that got this far before.
            shutil.rmtree(out_dir)
        os.replace(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("Stored upload %s as dataset %s with %s records.", filename, dataset_id, count)
    return manifest


def directory_bytes(directory: Path) -> int:
    """Bytes the files under a directory take, for the owner's storage quota."""
    return sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file())


def _export(directory: Path, dataset_id: str, limits: UploadLimits, escape_formulas: bool,
            should_stop: Callable[[], bool]) -> tuple[list[str], dict[str, Any], int]:
    """Write the stored records as train files; a file mixing record shapes gets JSONL only."""
    stored = pq.ParquetFile(directory / UPLOAD_RECORDS_FILE)
    kinds: list[str] = []
    # Stored records passed the record limit, so batches of batch_rows stay within the batch budget.
    for batch in stored.iter_batches(batch_size=limits.batch_rows):
        for row in batch.to_pylist():
            kind = record_kind(upload_document(row, dataset_id, 0).fields)
            if kind not in kinds:
                kinds.append(kind)
    # Parquet and CSV hold one schema, so only a single-shape upload gets them; trainers read mixed JSONL.
    formats = EXPORT_FORMATS if len(kinds) == 1 else ["jsonl"]
    writer = DatasetWriter(directory, formats, kinds[0], escape_formulas=escape_formulas) if len(kinds) == 1 else None
    tokens = number = 0
    for batch in stored.iter_batches(batch_size=limits.batch_rows):
        if should_stop():
            if writer is not None:
                writer.abort()
            raise UploadStopped(dataset_id)
        records = []
        for row in batch.to_pylist():
            number += 1
            record = upload_document(row, dataset_id, number).fields
            if "instruction" in record:
                record.setdefault("input", "")
            records.append(record)
        tokens += sum(token_estimate(record) for record in records)
        if writer is not None:
            writer.write("train", records)
        else:
            _append_jsonl(directory / "train.jsonl", records)
    files = writer.close() if writer is not None else _jsonl_files(directory)
    return kinds, files, tokens


def _append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")


def _jsonl_files(directory: Path) -> dict[str, Any]:
    """The file entries of a JSONL-only export, read in chunks: the files may be large."""
    entries = {}
    for split in ("train", "validation"):
        path = directory / f"{split}.jsonl"
        path.touch()
        digest, lines = hashlib.sha256(), 0
        with path.open("rb") as handle:
            while chunk := handle.read(2**20):
                digest.update(chunk)
                lines += chunk.count(b"\n")
        entries[split] = {"path": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest(),
                          "records": lines}
    return {"jsonl": entries}
