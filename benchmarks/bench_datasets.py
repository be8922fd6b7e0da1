"""`make bench-datasets`: the dataset builder on the German federal law corpus, against its anchors.

Loads ../shared/corpora/gesetze-paragraphs.jsonl.gz into a documents table of its own database, then
measures in one run on one machine: extraction against COPY ... TO STDOUT, export against a bare
pyarrow write, near-duplicate removal against datasketch, and the whole build (docs/s per stage, peak
memory). Writes benchmarks/results/datasets.json.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg2 import sql
from psycopg2.extras import Json, execute_values

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.near_dedup import compare_with_datasketch  # noqa: E402
from dataset_builder.build import build_dataset, parse_spec  # noqa: E402
from dataset_builder.export import DatasetWriter  # noqa: E402
from dataset_builder.sources.context import DocumentTable, SourceContext  # noqa: E402
from dataset_builder.sources.postgres import ensure_documents_table  # noqa: E402
from dataset_builder.sources.postgres import read as read_postgres  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpora" / "gesetze-paragraphs.jsonl.gz"
ADMIN_URL = os.environ.get("CLARA_BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "clara_bench_datasets"
RESULTS = ROOT / "benchmarks" / "results" / "datasets.json"


def _url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def load_corpus(limit: int | None) -> int:
    """(Re)create the benchmark database and load the corpus into its documents table."""
    admin = psycopg2.connect(ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    admin.close()
    ensure_documents_table(_url(DATABASE))
    rows = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if limit is not None and number >= limit:
                break
            doc = json.loads(line)
            rows.append((doc["id"], doc["section"], doc["text"], Json({"law": doc["law"], "title": doc["title"]}),
                         doc.get("enacted")))
    with psycopg2.connect(_url(DATABASE)) as conn, conn.cursor() as cur:
        execute_values(cur, "INSERT INTO documents (id, title, content, metadata, created_at) VALUES %s", rows,
                       page_size=5000)
    # Freshly loaded rows make their first reader write hint bits; VACUUM does that here instead, so
    # whichever reader the benchmark runs first is not charged for it.
    conn = psycopg2.connect(_url(DATABASE))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM (ANALYZE) documents")
    conn.close()
    return len(rows)


COPY_QUERY = "COPY (SELECT id, title, content, metadata, created_at FROM documents ORDER BY id) TO STDOUT"


def _timed_copy(query: str) -> tuple[float, float]:
    """Wall and client CPU seconds of one COPY of the documents into memory."""
    conn = psycopg2.connect(_url(DATABASE))
    started, cpu = time.perf_counter(), time.process_time()
    buffer = io.BytesIO()
    with conn.cursor() as cur:
        cur.copy_expert(query, buffer)
    timings = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    return timings


def bench_extraction(context: SourceContext, repeats: int = 5) -> dict:
    """Clara's postgres source against COPY ... TO STDOUT of the same rows: medians of interleaved runs."""
    runs: dict[str, list[tuple[float, float]]] = {"copy": [], "binary_copy": [], "clara": []}
    count = 0
    for _ in range(repeats):
        runs["copy"].append(_timed_copy(COPY_QUERY))
        # Clara reads a binary COPY; the same COPY in binary shows what the format alone is worth.
        runs["binary_copy"].append(_timed_copy(COPY_QUERY + " (FORMAT BINARY)"))
        started, cpu = time.perf_counter(), time.process_time()
        count = sum(len(batch) for batch in read_postgres({"type": "postgres", "limit": 1_000_000}, context))
        runs["clara"].append((time.perf_counter() - started, time.process_time() - cpu))
    wall = {name: statistics.median(run[0] for run in timings) for name, timings in runs.items()}
    # Client CPU beside wall time: on a shared machine it shows the client's own cost through the noise.
    result = {"documents": count, "target_ratio": 0.8,
              "ratio_to_copy": round(wall["copy"] / wall["clara"], 3),
              "ratio_to_binary_copy": round(wall["binary_copy"] / wall["clara"], 3)}
    for name, timings in runs.items():
        result[f"{name}_seconds"] = round(wall[name], 3)
        result[f"{name}_runs"] = [round(run[0], 3) for run in timings]
        result[f"{name}_client_cpu_seconds"] = round(statistics.median(run[1] for run in timings), 3)
    return result


def bench_export(texts: list[str]) -> dict:
    """Clara's writer against one bare pyarrow Parquet and JSON write of the same records."""
    records = [{"text": text} for text in texts]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        table = pa.table({"text": texts})
        pq.write_table(table, Path(tmp) / "bare.parquet", compression="zstd")
        with open(Path(tmp) / "bare.jsonl", "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        bare_seconds = time.perf_counter() - started
        started = time.perf_counter()
        writer = DatasetWriter(Path(tmp) / "clara", ["jsonl", "parquet"], "text")
        for start in range(0, len(records), 1000):
            writer.write("train", records[start:start + 1000])
        writer.close()
        clara_seconds = time.perf_counter() - started
    return {"records": len(records), "bare_pyarrow_seconds": round(bare_seconds, 3),
            "clara_seconds": round(clara_seconds, 3), "ratio_to_bare": round(bare_seconds / clara_seconds, 3),
            "target_ratio": 0.8}


def bench_build(context: SourceContext) -> dict:
    """The whole build of the corpus with every stage on, as a user would ask for it."""
    raw = {"name": "gesetze-de", "sources": [{"type": "postgres", "limit": 1_000_000}],
           "quality": {"min_chars": 50, "languages": ["de"], "heuristics": True, "dedup": "near",
                       "near_dup_threshold": 0.8, "redact_pii": True},
           "format": {"kind": "text", "mapping": {"text": "{title}\n\n{content}"}},
           "split": {"validation_fraction": 0.05, "seed": 42}, "export_formats": ["jsonl", "parquet", "csv"]}
    spec = parse_spec(raw, context)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = build_dataset(spec, raw, context, Path(tmp) / "out")
        seconds = time.perf_counter() - started
    manifest = result.manifest
    read = manifest["counts"]["read"]
    stage_rates = {stage: round(read / secs, 1) if secs else None for stage, secs in manifest["seconds"].items()}
    return {"documents": read, "seconds": round(seconds, 3), "docs_per_second": round(read / seconds, 1),
            "target_seconds": 120, "peak_memory_mb": _peak_memory_mb(), "target_peak_memory_mb": 2048,
            "counts": manifest["counts"], "removed": manifest["removed"],
            "redactions": manifest["redactions"], "stage_seconds": manifest["seconds"],
            "stage_docs_per_second": stage_rates}


def _peak_memory_mb() -> float:
    """Peak resident memory of this process since it started, in MB."""
    # VmHWM belongs to the process image, so it starts afresh at exec. ru_maxrss does not: it keeps the
    # peak of the parent at fork time, which would charge the build with this script's corpus copies.
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _no_uploads(dataset_id: str) -> Path:
    raise ValueError("the benchmark reads no uploads")


def main() -> int:
    """Run every measurement and write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="load only the first N documents")
    parser.add_argument("--near-dup-docs", type=int, default=20000)
    args = parser.parse_args()
    if not CORPUS.exists():
        print(f"The corpus is not at {CORPUS}; nothing to measure.")
        return 1
    loaded = load_corpus(args.limit)
    print(f"Loaded {loaded} documents into {DATABASE}.")
    context = SourceContext(source_database_url=_url(DATABASE), documents_table=DocumentTable(),
                            chroma_path=tempfile.mkdtemp(), chroma_url=None, neo4j_uri=None, neo4j_user=None,
                            neo4j_password=None, upload_path=_no_uploads, batch_size=2000)
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                           "cpus": os.cpu_count()},
               "measured_at": datetime.now(UTC).isoformat(), "corpus": CORPUS.name, "documents": loaded}
    results["extraction"] = bench_extraction(context)
    print("extraction", results["extraction"])
    with psycopg2.connect(_url(DATABASE)) as conn, conn.cursor() as cur:
        cur.execute("SELECT content FROM documents ORDER BY id")
        texts = [row[0] for row in cur.fetchall()]
    results["export"] = bench_export(texts)
    print("export", results["export"])
    results["near_dedup"] = compare_with_datasketch(texts[: args.near_dup_docs])
    print("near_dedup", results["near_dedup"])
    del texts
    # A fresh process, so its peak memory is the build's alone and not this script's corpus copies.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        results["build"] = pool.apply(bench_build, (context,))
    print("build", {k: v for k, v in results["build"].items() if k in ("seconds", "docs_per_second", "peak_memory_mb")})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"Wrote {RESULTS.relative_to(ROOT)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
