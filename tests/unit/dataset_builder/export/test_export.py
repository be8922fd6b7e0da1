"""Exporting records as JSONL, Parquet and CSV: round trips, determinism, empty splits, streaming, previews."""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
import pytest

from dataset_builder.export import CSV_SCHEMAS, SCHEMAS, DatasetWriter, read_preview
from trainers.record_format import iter_records, record_problems

KINDS = ("text", "instruction", "chat")
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "text": [
        {"text": "Die Anmeldung des Wohnsitzes ist innerhalb von zwei Wochen fällig."},
        {"text": 'Zeile eins\nZeile zwei, mit "Anführungszeichen" und Komma.'},
        {"text": "Wohngeld nach § 5 WoGG: {keine Platzhalter} \u2028 Ende."},
    ],
    "instruction": [
        {"instruction": "Wie lange gilt der Personalausweis?", "input": "", "output": "Ab 24 Jahren zehn Jahre."},
        {"instruction": "Übersetze ins Englische.", "input": "Bewohnerparkausweis", "output": "Residents' permit"},
        {"instruction": "Fasse zusammen.", "input": "Absatz 1\nAbsatz 2", "output": 'Zwei Absätze, "kurz".'},
    ],
    "chat": [
        {"messages": [
            {"role": "system", "content": "Antworte kurz."},
            {"role": "user", "content": "Brauche ich eine Genehmigung für ein Gartenhaus?"},
            {"role": "assistant", "content": "Kleine Gartenhäuser sind oft genehmigungsfrei."},
        ]},
        {"messages": [
            {"role": "user", "content": "Wo melde ich meinen Hund an?"},
            {"role": "assistant", "content": 'Bei der Steuerverwaltung,\nZimmer "3".'},
        ]},
    ],
}


def make_records(kind: str, count: int, start: int = 0) -> list[dict[str, Any]]:
    """Return `count` distinct records of a kind, the samples with a running number appended."""
    made = []
    for index in range(start, start + count):
        sample = SAMPLES[kind][index % len(SAMPLES[kind])]
        if kind == "text":
            made.append({"text": f"{sample['text']} #{index}"})
        elif kind == "instruction":
            made.append({**sample, "output": f"{sample['output']} #{index}"})
        else:
            messages = [dict(message) for message in sample["messages"]]
            messages[-1]["content"] += f" #{index}"
            made.append({"messages": messages})
    return made


def write(out_dir: Path, kind: str, batches: dict[str, list[list[dict[str, Any]]]],
          formats: tuple[str, ...] = ("jsonl", "parquet", "csv"), **options: int) -> dict[str, Any]:
    """Write batches per split through a DatasetWriter and return its manifest."""
    writer = DatasetWriter(out_dir, formats, kind, **options)
    for split, split_batches in batches.items():
        for batch in split_batches:
            writer.write(split, batch)
    return writer.close()


def read_csv(path: Path, kind: str) -> list[dict[str, Any]]:
    """Read an exported CSV back as records, decoding chat's JSON messages column."""
    table = pcsv.read_csv(
        path,
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(column_types=CSV_SCHEMAS[kind], strings_can_be_null=False),
    )
    rows = table.to_pylist()
    if kind == "chat":
        rows = [{"messages": json.loads(row["messages"])} for row in rows]
    return rows


@pytest.fixture
def load_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Path], list[dict[str, Any]]]:
    """Return a loader through `datasets.load_dataset`, offline and caching under tmp_path."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    import datasets

    datasets.disable_progress_bars()

    def load(builder: str, path: Path) -> list[dict[str, Any]]:
        # cache_dir is passed too: datasets reads the environment only when first imported.
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(cache / "datasets"))
        return dataset.to_list()

    return load


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_round_trips(tmp_path: Path, kind: str, load_hf: Callable[[str, Path], list]) -> None:
    train, validation = make_records(kind, 7), make_records(kind, 3, start=100)
    out = tmp_path / "out"

    files = write(out, kind, {"train": [train[:4], train[4:]], "validation": [validation]})

    for split, expected in (("train", train), ("validation", validation)):
        assert pq.read_table(out / f"{split}.parquet").to_pylist() == expected
        assert pjson.read_json(out / f"{split}.jsonl").to_pylist() == expected
        assert read_csv(out / f"{split}.csv", kind) == expected
        assert [record for _, record in iter_records(out / f"{split}.jsonl")] == expected
        assert all(record_problems(record) == [] for record in expected)
    assert load_hf("parquet", out / "train.parquet") == train
    assert load_hf("json", out / "train.jsonl") == train
    parquet = pq.ParquetFile(out / "train.parquet")
    assert parquet.schema_arrow.remove_metadata() == SCHEMAS[kind]
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    assert sorted(entry["path"] for splits in files.values() for entry in splits.values()) == sorted(
        path.name for path in out.iterdir()
    )
    assert len(list(out.iterdir())) == 6


def test_manifest_describes_each_file(tmp_path: Path) -> None:
    out = tmp_path / "out"

    files = write(out, "instruction", {"train": [make_records("instruction", 5)]})

    assert set(files) == {"jsonl", "parquet", "csv"}
    for name, splits in files.items():
        assert set(splits) == {"train", "validation"}
        for split, entry in splits.items():
            data = (out / entry["path"]).read_bytes()
            assert entry == {
                "path": f"{split}.{name}",
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "records": 5 if split == "train" else 0,
            }


def test_jsonl_lines_are_sorted_compact_utf8(tmp_path: Path) -> None:
    record = {"output": "Straße", "instruction": "Wie?", "input": ""}

    write(tmp_path / "out", "instruction", {"train": [[record]]})

    line = '{"input": "", "instruction": "Wie?", "output": "Straße"}\n'
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == line.encode("utf-8")


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_records_give_identical_files_whatever_the_batching(tmp_path: Path, kind: str) -> None:
    records = make_records(kind, 100)
    options = {"row_group_rows": 7}

    first = write(tmp_path / "a", kind, {"train": [records]}, **options)
    second = write(tmp_path / "b", kind, {"train": [records[i:i + 3] for i in range(0, 100, 3)]}, **options)
    third = write(tmp_path / "c", kind, {"train": [[record] for record in records]}, **options)

    assert first == second == third
    assert pq.ParquetFile(tmp_path / "a" / "train.parquet").metadata.num_row_groups == math.ceil(100 / 7)
    assert pq.read_table(tmp_path / "c" / "train.parquet").to_pylist() == records


def test_batching_does_not_show_in_row_groups_spanning_many_pages(tmp_path: Path) -> None:
    # About 1.8 MB in one row group: several data pages, whose breaks must not follow the batches.
    rng = random.Random(5)
    records = [{"text": rng.randbytes(1500).hex()} for _ in range(600)]

    whole = write(tmp_path / "a", "text", {"train": [records]}, formats=("parquet",))
    batches = [records[i:i + 7] for i in range(0, 600, 7)]
    sevens = write(tmp_path / "b", "text", {"train": batches}, formats=("parquet",))

    assert pq.ParquetFile(tmp_path / "a" / "train.parquet").metadata.num_row_groups == 1
    assert whole == sevens


def test_different_records_or_order_give_different_hashes(tmp_path: Path) -> None:
    records = make_records("text", 10)

    original = write(tmp_path / "a", "text", {"train": [records]})
    reordered = write(tmp_path / "b", "text", {"train": [records[::-1]]})
    changed = write(tmp_path / "c", "text", {"train": [[*records[:9], {"text": "anders"}]]})

    for name in ("jsonl", "parquet", "csv"):
        hashes = {files[name]["train"]["sha256"] for files in (original, reordered, changed)}
        assert len(hashes) == 3


def test_row_groups_also_end_at_the_character_limit(tmp_path: Path) -> None:
    records = [{"text": "x" * 100} for _ in range(10)]

    write(tmp_path / "a", "text", {"train": [records[:4], records[4:]]}, row_group_chars=250)

    metadata = pq.ParquetFile(tmp_path / "a" / "train.parquet").metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [3, 3, 3, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_empty_splits_get_valid_empty_files(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"

    files = write(out, kind, {})

    for split in ("train", "validation"):
        assert (out / f"{split}.jsonl").read_bytes() == b""
        table = pq.read_table(out / f"{split}.parquet")
        assert (table.num_rows, table.schema.remove_metadata()) == (0, SCHEMAS[kind])
        csv = pcsv.read_csv(out / f"{split}.csv")
        assert (csv.num_rows, csv.column_names) == (0, CSV_SCHEMAS[kind].names)
        assert all(files[name][split]["records"] == 0 for name in files)
    assert read_preview(out, files, "validation", 5) == []


def test_many_batches_stream_into_both_splits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    writer = DatasetWriter(out, ["jsonl", "parquet", "csv"], "chat", row_group_rows=64)
    expected: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    for batch_index in range(50):
        split = "validation" if batch_index % 5 == 0 else "train"
        batch = make_records("chat", 1 + batch_index % 13, start=batch_index * 100)
        writer.write(split, batch)
        expected[split].extend(batch)
    # Streaming: before close() the batches are on disk but for what the file buffer holds.
    jsonl_bytes = sum(len(json.dumps(record, sort_keys=True, ensure_ascii=False).encode()) + 1
                      for record in expected["train"])
    assert (out / "train.jsonl").stat().st_size >= jsonl_bytes - io.DEFAULT_BUFFER_SIZE > 0

    files = writer.close()

    for split, records in expected.items():
        assert files["jsonl"][split]["records"] == files["csv"][split]["records"] == len(records)
        assert pq.read_table(out / f"{split}.parquet").to_pylist() == records
        assert [record for _, record in iter_records(out / f"{split}.jsonl")] == records
        assert read_csv(out / f"{split}.csv", "chat") == records
    assert (files["jsonl"]["train"]["records"], files["jsonl"]["validation"]["records"]) == (273, 66)


def test_only_the_requested_formats_are_written(tmp_path: Path) -> None:
    out = tmp_path / "out"

    files = write(out, "text", {"train": [make_records("text", 2)]}, formats=("parquet", "jsonl", "parquet"))

    assert list(files) == ["parquet", "jsonl"]
    assert sorted(path.name for path in out.iterdir()) == [
        "train.jsonl", "train.parquet", "validation.jsonl", "validation.parquet",
    ]


@pytest.mark.parametrize(
    ("kind", "record"),
    [
        ("text", {"text": "a", "id": "1"}),
        ("text", {"txt": "a"}),
        ("text", {"text": None}),
        ("instruction", {"instruction": "a", "output": "b"}),
        ("instruction", {"instruction": "a", "input": 3, "output": "b"}),
        ("chat", {"messages": "hallo"}),
        ("chat", {"messages": [{"role": "user", "content": "a", "name": "x"}]}),
        ("chat", {"messages": [{"role": "user", "content": None}]}),
        ("chat", ["not", "a", "dict"]),
    ],
)
def test_malformed_records_are_refused_and_the_batch_is_not_written(tmp_path: Path, kind: str, record: Any) -> None:
    writer = DatasetWriter(tmp_path / "out", ["jsonl", "parquet", "csv"], kind)
    good = make_records(kind, 2)

    with pytest.raises(ValueError, match="record 1 of the batch"):
        writer.write("train", [good[0], record])
    writer.write("train", good)
    files = writer.close()

    assert files["jsonl"]["train"]["records"] == 2
    assert pq.read_table(tmp_path / "out" / "train.parquet").to_pylist() == good
    assert [record for _, record in iter_records(tmp_path / "out" / "train.jsonl")] == good


def test_existing_files_are_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "validation.csv").write_text("keep me")

    with pytest.raises(FileExistsError):
        DatasetWriter(out, ["jsonl", "csv"], "text")

    assert (out / "validation.csv").read_text() == "keep me"


@pytest.mark.parametrize(("formats", "kind"), [([], "text"), (["xlsx"], "text"), (["jsonl"], "messages")])
def test_unknown_formats_and_kinds_are_refused(tmp_path: Path, formats: list[str], kind: Any) -> None:
    with pytest.raises(ValueError):
        DatasetWriter(tmp_path / "out", formats, kind)


def test_a_closed_writer_refuses_more_work(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "out", ["jsonl"], "text")
    writer.close()

    with pytest.raises(RuntimeError):
        writer.write("train", make_records("text", 1))
    with pytest.raises(RuntimeError):
        writer.close()


def test_unknown_splits_are_refused(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "out", ["jsonl"], "text")

    with pytest.raises(ValueError, match="split"):
        writer.write("test", make_records("text", 1))
    writer.abort()


@pytest.mark.parametrize("formats", [("jsonl", "parquet"), ("parquet",)])
def test_read_preview_returns_the_first_records(tmp_path: Path, formats: tuple[str, ...]) -> None:
    records = make_records("chat", 25)
    out = tmp_path / "out"
    files = write(out, "chat", {"train": [records[:10], records[10:]]}, formats=formats, row_group_rows=4)

    assert read_preview(out, files, "train", 3) == records[:3]
    assert read_preview(out, files, "train", 11) == records[:11]
    assert read_preview(out, files, "train", 100) == records
    assert read_preview(out, files, "train", 0) == []


def test_read_preview_refuses_paths_outside_the_dataset(tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = write(out, "text", {"train": [make_records("text", 2)]}, formats=("jsonl",))
    (tmp_path / "secret.jsonl").write_text('{"text": "secret"}\n')

    escaping = {"jsonl": {"train": {**files["jsonl"]["train"], "path": "../secret.jsonl"}}}

    with pytest.raises(ValueError, match="outside"):
        read_preview(out, escaping, "train", 5)
    with pytest.raises(ValueError):
        read_preview(out, {"csv": files["jsonl"]}, "train", 5)


FORMULAS = ["=HYPERLINK(\"http://x\")", "+1+2", "-3", "@SUM(A1)", "\tTab", "harmlos = 1", "'schon"]


def test_csv_cells_a_spreadsheet_would_run_are_escaped(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "out", ["jsonl", "csv"], "instruction")
    records = [{"instruction": text, "input": "", "output": "ok"} for text in FORMULAS]
    writer.write("train", records)
    writer.close()
    escaped = [row["instruction"] for row in read_csv(tmp_path / "out" / "train.csv", "instruction")]
    assert escaped == ["'=HYPERLINK(\"http://x\")", "'+1+2", "'-3", "'@SUM(A1)", "'\tTab", "harmlos = 1", "'schon"]
    # JSONL, what the trainers read, keeps the records as they are.
    lines = (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["instruction"] for line in lines] == FORMULAS


def test_csv_escaping_can_be_turned_off_for_machine_consumers(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "out", ["csv"], "text", escape_formulas=False)
    writer.write("train", [{"text": text} for text in FORMULAS])
    writer.close()
    assert [row["text"] for row in read_csv(tmp_path / "out" / "train.csv", "text")] == FORMULAS
