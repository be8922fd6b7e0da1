"""Validating uploaded JSONL, CSV and Parquet files: every bad record, with its line or row."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset_builder.sources.uploads import stored_upload_path, validate_upload

TEXT = {"text": "Ein gültiger Datensatz."}
INSTRUCTION = {"instruction": "Fasse zusammen.", "input": "Langer Text.", "output": "Kurz."}
CHAT = {"messages": [{"role": "user", "content": "Frage?"}, {"role": "assistant", "content": "Antwort."}]}


def jsonl(tmp_path: Path, lines: list[str | bytes]) -> Path:
    path = tmp_path / "upload.jsonl"
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def test_valid_jsonl_of_every_shape_has_no_problems(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [json.dumps(record) for record in (TEXT, INSTRUCTION, CHAT, {"id": 7, **TEXT})])
    assert validate_upload(path, "jsonl") == []


def test_every_bad_jsonl_record_is_reported_with_its_line(tmp_path: Path) -> None:
    lines = [
        json.dumps(TEXT),
        "{not json",
        b'{"text": "caf\xe9"}',
        "[1, 2]",
        json.dumps({"title": "no shape"}),
        "",
        json.dumps({"text": "x", "output": "y"}),
        json.dumps({"text": "   "}),
        json.dumps({"text": 5}),
        json.dumps({"instruction": "Tu etwas."}),
        json.dumps({"instruction": "a", "input": 3, "output": "b"}),
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": 1}]}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        json.dumps({"id": "a", **TEXT}),
        json.dumps({"id": "a", **TEXT}),
        json.dumps({"id": [1], **TEXT}),
        json.dumps(CHAT),
    ]
    assert validate_upload(jsonl(tmp_path, lines), "jsonl") == [
        "line 2: invalid JSON (Expecting property name enclosed in double quotes)",
        "line 3: line is not valid UTF-8",
        "line 4: record must be a JSON object",
        "line 5: record has none of text, instruction/output, messages",
        "line 7: record mixes text and instruction/output; use exactly one of text, instruction/output, messages",
        "line 8: field 'text' must not be empty",
        "line 9: field 'text' must be a string",
        "line 10: field 'output' is missing",
        "line 11: field 'input' must be a string",
        "line 12: messages must be a non-empty list",
        "line 13: messages[0].role must be one of system, user, assistant",
        "line 13: messages[1].content must be a string",
        "line 14: messages must contain at least one assistant message",
        "line 16: field 'id' repeats the id of line 15",
        "line 17: field 'id' must be a string or an integer",
    ]


def test_problems_are_capped_after_reading_the_whole_file(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [json.dumps({"text": ""})] * 60)
    problems = validate_upload(path, "jsonl", max_problems=50)
    assert len(problems) == 51
    assert problems[49] == "line 50: field 'text' must not be empty"
    assert problems[50] == "and 10 more problems"


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert validate_upload(empty, "jsonl") == ["the file holds no records"]
    assert validate_upload(tmp_path / "missing.jsonl", "jsonl") == ["cannot read the file (No such file or directory)"]


def csv_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "upload.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_valid_csv_files(tmp_path: Path) -> None:
    assert validate_upload(csv_file(tmp_path, '\ufefftext\n"Zeile eins,\nmit Umbruch"\nZeile zwei\n'), "csv") == []
    assert validate_upload(csv_file(tmp_path, "id,instruction,input,output\n1,Tu es,,Erledigt\n"), "csv") == []
    messages = json.dumps(CHAT["messages"]).replace('"', '""')
    assert validate_upload(csv_file(tmp_path, f'messages\n"{messages}"\n'), "csv") == []


def test_every_bad_csv_row_is_reported_with_its_row(tmp_path: Path) -> None:
    rows = [
        b"id,instruction,input,output",
        b"1,Tu es,,Erledigt",
        b"2,,,Ohne Anweisung",
        b"3,Nur Anweisung,,",
        b"4,zu,viele,Zellen,hier",
        b"5,Kaputtes \xff Byte,,x",
        b"1,Doppelte Id,,x",
        b'6,"Mehrzeilig',
        b'bleibt eine Zeile",,x',
        b"7,Letzte,,",
    ]
    assert validate_upload(csv_file(tmp_path, b"\n".join(rows) + b"\n"), "csv") == [
        "row 2: field 'instruction' must not be empty",
        "row 3: field 'output' must not be empty",
        "row 4: row has 5 cells, the header has 4",
        "row 5: row is not valid UTF-8",
        "row 6: field 'id' repeats the id of row 1",
        "row 8: field 'output' must not be empty",
    ]


def test_bad_csv_messages_cells(tmp_path: Path) -> None:
    no_assistant = json.dumps([{"role": "user", "content": "Hallo"}]).replace('"', '""')
    text = f'messages\n"{no_assistant}"\nnot json\n""\n'
    assert validate_upload(csv_file(tmp_path, text), "csv") == [
        "row 1: messages must contain at least one assistant message",
        "row 2: field 'messages' is not valid JSON (Expecting value)",
        "row 3: messages must be a non-empty list",
    ]


def test_csv_with_columns_of_several_shapes_takes_each_row_as_it_is_filled(tmp_path: Path) -> None:
    text = "text,instruction,output\nNur Text,,\n,Anweisung,Antwort\nBeides,Anweisung,Antwort\n,,\n"
    assert validate_upload(csv_file(tmp_path, text), "csv") == [
        "row 3: record mixes text and instruction/output; use exactly one of text, instruction/output, messages",
        "row 4: record has none of text, instruction/output, messages",
    ]


def test_csv_header_problems(tmp_path: Path) -> None:
    assert validate_upload(csv_file(tmp_path, "title,body\na,b\n"), "csv") == [
        "header: has none of the columns text, instruction, input, output, messages"
    ]
    assert validate_upload(csv_file(tmp_path, "text,text\na,b\n"), "csv") == [
        "header: column 'text' appears more than once"
    ]
    assert validate_upload(csv_file(tmp_path, "text\n"), "csv") == ["the file holds no records"]


def parquet_file(tmp_path: Path, table: pa.Table) -> Path:
    path = tmp_path / "upload.parquet"
    pq.write_table(table, path)
    return path


def test_valid_parquet_with_message_structs(tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b"], "messages": [CHAT["messages"], CHAT["messages"]]})
    assert validate_upload(parquet_file(tmp_path, table), "parquet") == []


def test_every_bad_parquet_row_is_reported_with_its_row(tmp_path: Path) -> None:
    table = pa.table({
        "id": [1, 2, 2, None],
        "text": ["gut", None, "", "auch gut"],
    })
    assert validate_upload(parquet_file(tmp_path, table), "parquet") == [
        "row 2: field 'text' must not be empty",
        "row 3: field 'text' must not be empty",
        "row 3: field 'id' repeats the id of row 2",
    ]
    typed = pa.table({"text": [1, 2]})
    assert validate_upload(parquet_file(tmp_path, typed), "parquet") == [
        "row 1: field 'text' must be a string",
        "row 2: field 'text' must be a string",
    ]


def test_bad_parquet_messages(tmp_path: Path) -> None:
    structs = pa.table({"messages": [[{"role": "user", "content": "Hallo"}], [{"role": "judge", "content": None}]]})
    assert validate_upload(parquet_file(tmp_path, structs), "parquet") == [
        "row 1: messages must contain at least one assistant message",
        "row 2: messages[0].role must be one of system, user, assistant",
        "row 2: messages[0].content must be a string",
        "row 2: messages must contain at least one assistant message",
    ]
    strings = pa.table({"messages": [json.dumps(CHAT["messages"]), "{"]})
    assert validate_upload(parquet_file(tmp_path, strings), "parquet") == [
        "row 2: field 'messages' is not valid JSON (Expecting property name enclosed in double quotes)"
    ]


def test_unreadable_parquet_and_wrong_schema(tmp_path: Path) -> None:
    path = tmp_path / "upload.parquet"
    path.write_text("text\nnot parquet\n")
    problems = validate_upload(path, "parquet")
    assert len(problems) == 1 and problems[0].startswith("file: not a readable Parquet file")
    assert validate_upload(parquet_file(tmp_path, pa.table({"body": ["x"]})), "parquet") == [
        "schema: has none of the columns text, instruction, input, output, messages"
    ]


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of jsonl, csv, parquet"):
        validate_upload(tmp_path / "x.xml", "xml")  # type: ignore[arg-type]


def test_stored_upload_path_takes_plain_ids_only(tmp_path: Path) -> None:
    assert stored_upload_path(tmp_path, "ds-2024_01") == tmp_path / "ds-2024_01" / "records.parquet"
    uuid_id = "0b8e6a43-4c1e-4f5e-9d43-0f6f7c1b2a10"
    assert stored_upload_path(tmp_path, uuid_id) == tmp_path / uuid_id / "records.parquet"
    for bad in ("../etc/passwd", "a/b", "", ".hidden", "..", "x" * 200, None):
        with pytest.raises(ValueError):
            stored_upload_path(tmp_path, bad)  # type: ignore[arg-type]
