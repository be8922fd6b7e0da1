"""Storing a validated upload as Parquet and reading it back through the upload source."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset_builder.sources import DocumentTable, SourceContext, SourceError, read_source, source_problems
from dataset_builder.sources.uploads import SCHEMA, UploadError, store_upload, stored_upload_path

CHAT = [{"role": "system", "content": "Du bist höflich."}, {"role": "user", "content": "Frage?"},
        {"role": "assistant", "content": "Antwort."}]
RECORDS = [
    {"id": "t-1", "text": "Ein Absatz über Datenschutz."},
    {"id": 2, "instruction": "Fasse zusammen.", "input": "Langer Text.", "output": "Kurz.", "extra": "ignored"},
    {"instruction": "Nenne ein Gesetz.", "output": "Das BDSG."},
    {"messages": CHAT},
]


def context(tmp_path: Path, batch_size: int = 1000) -> SourceContext:
    return SourceContext(
        source_database_url="", documents_table=DocumentTable(), chroma_path=str(tmp_path / "chroma"),
        chroma_url=None, neo4j_uri=None, neo4j_user=None, neo4j_password=None,
        upload_path=lambda dataset_id: stored_upload_path(tmp_path / "uploads", dataset_id), batch_size=batch_size,
    )


def store_jsonl(tmp_path: Path, records: list[dict], dataset_id: str = "ds1") -> int:
    source = tmp_path / "upload.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    return store_upload(source, "jsonl", stored_upload_path(tmp_path / "uploads", dataset_id))


def test_stored_parquet_has_the_record_schema_and_zstd(tmp_path: Path) -> None:
    assert store_jsonl(tmp_path, RECORDS) == 4
    stored = pq.ParquetFile(tmp_path / "uploads" / "ds1" / "records.parquet")
    assert stored.schema_arrow == SCHEMA
    assert stored.schema_arrow.field("messages").type == pa.list_(pa.struct([("role", pa.string()),
                                                                              ("content", pa.string())]))
    assert stored.metadata.row_group(0).column(0).compression == "ZSTD"
    assert stored.read().column("messages").to_pylist()[3] == CHAT


def test_upload_source_reads_every_record_with_its_shape(tmp_path: Path) -> None:
    store_jsonl(tmp_path, RECORDS)
    documents = [d for batch in read_source({"type": "upload", "dataset_id": "ds1"}, context(tmp_path)) for d in batch]
    assert [(d.source, d.id, d.text_fields, d.fields) for d in documents] == [
        ("upload", "t-1", ("text",), {"text": "Ein Absatz über Datenschutz."}),
        ("upload", "2", ("instruction", "input", "output"),
         {"instruction": "Fasse zusammen.", "input": "Langer Text.", "output": "Kurz."}),
        ("upload", "ds1:3", ("instruction", "input", "output"),
         {"instruction": "Nenne ein Gesetz.", "output": "Das BDSG."}),
        ("upload", "ds1:4", ("messages",), {"messages": CHAT}),
    ]
    assert documents[1].text == "Fasse zusammen.\n\nLanger Text.\n\nKurz."


def test_upload_source_batches_are_bounded(tmp_path: Path) -> None:
    store_jsonl(tmp_path, [{"text": f"Absatz {n}"} for n in range(7)])
    batches = list(read_source({"type": "upload", "dataset_id": "ds1"}, context(tmp_path, batch_size=3)))
    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert [d.id for batch in batches for d in batch] == [f"ds1:{n}" for n in range(1, 8)]


def test_csv_and_parquet_store_the_same_records(tmp_path: Path) -> None:
    csv_path = tmp_path / "upload.csv"
    messages = json.dumps(CHAT).replace('"', '""')
    csv_path.write_text(f'id,text,messages\na,Erster Text,\nb,,"{messages}"\n')
    assert store_upload(csv_path, "csv", stored_upload_path(tmp_path / "uploads", "from-csv")) == 2
    parquet_path = tmp_path / "upload.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["Erster Text", None], "messages": [None, CHAT]}), parquet_path)
    assert store_upload(parquet_path, "parquet", stored_upload_path(tmp_path / "uploads", "from-parquet")) == 2
    read = {
        dataset_id: [(d.id, d.fields) for batch in read_source({"type": "upload", "dataset_id": dataset_id},
                                                                context(tmp_path)) for d in batch]
        for dataset_id in ("from-csv", "from-parquet")
    }
    assert read["from-csv"] == read["from-parquet"] == [("a", {"text": "Erster Text"}), ("b", {"messages": CHAT})]


def test_invalid_file_is_not_stored(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="line 2: field 'text' must not be empty"):
        store_jsonl(tmp_path, [{"text": "gut"}, {"text": ""}])
    assert not list((tmp_path / "uploads").rglob("*.parquet*"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UploadError, match="the file holds no records"):
        store_upload(empty, "jsonl", stored_upload_path(tmp_path / "uploads", "empty"))
    assert not list((tmp_path / "uploads").rglob("*.parquet*"))


def test_upload_spec_problems(tmp_path: Path) -> None:
    store_jsonl(tmp_path, RECORDS)
    ctx = context(tmp_path)
    assert source_problems({"type": "upload", "dataset_id": "ds1"}, ctx, 0) == []
    assert source_problems({"type": "upload"}, ctx, 1) == ["sources[1].dataset_id: is required"]
    assert source_problems({"type": "upload", "dataset_id": "nope"}, ctx, 1) == [
        "sources[1].dataset_id: no uploaded dataset 'nope'"
    ]
    assert source_problems({"type": "upload", "dataset_id": "../ds1"}, ctx, 1) == [
        "sources[1].dataset_id: '../ds1' is not a dataset id"
    ]
    assert source_problems({"type": "upload", "dataset_id": "ds1", "path": "/etc"}, ctx, 3) == [
        "sources[3].path: unknown field; expected one of dataset_id, type"
    ]
    with pytest.raises(SourceError, match="source.dataset_id: no uploaded dataset 'nope'"):
        read_source({"type": "upload", "dataset_id": "nope"}, ctx)
