"""Streaming, deterministic export of formatted records as JSONL, Parquet and CSV, one file per split.

Files are named <split>.<format> (train.jsonl, validation.parquet, ...). The same records in the
same order give byte-identical files whatever the batching (with the same pyarrow, whose version
Parquet files name), so each file's sha256 addresses its content:
- JSONL: one `json.dumps(record, sort_keys=True, ensure_ascii=False)` per line, the format the
  trainers read. An empty split is an empty file, which `datasets` refuses to load as a split.
- Parquet: a fixed Arrow schema per kind, zstd level 3, no timestamps; row groups end after a
  fixed number of rows or characters counted from the records themselves, never where a batch
  ended, so batch sizes do not show in the bytes.
- CSV: the same columns with a header row; chat's messages column holds the message list as a
  JSON string (the same dumps as JSONL), since CSV has no nested values. Values may contain
  newlines, so readers need pyarrow's `ParseOptions(newlines_in_values=True)` or an RFC 4180 reader.
  Unless escape_formulas is off, a cell starting with =, +, -, @, a tab or a carriage return gets a
  leading single quote, so a spreadsheet shows it as text instead of running it as a formula.

out_dir must be fresh: files are created exclusively and never overwritten. Callers write into a
temporary sibling directory and rename it into place once close() has returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from dataset_builder.formatting import KINDS, RECORD_KEYS, Kind
from dataset_builder.split import SPLITS

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("jsonl", "parquet", "csv")
ROW_GROUP_ROWS = 8192
ROW_GROUP_CHARS = 64 * 2**20
PARQUET_OPTIONS: dict[str, Any] = {
    # Spelled out so a pyarrow upgrade changing its defaults cannot silently change the bytes.
    "compression": "zstd",
    "compression_level": 3,
    "version": "2.6",
    "use_dictionary": True,
    "write_statistics": True,
}
CSV_OPTIONS = pcsv.WriteOptions(include_header=True, delimiter=",", quoting_style="needed")
# The characters that make a spreadsheet read a cell as a formula (OWASP's CSV injection list).
FORMULA_START = r"^([=+\-@\t\r])"

_MESSAGE = pa.struct([pa.field("role", pa.string(), nullable=False), pa.field("content", pa.string(), nullable=False)])
SCHEMAS: dict[str, pa.Schema] = {
    "text": pa.schema([pa.field("text", pa.string(), nullable=False)]),
    "instruction": pa.schema([pa.field(name, pa.string(), nullable=False) for name in RECORD_KEYS["instruction"]]),
    "chat": pa.schema([pa.field("messages", pa.list_(_MESSAGE), nullable=False)]),
}
"""The Arrow schema of each kind's records, shared by the Parquet files."""
CSV_SCHEMAS: dict[str, pa.Schema] = {
    **SCHEMAS,
    "chat": pa.schema([pa.field("messages", pa.string(), nullable=False)]),
}
"""The CSV columns of each kind: chat's messages as a JSON string."""

Files = Mapping[str, Mapping[str, Mapping[str, Any]]]


@dataclass
class _RowGroup:
    """The rows of one split waiting to become the next Parquet row group."""

    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    chars: int = 0


class DatasetWriter:
    """Writes one dataset's records, batch by batch, into <split>.<format> files under a fresh out_dir."""

    def __init__(
        self,
        out_dir: Path,
        formats: Sequence[str],
        kind: Kind,
        *,
        row_group_rows: int = ROW_GROUP_ROWS,
        row_group_chars: int = ROW_GROUP_CHARS,
        escape_formulas: bool = True,
    ) -> None:
        unknown = [name for name in formats if name not in FORMATS]
        if kind not in KINDS or unknown or not formats:
            raise ValueError(f"kind must be one of {KINDS} and formats a non-empty subset of {FORMATS}")
        self.out_dir = Path(out_dir)
        self.formats: tuple[str, ...] = tuple(dict.fromkeys(formats))
        self.kind = kind
        self._row_group_rows = row_group_rows
        self._row_group_chars = row_group_chars
        self._escape_formulas = escape_formulas
        self._handles: dict[tuple[str, str], BinaryIO] = {}
        self._parquet: dict[str, pq.ParquetWriter] = {}
        self._csv: dict[str, pcsv.CSVWriter] = {}
        self._groups = {split: _RowGroup() for split in SPLITS}
        self._records = dict.fromkeys(SPLITS, 0)
        self._closed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            for split in SPLITS:
                self._open(split)
        except BaseException:
            self.abort()
            raise

    def _open(self, split: str) -> None:
        """Create a split's files exclusively; every split gets files, so empty ones are valid too."""
        for name in self.formats:
            self._handles[name, split] = open(self.out_dir / f"{split}.{name}", "xb")
        if "parquet" in self.formats:
            self._parquet[split] = pq.ParquetWriter(
                self._handles["parquet", split], SCHEMAS[self.kind], **PARQUET_OPTIONS
            )
        if "csv" in self.formats:
            self._csv[split] = pcsv.CSVWriter(
                self._handles["csv", split], CSV_SCHEMAS[self.kind], write_options=CSV_OPTIONS
            )

    def write(self, split: str, records: list[dict[str, Any]]) -> None:
        """Append a batch of records to a split; a batch with a malformed record writes nothing."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        if not records:
            return
        chars = [self._record_chars(index, record) for index, record in enumerate(records)]
        if "jsonl" in self.formats:
            lines = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n" for record in records)
            self._handles["jsonl", split].write("".join(lines).encode("utf-8"))
        if "csv" in self.formats:
            self._csv[split].write_table(self._csv_table(records))
        if "parquet" in self.formats:
            self._add_rows(split, pa.Table.from_pylist(records, schema=SCHEMAS[self.kind]), chars)
        self._records[split] += len(records)

    def _record_chars(self, index: int, record: Any) -> int:
        """Return a record's characters, the measure of row group size; raise ValueError when malformed."""
        keys = RECORD_KEYS[self.kind]
        if not isinstance(record, dict) or record.keys() != set(keys):
            raise ValueError(f"record {index} of the batch must have exactly the keys {', '.join(keys)}")
        if self.kind != "chat":
            if not all(isinstance(record[key], str) for key in keys):
                raise ValueError(f"record {index} of the batch: {', '.join(keys)} must be strings")
            return sum(len(record[key]) for key in keys)
        messages = record["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.keys() == {"role", "content"} and all(isinstance(v, str) for v in m.values())
            for m in messages
        ):
            raise ValueError(f"record {index} of the batch: messages must be a list of {{role, content}} strings")
        return sum(len(message["content"]) for message in messages)

    def _csv_table(self, records: list[dict[str, Any]]) -> pa.Table:
        """Return a batch as CSV columns: chat's messages become JSON strings, formulas are escaped."""
        if self.kind != "chat":
            table = pa.Table.from_pylist(records, schema=CSV_SCHEMAS[self.kind])
        else:
            messages = [json.dumps(record["messages"], sort_keys=True, ensure_ascii=False) for record in records]
            table = pa.table({"messages": pa.array(messages, pa.string())}, schema=CSV_SCHEMAS["chat"])
        if not self._escape_formulas:
            return table
        columns = [pc.replace_substring_regex(column, pattern=FORMULA_START, replacement=r"'\1", max_replacements=1)
                   for column in table.columns]
        return pa.Table.from_arrays(columns, schema=table.schema)

    def _add_rows(self, split: str, table: pa.Table, chars: list[int]) -> None:
        """Queue rows for Parquet, writing a row group each time the rows or characters reach the limit."""
        group = self._groups[split]
        start = 0
        for index, size in enumerate(chars):
            group.rows += 1
            group.chars += size
            if group.rows >= self._row_group_rows or group.chars >= self._row_group_chars:
                group.tables.append(table.slice(start, index + 1 - start))
                self._flush_row_group(split)
                start = index + 1
        if start < table.num_rows:
            group.tables.append(table.slice(start))

    def _flush_row_group(self, split: str) -> None:
        """Write a split's queued rows as one row group."""
        group = self._groups[split]
        if not group.rows:
            return
        # One contiguous chunk per column: the writer's page breaks follow chunk boundaries,
        # which would otherwise carry the batching into the bytes.
        table = pa.concat_tables(group.tables).combine_chunks()
        self._parquet[split].write_table(table, row_group_size=table.num_rows)
        group.tables, group.rows, group.chars = [], 0, 0

    def close(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Finish and fsync every file; return {format: {split: {path, bytes, sha256, records}}}."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        if "parquet" in self.formats:
            for split in SPLITS:
                self._flush_row_group(split)
        for writer in [*self._parquet.values(), *self._csv.values()]:
            writer.close()
        for handle in self._handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self._closed = True
        _fsync_directory(self.out_dir)
        files = {name: {split: self._describe(name, split) for split in SPLITS} for name in self.formats}
        logger.info("Wrote %s records (%s) to %s", self._records, ", ".join(self.formats), self.out_dir)
        return files

    def _describe(self, name: str, split: str) -> dict[str, Any]:
        """Return a written file's manifest entry, hashing what is on disk."""
        relative = f"{split}.{name}"
        path = self.out_dir / relative
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return {"path": relative, "bytes": path.stat().st_size, "sha256": digest, "records": self._records[split]}

    def abort(self) -> None:
        """Close every file without finishing it; the caller deletes the directory."""
        self._closed = True
        for writer in [*self._parquet.values(), *self._csv.values()]:
            with suppress(Exception):
                writer.close()
        for handle in self._handles.values():
            with suppress(OSError):
                handle.close()


def _fsync_directory(path: Path) -> None:
    """Persist the directory entries of newly created files."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_preview(out_dir: Path, files: Files, split: str, limit: int) -> list[dict[str, Any]]:
    """Return the first `limit` records of a split, reading its JSONL (else Parquet) file only that far."""
    if limit <= 0:
        return []
    if "jsonl" in files:
        records: list[dict[str, Any]] = []
        with open(_file_path(out_dir, files, "jsonl", split), encoding="utf-8") as handle:
            for line in handle:
                if len(records) >= limit:
                    break
                if line.strip():
                    records.append(json.loads(line))
        return records
    if "parquet" in files:
        records = []
        with pq.ParquetFile(_file_path(out_dir, files, "parquet", split)) as parquet:
            for batch in parquet.iter_batches(batch_size=limit):
                records.extend(batch.to_pylist())
                if len(records) >= limit:
                    break
        return records[:limit]
    raise ValueError("a preview needs the jsonl or parquet files")


def _file_path(out_dir: Path, files: Files, name: str, split: str) -> Path:
    """Return a manifest file's path; refuse one that leads outside out_dir."""
    root = Path(out_dir).resolve()
    path = (root / files[name][split]["path"]).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{name} file of {split} lies outside the dataset directory")
    return path
