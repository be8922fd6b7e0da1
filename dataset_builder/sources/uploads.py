"""Uploaded datasets: validating a JSONL, CSV or Parquet file record by record, and storing it as Parquet.

A record has exactly one shape: {"text"}, {"instruction", "input" (optional), "output"} or
{"messages": [{"role", "content"}, ...]}, checked by trainers.record_format. CSV and Parquet
carry the shapes as columns (CSV messages as a JSON string); an optional id column names records.
Problems read "line N: ..." for JSONL and "row N: ..." for CSV and Parquet, row 1 being the first
record after the header.

Nothing an upload holds is ever read whole: JSONL lines are read with a bounded readline, CSV fields
and rows are capped at the record limit, and Parquet files are first judged by their footer (what
their row groups decompress to), then read in small batches whose rows are measured in Arrow, string
columns kept dictionary-encoded, before any row becomes Python objects.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# Re-exported: where stored records live was defined here before the request checks needed it without Arrow.
from dataset_builder.sources.upload_spec import UPLOAD_RECORDS_FILE as UPLOAD_RECORDS_FILE
from dataset_builder.sources.upload_spec import stored_upload_path as stored_upload_path
from trainers.record_format import record_problems

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

DEFAULT_MAX_RECORD_BYTES = 1024**2
DEFAULT_MAX_DECOMPRESSED_BYTES = 2 * 1024**3
BATCH_BYTES = 64 * 1024**2
"""Most decoded bytes of records one Parquet batch may hold once its rows passed the record limit."""
SKIP_CHUNK = 1024**2
# A row group's column chunks also hold length prefixes, levels, dictionaries and page headers with
# statistics (up to a few KiB each): twice what its rows may hold plus 64 KiB a column leaves room for
# those, and still refuses up front a record hundreds of times the limit.
FOOTER_SLACK = 2
FOOTER_COLUMN_BYTES = 64 * 1024

# (position, record or None when it could not be decoded, problems)
Checked = tuple[str, dict[str, Any] | None, list[str]]


@dataclass(frozen=True)
class UploadLimits:
    """How large one record, and a Parquet file's decompressed data, may be."""

    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    """One record: a JSONL line, a CSV row, a Parquet row's values (CLARA_MAX_RECORD_BYTES)."""
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES
    """A Parquet file's column chunks, decompressed, by its footer (CLARA_MAX_UPLOAD_DECOMPRESSED_BYTES)."""

    @classmethod
    def from_settings(cls, settings: Any) -> UploadLimits:
        """The limits Clara's settings name."""
        return cls(settings.max_record_bytes, settings.max_upload_decompressed_bytes)

    @property
    def batch_rows(self) -> int:
        """Rows per Parquet batch: few enough that a batch of records at the limit stays within BATCH_BYTES."""
        return max(1, min(ROWS_PER_WRITE, BATCH_BYTES // self.max_record_bytes))


class UploadStopped(RuntimeError):
    """Storing an upload stopped because the job was cancelled or ran out of time."""


class RecordTooLarge(ValueError):
    """A CSV row grew past the record limit while it was read."""


class UploadError(ValueError):
    """Raised when a file cannot be stored because it is not a valid upload."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def validate_upload(path: Path, kind: Kind, max_problems: int = 50, limits: UploadLimits = UploadLimits()) -> list[str]:
    """Stream the whole file and return its problems, the first max_problems of them and a count of the rest."""
    try:
        return _scan(Path(path), kind, limits, max_problems, None)
    except OSError as error:
        return [f"cannot read the file ({error.strerror or error})"]


def store_upload(path: Path, kind: Kind, out_path: Path, limits: UploadLimits = UploadLimits(), *,
                 max_problems: int = 50, should_stop: Callable[[], bool] | None = None) -> int:
    """Check every record in one pass, storing them as Parquet (zstd) at out_path; return the record count.

    Raises UploadError listing the problems (nothing is stored), or UploadStopped when should_stop said so.
    """
    out_path = Path(out_path)
    temporary = out_path.with_name(out_path.name + ".partial")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        with pq.ParquetWriter(temporary, SCHEMA, compression="zstd") as writer:
            rows: list[dict[str, Any]] = []

            def keep(record: Mapping[str, Any] | None) -> None:
                nonlocal rows, count
                if record is not None:
                    rows.append(_stored_row(record))
                if rows and (record is None or len(rows) >= limits.batch_rows):
                    writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
                    count += len(rows)
                    rows = []

            problems = _scan(Path(path), kind, limits, max_problems, keep, should_stop)
            if problems:
                raise UploadError(problems)
            keep(None)
        os.replace(temporary, out_path)
    finally:
        temporary.unlink(missing_ok=True)
    logger.info("Stored %s records of %s as %s", count, path, out_path)
    return count


def _scan(path: Path, kind: Kind, limits: UploadLimits, max_problems: int,
          keep: Callable[[Mapping[str, Any] | None], None] | None,
          should_stop: Callable[[], bool] | None = None) -> list[str]:
    """Check every record, handing each good one to keep until the first problem; return the problems.

    should_stop is asked every batch_rows records, bad ones included; when it says so, UploadStopped is raised.
    """
    problems: list[str] = []
    total = records = 0
    seen_ids: dict[str, str] = {}
    for checked, (position, record, found) in enumerate(check_records(path, kind, limits), start=1):
        if should_stop is not None and checked % limits.batch_rows == 0 and should_stop():
            raise UploadStopped(str(path))
        if record is not None:
            records += 1
            found = found + _id_problems(record, position, seen_ids)
        for problem in found:
            total += 1
            if total <= max_problems:
                problems.append(f"{position}: {problem}")
        if keep is not None and total == 0 and record is not None:
            keep(record)
    if total > max_problems:
        problems.append(f"and {total - max_problems} more problems")
    if records == 0 and not problems:
        problems.append("the file holds no records")
    return problems


def check_records(path: Path, kind: Kind, limits: UploadLimits = UploadLimits()) -> Iterator[Checked]:
    """Yield (position, record, problems) for every record of the file, and for file-level problems."""
    if kind == "jsonl":
        return _jsonl_records(path, limits)
    if kind == "csv":
        return _csv_records(path, limits)
    if kind == "parquet":
        return _parquet_records(path, limits)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")


def _too_large(limits: UploadLimits) -> str:
    """The problem of a record past the limit."""
    return f"record is larger than {limits.max_record_bytes} bytes (max_record_bytes)"


def _jsonl_records(path: Path, limits: UploadLimits) -> Iterator[Checked]:
    """One record per non-blank line; a line past the record limit is skipped unread."""
    with open(path, "rb") as handle:
        for number, raw in _bounded_lines(handle, limits.max_record_bytes):
            position = f"line {number}"
            if raw is None:
                yield position, None, [_too_large(limits)]
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield position, None, ["line is not valid UTF-8"]
                continue
            if number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield position, None, [f"invalid JSON ({error.msg})"]
                continue
            yield position, record if isinstance(record, dict) else None, record_problems(record)


def _bounded_lines(handle: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, raw line) of a binary file; None for a line past limit bytes, which is never held."""
    number = 0
    while raw := handle.readline(limit + 1):
        number += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            while (rest := handle.readline(SKIP_CHUNK)) and not rest.endswith(b"\n"):
                pass
            yield number, None
        else:
            yield number, raw


class _CsvLines:
    """Decoded lines for csv.reader that raise RecordTooLarge once the current row passes the limit."""

    def __init__(self, handle: IO[bytes], bad_lines: set[int], limit: int) -> None:
        self.lines = _bounded_lines(handle, limit)
        self.bad_lines, self.limit, self.row_bytes = bad_lines, limit, 0

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        number, raw = next(self.lines)
        self.row_bytes += self.limit + 1 if raw is None else len(raw)
        if raw is None or self.row_bytes > self.limit:
            raise RecordTooLarge(number)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.bad_lines.add(number)
            line = raw.decode("utf-8", errors="replace")
        return line.removeprefix("\ufeff") if number == 1 else line


def _csv_records(path: Path, limits: UploadLimits) -> Iterator[Checked]:
    """One record per CSV row after the header; a bad byte spoils only the rows it is in."""
    # Process-wide, so every reader sets it before reading; a field can be no longer than a record.
    csv.field_size_limit(limits.max_record_bytes)
    bad_lines: set[int] = set()
    with open(path, "rb") as handle:
        source = _CsvLines(handle, bad_lines, limits.max_record_bytes)
        reader = csv.reader(source)
        number = 0
        where = "header"
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
            where = "row 1"
            source.row_bytes = 0
            for cells in reader:
                # The row is read: what the reader takes next belongs to the next row.
                source.row_bytes = 0
                lines = range(consumed + 1, reader.line_num + 1)
                consumed = reader.line_num
                if not cells:
                    continue
                number += 1
                where = f"row {number + 1}"
                position = f"row {number}"
                if not bad_lines.isdisjoint(lines):
                    yield position, None, ["row is not valid UTF-8"]
                elif len(cells) != len(header):
                    yield position, None, [f"row has {len(cells)} cells, the header has {len(header)}"]
                else:
                    yield (position, *_tabular_record(dict(zip(header, cells, strict=True)), single))
        except RecordTooLarge:
            yield where, None, [f"{_too_large(limits)}; reading stopped here"]
        except csv.Error as error:
            yield f"row {number + 1}", None, [f"invalid CSV ({error}); reading stopped here"]


def parquet_problems(path: Path, limits: UploadLimits = UploadLimits()) -> list[str]:
    """Check a Parquet file by its schema and footer alone, decoding no data; empty when it may be read."""
    try:
        with pq.ParquetFile(path) as parquet:
            schema, metadata = parquet.schema_arrow, parquet.metadata
    except (pa.ArrowException, OSError) as error:
        return [f"file: not a readable Parquet file ({error})"]
    problems = _columns_problems(schema.names)
    if problems:
        return [f"schema: {problem}" for problem in problems]
    return _footer_problems(metadata, _parquet_columns(schema.names), limits)


def _parquet_columns(names: list[str]) -> list[str]:
    return [name for name in names if name == "id" or name in RECORD_COLUMNS]


def _footer_problems(metadata: pq.FileMetaData, columns: list[str], limits: UploadLimits) -> list[str]:
    """What the footer promises: more decompressed bytes than allowed, or a row group no rows could hold."""
    problems = []
    total = first_row = 0
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        chunks = [group.column(i) for i in range(group.num_columns)
                  if group.column(i).path_in_schema.split(".", 1)[0] in columns]
        size = sum(chunk.total_uncompressed_size for chunk in chunks)
        total += size
        allowed = FOOTER_SLACK * group.num_rows * limits.max_record_bytes + FOOTER_COLUMN_BYTES * len(chunks)
        if size > allowed and len(problems) < 5:
            last = first_row + max(group.num_rows, 1)
            problems.append(f"rows {first_row + 1}-{last}: row group {index + 1} decompresses to {size} bytes "
                            f"for {group.num_rows} rows, so a record is larger than {limits.max_record_bytes} "
                            "bytes (max_record_bytes)")
        first_row += group.num_rows
    if total > limits.max_decompressed_bytes:
        problems.append(f"file: decompresses to {total} bytes, more than {limits.max_decompressed_bytes} "
                        "(max_upload_decompressed_bytes)")
    return problems


def _parquet_records(path: Path, limits: UploadLimits) -> Iterator[Checked]:
    """One record per Parquet row, read in small batches; a row past the record limit never becomes Python."""
    found = parquet_problems(path, limits)
    if found:
        for problem in found:
            position, _, message = problem.partition(": ")
            yield position, None, [message]
        return
    number = 0
    try:
        with pq.ParquetFile(path) as probe:
            schema = probe.schema_arrow
        columns = _parquet_columns(schema.names)
        single = _single_shape(schema.names)
        # Dictionary-encoded strings stay encoded: a value repeated in many rows is held once, not per row.
        parquet = pq.ParquetFile(path, read_dictionary=_string_leaves(schema, columns))
        with parquet:
            for batch in parquet.iter_batches(batch_size=limits.batch_rows, columns=columns):
                for checked in _batch_records(batch, number, single, limits):
                    number += 1
                    yield checked
    except (pa.ArrowException, OSError) as error:
        where = "file" if number == 0 else f"row {number + 1}"
        yield where, None, [f"not a readable Parquet file ({error})"]


def _string_leaves(schema: pa.Schema, columns: list[str]) -> list[str]:
    """Dotted paths of the string values of the columns read, as read_dictionary names them."""
    paths = []

    def visit(path: str, kind: pa.DataType) -> None:
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            paths.append(path)
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            visit(f"{path}.list.{kind.value_field.name}", kind.value_type)
        elif pa.types.is_struct(kind):
            for child in kind:
                visit(f"{path}.{child.name}", child.type)

    for name in columns:
        visit(name, schema.field(name).type)
    return paths


def _batch_records(batch: pa.RecordBatch, before: int, single: bool, limits: UploadLimits) -> Iterator[Checked]:
    """The records of one batch, each measured before it is decoded; a value Python cannot hold is a problem."""
    sizes = sum((_value_bytes(column) for column in batch.columns), np.zeros(batch.num_rows, dtype=np.int64))
    rows: list[dict[str, Any]] | None = None
    if int(sizes.max(initial=0)) <= limits.max_record_bytes:
        try:
            rows = batch.to_pylist()
        except (OverflowError, ValueError, pa.ArrowException):
            rows = None
    for index in range(batch.num_rows):
        position = f"row {before + index + 1}"
        if sizes[index] > limits.max_record_bytes:
            yield position, None, [_too_large(limits)]
            continue
        row, problems = (rows[index], []) if rows is not None else _row_values(batch, index)
        if problems:
            yield position, None, problems
        else:
            yield (position, *_tabular_record(row, single))


def _row_values(batch: pa.RecordBatch, index: int) -> tuple[dict[str, Any], list[str]]:
    """One row as Python values, naming each field whose value Python cannot hold (a date out of range)."""
    row: dict[str, Any] = {}
    problems = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            row[name] = column[index].as_py()
        except (OverflowError, ValueError, pa.ArrowException) as error:
            problems.append(f"field {name!r} cannot be read ({error})")
    return row, problems


def _value_bytes(array: pa.Array) -> np.ndarray:
    """Bytes each value of an array decodes to: string lengths, summed through lists and structs."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        lengths = _value_bytes(array.dictionary)
        indices = pc.fill_null(array.indices, 0).to_numpy(zero_copy_only=False)
        result = lengths[indices] if len(lengths) else np.zeros(len(array), dtype=np.int64)
        return np.where(array.is_null().to_numpy(zero_copy_only=False), 0, result)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind):
        return pc.fill_null(pc.binary_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        counts = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        totals = np.concatenate([[0], np.cumsum(_value_bytes(array.flatten()))])
        ends = np.cumsum(counts)
        return totals[ends] - totals[ends - counts]
    if pa.types.is_struct(kind):
        return sum((_value_bytes(child) for child in array.flatten()), np.zeros(len(array), dtype=np.int64))
    try:
        width = max(kind.bit_width // 8, 1)
    except ValueError:
        width = 8
    return np.full(len(array), width, dtype=np.int64)


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
