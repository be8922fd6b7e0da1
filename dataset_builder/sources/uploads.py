"""Uploaded datasets: validating a JSONL, CSV or Parquet file record by record, and storing it as Parquet.

A record has exactly one shape: {"text"}, {"instruction", "input" (optional), "output"} or
{"messages": [{"role", "content"}, ...]}, checked by trainers.record_format. CSV and Parquet
carry the shapes as columns (CSV messages as a JSON string); an optional id column names records.
Problems read "line N: ..." for JSONL and "row N: ..." for CSV and Parquet, row 1 being the first
record after the header.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from trainers.record_format import read_lines, record_problems

logger = logging.getLogger(__name__)

Kind = Literal["jsonl", "csv", "parquet"]
KINDS: tuple[Kind, ...] = ("jsonl", "csv", "parquet")
RECORD_COLUMNS = ("text", "instruction", "input", "output", "messages")
SHAPES = (("text",), ("instruction", "input", "output"), ("messages",))
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),
    ("instruction", pa.string()),
    ("input", pa.string()),
    ("output", pa.string()),
    ("messages", pa.list_(MESSAGE)),
])
ROWS_PER_WRITE = 1_000
UPLOAD_RECORDS_FILE = "records.parquet"
DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")

# (position, record or None when it could not be decoded, problems)
Checked = tuple[str, dict[str, Any] | None, list[str]]


class UploadError(ValueError):
    """Raised when a file cannot be stored because it is not a valid upload."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def stored_upload_path(datasets_dir: Path, dataset_id: str) -> Path:
    """Where an uploaded dataset's records are stored: <datasets_dir>/<id>/records.parquet; ids are never paths."""
    if not isinstance(dataset_id, str) or not DATASET_ID.fullmatch(dataset_id):
        raise ValueError(f"{dataset_id!r} is not a dataset id")
    return Path(datasets_dir) / dataset_id / UPLOAD_RECORDS_FILE


def validate_upload(path: Path, kind: Kind, max_problems: int = 50) -> list[str]:
    """Stream the whole file and return its problems, the first max_problems of them and a count of the rest."""
    problems: list[str] = []
    total = records = 0
    seen_ids: dict[str, str] = {}
    try:
        for position, record, found in check_records(Path(path), kind):
            if record is not None:
                records += 1
                found = found + _id_problems(record, position, seen_ids)
            for problem in found:
                total += 1
                if total <= max_problems:
                    problems.append(f"{position}: {problem}")
    except OSError as error:
        return [f"cannot read the file ({error.strerror or error})"]
    if total > max_problems:
        problems.append(f"and {total - max_problems} more problems")
    if records == 0 and not problems:
        problems.append("the file holds no records")
    return problems


def store_upload(path: Path, kind: Kind, out_path: Path) -> int:
    """Convert a validated file to the stored Parquet (zstd) at out_path; return its record count."""
    out_path = Path(out_path)
    temporary = out_path.with_name(out_path.name + ".partial")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        with pq.ParquetWriter(temporary, SCHEMA, compression="zstd") as writer:
            rows: list[dict[str, Any]] = []
            for position, record, problems in check_records(Path(path), kind):
                if problems or record is None:
                    raise UploadError([f"{position}: {problem}" for problem in problems])
                rows.append(_stored_row(record))
                if len(rows) == ROWS_PER_WRITE:
                    writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
                    count += len(rows)
                    rows = []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
                count += len(rows)
        if count == 0:
            raise UploadError(["the file holds no records"])
        os.replace(temporary, out_path)
    finally:
        temporary.unlink(missing_ok=True)
    logger.info("Stored %s records of %s as %s", count, path, out_path)
    return count


def check_records(path: Path, kind: Kind) -> Iterator[Checked]:
    """Yield (position, record, problems) for every record of the file, and for file-level problems."""
    if kind == "jsonl":
        return _jsonl_records(path)
    if kind == "csv":
        return _csv_records(path)
    if kind == "parquet":
        return _parquet_records(path)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")


def _jsonl_records(path: Path) -> Iterator[Checked]:
    """One record per non-blank line."""
    for number, line in read_lines(path):
        position = f"line {number}"
        if line is None:
            yield position, None, ["line is not valid UTF-8"]
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield position, None, [f"invalid JSON ({error.msg})"]
            continue
        yield position, record if isinstance(record, dict) else None, record_problems(record)


def _csv_records(path: Path) -> Iterator[Checked]:
    """One record per CSV row after the header; a bad byte spoils only the rows it is in."""
    # Documents are long; the csv module's default of 128 KiB a field would reject them.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    bad_lines: set[int] = set()
    with open(path, "rb") as handle:
        reader = csv.reader(_decoded_lines(handle, bad_lines))
        number = 0
        try:
            header = [name.strip() for name in next(reader, [])]
            if not header:
                return
            problems = _columns_problems(header)
            if problems:
                yield "header", None, problems
                return
            single = _single_shape(header)
            consumed = reader.line_num
            for cells in reader:
                lines = range(consumed + 1, reader.line_num + 1)
                consumed = reader.line_num
                if not cells:
                    continue
                number += 1
                position = f"row {number}"
                if not bad_lines.isdisjoint(lines):
                    yield position, None, ["row is not valid UTF-8"]
                elif len(cells) != len(header):
                    yield position, None, [f"row has {len(cells)} cells, the header has {len(header)}"]
                else:
                    yield (position, *_tabular_record(dict(zip(header, cells, strict=True)), single))
        except csv.Error as error:
            yield f"row {number + 1}", None, [f"invalid CSV ({error}); reading stopped here"]


def _decoded_lines(handle: Iterable[bytes], bad_lines: set[int]) -> Iterator[str]:
    """Decode lines one by one, noting those that are not UTF-8 instead of failing the whole file."""
    for number, raw in enumerate(handle, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.add(number)
            line = raw.decode("utf-8", errors="replace")
        yield line.removeprefix("\ufeff") if number == 1 else line


def _parquet_records(path: Path) -> Iterator[Checked]:
    """One record per Parquet row."""
    number = 0
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        problems = _columns_problems(names)
        if problems:
            yield "schema", None, problems
            return
        single = _single_shape(names)
        columns = [name for name in names if name == "id" or name in RECORD_COLUMNS]
        for batch in parquet.iter_batches(batch_size=ROWS_PER_WRITE, columns=columns):
            for row in batch.to_pylist():
                number += 1
                yield (f"row {number}", *_tabular_record(row, single))
    except (pa.ArrowException, OSError) as error:
        where = "file" if number == 0 else f"row {number + 1}"
        yield where, None, [f"not a readable Parquet file ({error})"]


def _columns_problems(names: list[str]) -> list[str]:
    """Check a header or schema: no repeated column, and the columns of at least one shape."""
    problems = [f"column {name!r} appears more than once" for name in sorted(set(names)) if names.count(name) > 1]
    if not any(name in RECORD_COLUMNS for name in names):
        problems.append(f"has none of the columns {', '.join(RECORD_COLUMNS)}")
    return problems


def _single_shape(names: list[str]) -> bool:
    """Whether the columns belong to one record shape, so an empty cell is an empty field, not an absent one."""
    return sum(any(name in names for name in shape) for shape in SHAPES) == 1


def _tabular_record(cells: Mapping[str, Any], single_shape: bool) -> tuple[dict[str, Any], list[str]]:
    """Build the record of a CSV or Parquet row and return it with its problems."""
    record: dict[str, Any] = {}
    if cells.get("id") not in (None, ""):
        record["id"] = cells["id"]
    for name in RECORD_COLUMNS:
        value = cells.get(name)
        if value is None or value == "":
            if name not in cells or not single_shape or name == "input":
                continue
            value = ""
        record[name] = value
    if isinstance(record.get("messages"), str) and record["messages"]:
        try:
            record["messages"] = json.loads(record["messages"])
        except json.JSONDecodeError as error:
            return record, [f"field 'messages' is not valid JSON ({error.msg})"]
    return record, record_problems(record)


def _id_problems(record: Mapping[str, Any], position: str, seen: dict[str, str]) -> list[str]:
    """Check an optional id is a string or integer that no earlier record has."""
    if "id" not in record:
        return []
    value = record["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ["field 'id' must be a string or an integer"]
    key = str(value)
    if not key.strip():
        return ["field 'id' must not be empty"]
    if key in seen:
        return [f"field 'id' repeats the id of {seen[key]}"]
    seen[key] = position
    return []


def _stored_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A valid record as a row of the stored schema."""
    row: dict[str, Any] = {name: record.get(name) for name in RECORD_COLUMNS if name != "messages"}
    row["id"] = None if record.get("id") is None else str(record["id"])
    messages = record.get("messages")
    row["messages"] = None if messages is None else [
        {"role": message["role"], "content": message["content"]} for message in messages
    ]
    return row
