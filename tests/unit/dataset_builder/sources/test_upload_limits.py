"""Upload bombs: records past max_record_bytes, Parquet files whose data decompresses to far more than they
are, and values Python cannot hold; each is a problem naming its line or row, never a process full of data."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dataset_builder.sources.uploads import (
    UploadError,
    UploadLimits,
    UploadStopped,
    _bounded_lines,
    parquet_problems,
    store_upload,
    validate_upload,
)

ROOT = Path(__file__).resolve().parents[4]
LIMITS = UploadLimits(max_record_bytes=1000, max_decompressed_bytes=10**6)
TOO_LARGE = "record is larger than 1000 bytes (max_record_bytes)"


def _jsonl(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "upload.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_a_jsonl_line_past_the_limit_is_named_and_the_rest_still_checked(tmp_path: Path) -> None:
    lines = [json.dumps({"text": "kurz"}), json.dumps({"text": "x" * 5000}), json.dumps({"text": 5}),
             json.dumps({"text": "y" * 980})]
    assert validate_upload(_jsonl(tmp_path, lines), "jsonl", limits=LIMITS) == [
        f"line 2: {TOO_LARGE}",
        "line 3: field 'text' must be a string",
    ]


def test_a_long_line_is_never_read_whole() -> None:
    reads: list[int] = []

    class Recording(io.BytesIO):
        def readline(self, size: int | None = -1) -> bytes:
            line = super().readline(size)
            reads.append(len(line))
            return line

    data = b"a\n" + b"x" * 10_000_000 + b"\nb\n"
    lines = list(_bounded_lines(Recording(data), 1000))
    assert lines == [(1, b"a\n"), (2, None), (3, b"b\n")]
    # The 10 MB line went by in chunks of at most a MiB, not as one 10 MB read.
    assert max(reads) <= 2**20


def test_a_csv_field_or_row_past_the_limit_stops_the_reading(tmp_path: Path) -> None:
    path = tmp_path / "upload.csv"
    path.write_text('text\nkurz\n"' + "x" * 5000 + '"\nnoch einer\n', encoding="utf-8")
    assert validate_upload(path, "csv", limits=LIMITS) == [f"row 2: {TOO_LARGE}; reading stopped here"]
    # Many fields each under the limit, and quoted newlines, still make one row too large.
    cells = ",".join(['"' + "y\n" * 100 + '"'] * 10)
    path.write_text("text," + ",".join(f"c{i}" for i in range(9)) + "\n" + cells + "\n", encoding="utf-8")
    assert validate_upload(path, "csv", limits=LIMITS) == [f"row 1: {TOO_LARGE}; reading stopped here"]


def test_a_record_at_the_limit_is_accepted(tmp_path: Path) -> None:
    text = "x" * (1000 - len('{"text": ""}'))
    assert validate_upload(_jsonl(tmp_path, [json.dumps({"text": text})]), "jsonl", limits=LIMITS) == []
    path = tmp_path / "upload.parquet"
    pq.write_table(pa.table({"text": ["x" * 1000]}), path)
    assert validate_upload(path, "parquet", limits=LIMITS) == []


def _bomb(path: Path, value_bytes: int, rows_before: int = 0) -> Path:
    """A tiny zstd Parquet file of one row group whose row rows_before + 1 holds value_bytes of text."""
    texts = pa.array(["klein"] * rows_before + ["x" * value_bytes], pa.string())
    pq.write_table(pa.table({"text": texts}), path, compression="zstd", row_group_size=len(texts))
    return path


def test_a_parquet_file_whose_footer_promises_a_huge_record_is_refused_unread(tmp_path: Path) -> None:
    path = _bomb(tmp_path / "bomb.parquet", 5_000_000)
    assert path.stat().st_size < 10_000
    expected = ["rows 1-1: row group 1 decompresses to", "so a record is larger than 1000 bytes"]
    assert all(part in parquet_problems(path, LIMITS)[0] for part in expected)
    problems = validate_upload(path, "parquet", limits=LIMITS)
    assert len(problems) == 2 and all(part in problems[0] for part in expected)
    assert problems[1].startswith("file: decompresses to") and "max_upload_decompressed_bytes" in problems[1]


def test_a_huge_row_among_small_ones_is_caught_alone(tmp_path: Path) -> None:
    path = _bomb(tmp_path / "hidden.parquet", 5_000, rows_before=20)
    assert parquet_problems(path, LIMITS) == []
    assert validate_upload(path, "parquet", limits=LIMITS) == [f"row 21: {TOO_LARGE}"]


def test_a_value_repeated_through_a_dictionary_is_measured_per_row(tmp_path: Path) -> None:
    path = tmp_path / "repeated.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(200)], "text": ["z" * 3000] * 200}), path,
                   use_dictionary=True)
    assert parquet_problems(path, LIMITS) == []
    problems = validate_upload(path, "parquet", limits=LIMITS)
    assert problems[0] == f"row 1: {TOO_LARGE}" and problems[-1] == "and 150 more problems"


def test_messages_are_measured_through_lists_and_structs(tmp_path: Path) -> None:
    path = tmp_path / "chat.parquet"
    short = [{"role": "user", "content": "Frage?"}, {"role": "assistant", "content": "Antwort."}]
    long = [{"role": "user", "content": "Frage?"}] + [{"role": "assistant", "content": "a" * 300}] * 4
    pq.write_table(pa.table({"messages": [short, long, short]}), path)
    assert validate_upload(path, "parquet", limits=LIMITS) == [f"row 2: {TOO_LARGE}"]


def test_a_timestamp_python_cannot_hold_is_a_problem_of_its_row_and_field(tmp_path: Path) -> None:
    path = tmp_path / "dates.parquet"
    ids = pa.array([0, 2**55], pa.timestamp("ms"))
    pq.write_table(pa.table({"id": ids, "text": ["eins", "zwei"]}), path)
    problems = validate_upload(path, "parquet")
    assert len(problems) == 2
    assert problems[0] == "row 1: field 'id' must be a string or an integer"
    assert problems[1].startswith("row 2: field 'id' cannot be read (")


def test_store_upload_names_every_problem_and_stores_nothing(tmp_path: Path) -> None:
    lines = [json.dumps({"text": "gut"}), json.dumps({"text": "x" * 5000}), json.dumps({"txt": 1})]
    out = tmp_path / "out" / "records.parquet"
    try:
        store_upload(_jsonl(tmp_path, lines), "jsonl", out, LIMITS)
    except UploadError as error:
        assert error.problems[0] == f"line 2: {TOO_LARGE}" and error.problems[1].startswith("line 3: ")
    else:
        raise AssertionError("store_upload accepted a record past the limit")
    assert not out.exists() and not list(out.parent.iterdir())


def test_a_100_mib_record_in_a_small_parquet_file_costs_no_memory(tmp_path: Path) -> None:
    path = _bomb(tmp_path / "bomb.parquet", 100 * 2**20)
    assert path.stat().st_size < 100_000
    script = textwrap.dedent(f"""
        import resource, sys
        from dataset_builder.sources.uploads import validate_upload
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        problems = validate_upload({str(path)!r}, "parquet")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(problems[0])
        print((after - before) // 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    problem, grown_mib = result.stdout.splitlines()
    assert problem.startswith("rows 1-1: row group 1 decompresses to")
    assert int(grown_mib) < 50, f"validation grew the process by {grown_mib} MiB"


def test_storing_stops_when_asked_even_in_a_file_of_bad_records(tmp_path: Path) -> None:
    lines = [json.dumps({"txt": i}) for i in range(2500)]
    asked: list[bool] = []

    def stop() -> bool:
        asked.append(True)
        return True

    out = tmp_path / "out" / "records.parquet"
    try:
        store_upload(_jsonl(tmp_path, lines), "jsonl", out, LIMITS, should_stop=stop)
    except UploadStopped:
        pass
    else:
        raise AssertionError("store_upload did not stop")
    assert asked == [True] and not out.exists()
