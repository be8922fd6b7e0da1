"""The JSONL record format Clara trains on, and its validation; light enough for the API to import."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from trainers.config import TrainingConfigError

ROLES = ("system", "user", "assistant")
SHAPES = "text, instruction/output, messages"
# The most of a file the API reads when a job is submitted; the worker reads all of it before training.
SAMPLE_BYTES = 8 * 1024**2


class InvalidDataset(TrainingConfigError):
    """A training or validation file has bad records; `problems` names their lines."""


class LineTooLong(ValueError):
    """A line of a sampled file is longer than the record limit; it is never read whole."""

    def __init__(self, number: int, limit: int) -> None:
        super().__init__(f"line {number}: record is larger than {limit} bytes (max_record_bytes)")


def read_lines(path: Path, max_bytes: int | None = None,
               max_line_bytes: int | None = None) -> Iterator[tuple[int, str | None]]:
    """Yield (line number, text) for each non-blank line; text is None when the line is not UTF-8.

    With max_bytes, only lines that start within the file's first max_bytes are read, and with max_line_bytes
    a longer line raises LineTooLong after at most that many bytes of it were read.
    """
    with open(path, "rb") as handle:
        raw_lines = handle if max_bytes is None else _bounded_lines(handle, max_bytes, max_line_bytes)
        for number, raw in enumerate(raw_lines, start=1):
            if raw is None:
                raise LineTooLong(number, max_line_bytes or 0)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None
                continue
            if number == 1:
                line = line.removeprefix("\ufeff")
            if line.strip():
                yield number, line


def _bounded_lines(handle: BinaryIO, max_bytes: int, max_line_bytes: int | None) -> Iterator[bytes | None]:
    """The lines starting within a binary file's first max_bytes; None for one past max_line_bytes, then stop."""
    remaining = max_bytes
    while remaining > 0:
        raw = handle.readline(-1 if max_line_bytes is None else max_line_bytes + 1)
        if not raw:
            return
        if max_line_bytes is not None and len(raw) > max_line_bytes:
            yield None
            return
        remaining -= len(raw)
        yield raw


def record_problems(record: object) -> list[str]:
    """Return every problem with one decoded record; empty when it is valid."""
    if not isinstance(record, dict):
        return ["record must be a JSON object"]
    shapes = [
        name
        for name, present in (
            ("text", "text" in record),
            ("instruction/output", "instruction" in record or "output" in record),
            ("messages", "messages" in record),
        )
        if present
    ]
    if not shapes:
        return [f"record has none of {SHAPES}"]
    if len(shapes) > 1:
        return [f"record mixes {' and '.join(shapes)}; use exactly one of {SHAPES}"]
    if shapes[0] == "text":
        return _string_problems(record, ("text",), ())
    if shapes[0] == "instruction/output":
        return _string_problems(record, ("instruction", "output"), ("input",))
    return _messages_problems(record["messages"])


def _string_problems(record: Mapping[str, Any], required: Sequence[str], optional: Sequence[str]) -> list[str]:
    """Check that required fields are non-empty strings and optional ones are strings."""
    problems = []
    for name in required:
        if name not in record:
            problems.append(f"field '{name}' is missing")
        elif not isinstance(record[name], str):
            problems.append(f"field '{name}' must be a string")
        elif not record[name].strip():
            problems.append(f"field '{name}' must not be empty")
    for name in optional:
        if name in record and not isinstance(record[name], str):
            problems.append(f"field '{name}' must be a string")
    return problems


def _messages_problems(messages: object) -> list[str]:
    """Check a chat record's message list."""
    if not isinstance(messages, list) or not messages:
        return ["messages must be a non-empty list"]
    problems = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            problems.append(f"messages[{index}] must be an object with role and content")
            continue
        if message.get("role") not in ROLES:
            problems.append(f"messages[{index}].role must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            problems.append(f"messages[{index}].content must be a string")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append("messages must contain at least one assistant message")
    return problems


def dataset_problems(path: Path, max_problems: int = 20, *, max_records: int | None = None,
                     max_bytes: int | None = None, max_record_bytes: int | None = None) -> list[str]:
    """Stream a JSONL file and return its problems as "line N: ...", at most max_problems of them.

    max_records and max_bytes check only a sample, the file's first records, in bounded time: the API does
    that when a job is submitted, and the worker checks the whole file before training. With max_bytes, a line
    longer than max_record_bytes is a problem and ends the sample.
    """
    problems: list[str] = []
    records = 0
    last_line = 0
    try:
        for number, line in read_lines(Path(path), max_bytes=max_bytes, max_line_bytes=max_record_bytes):
            if max_records is not None and records >= max_records:
                return problems
            if line is None:
                found = ["line is not valid UTF-8"]
            else:
                found = _line_problems(line)
                records += 1
            for problem in found:
                if len(problems) >= max_problems:
                    problems.append(f"and more problems after line {last_line}")
                    return problems
                problems.append(f"line {number}: {problem}")
                last_line = number
    except LineTooLong as error:
        return [*problems, str(error)]
    except OSError as error:
        return [f"cannot read the file ({error.strerror or error})"]
    if records == 0 and not problems and (max_bytes is None or _size(path) <= max_bytes):
        # A sample of nothing but blank lines says nothing about the rest of a longer file.
        problems.append("the file holds no records")
    return problems


def sample_problems(path: Path, max_records: int, max_record_bytes: int) -> list[str]:
    """The problems of a file's first max_records records starting within its first SAMPLE_BYTES.

    At most SAMPLE_BYTES + max_record_bytes are read, so this takes bounded time whatever the file holds.
    """
    return dataset_problems(path, max_records=max_records, max_bytes=SAMPLE_BYTES, max_record_bytes=max_record_bytes)


def _size(path: Path) -> int:
    """The file's size in bytes, or 0 when it cannot be read."""
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _line_problems(line: str) -> list[str]:
    """Return the problems of one JSONL line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return [f"invalid JSON ({error.msg})"]
    return record_problems(record)


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for each record; raise InvalidDataset on the first bad line."""
    for number, line in read_lines(Path(path)):
        problems = ["line is not valid UTF-8"] if line is None else _line_problems(line)
        if problems:
            raise InvalidDataset([f"line {number}: {problem}" for problem in problems])
        yield number, json.loads(line)
