"""One dataset build: sources, streamed in batches, through the quality pipeline, formatted, split, exported."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dataset_builder import BUILDER_VERSION
from dataset_builder.build_spec import EXPORT_FORMATS, BuildSpec, BuildSpecError, parse_spec
from dataset_builder.export import DatasetWriter
from dataset_builder.formatting import FormatCounts, format_document, token_estimate
from dataset_builder.quality.pipeline import QualityPipeline
from dataset_builder.sources import SourceContext, read_source
from dataset_builder.split import assign_split

# The request's parts are checked in build_spec; these names are re-exported for the callers that build.
__all__ = ["EXPORT_FORMATS", "MANIFEST_FILE", "BuildLimits", "BuildResult", "BuildSpec", "BuildSpecError",
           "build_dataset", "parse_spec"]

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"


@dataclass
class BuildResult:
    """How a build ended and, when it completed, its manifest."""

    status: str
    manifest: dict[str, Any] | None


@dataclass(frozen=True)
class BuildLimits:
    """Deployment limits of a build's output."""

    max_record_bytes: int | None = None
    """Records whose text is larger are dropped and counted as removed too_large (CLARA_MAX_RECORD_BYTES)."""
    escape_formulas: bool = True
    """Escape CSV cells a spreadsheet would run as formulas (CLARA_CSV_ESCAPE_FORMULAS)."""


def build_dataset(spec: BuildSpec, raw_spec: Mapping[str, Any], context: SourceContext, out_dir: Path, *,
                  on_progress: Callable[[dict[str, Any]], None] | None = None,
                  should_stop: Callable[[], bool] = lambda: False,
                  limits: BuildLimits = BuildLimits()) -> BuildResult:
    """Build the dataset into out_dir (written beside it, renamed when complete) and return its manifest."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        result = _build_into(spec, raw_spec, context, partial, on_progress, should_stop, limits)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if result.status != "completed":
        shutil.rmtree(partial, ignore_errors=True)
        return result
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return result


def _build_into(spec: BuildSpec, raw_spec: Mapping[str, Any], context: SourceContext, out_dir: Path,
                on_progress: Callable[[dict[str, Any]], None] | None,
                should_stop: Callable[[], bool], limits: BuildLimits) -> BuildResult:
    """Stream every source through the pipeline into the writer; stop between batches when asked."""
    started = time.monotonic()
    pipeline = QualityPipeline(spec.quality)
    writer = DatasetWriter(out_dir, spec.export_formats, spec.format.kind, escape_formulas=limits.escape_formulas)
    records = {"train": 0, "validation": 0}
    format_counts = FormatCounts()
    unformatted = tokens = read = 0
    seconds = {"read": 0.0, "format_split_export": 0.0}
    for source in spec.sources:
        batches = read_source(source, context)
        while True:
            tick = time.monotonic()
            batch = next(batches, None)
            seconds["read"] += time.monotonic() - tick
            if batch is None:
                break
            if should_stop():
                logger.info("Dataset build cancelled after %s documents.", read)
                return BuildResult("cancelled", None)
            read += len(batch)
            kept = pipeline.process(batch)
            tick = time.monotonic()
            by_split: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
            for document in kept:
                record = format_document(document, spec.format, format_counts, limits.max_record_bytes)
                if record is None:
                    unformatted += 1
                    continue
                tokens += token_estimate(record)
                by_split[assign_split(record, spec.split.validation_fraction, spec.split.seed)].append(record)
            for split, rows in by_split.items():
                if rows:
                    writer.write(split, rows)
                    records[split] += len(rows)
            seconds["format_split_export"] += time.monotonic() - tick
            if on_progress is not None:
                on_progress({"documents_read": read, "records_written": sum(records.values()),
                             "elapsed_seconds": round(time.monotonic() - started, 3)})
    tick = time.monotonic()
    files = writer.close()
    seconds["format_split_export"] += time.monotonic() - tick
    manifest = _manifest(spec, raw_spec, pipeline.report(), records, files, unformatted, tokens, seconds,
                         time.monotonic() - started, format_counts.dropped["too_large"])
    manifest["formatting"] = format_counts.to_dict()
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return BuildResult("completed", manifest)


def _manifest(spec: BuildSpec, raw_spec: Mapping[str, Any], report: dict[str, Any], records: dict[str, int],
              files: dict[str, Any], unformatted: int, tokens: int, seconds: dict[str, float],
              elapsed: float, too_large: int) -> dict[str, Any]:
    """Everything a user needs to trust and reproduce the dataset."""
    counts = dict(report["counts"])
    counts["written"] = records["train"] + records["validation"]
    # Identical requests on identical data give identical files, so the file hashes identify the content.
    fingerprint = hashlib.sha256(json.dumps(
        {fmt: {split: info["sha256"] for split, info in splits.items()} for fmt, splits in files.items()},
        sort_keys=True).encode()).hexdigest()
    return {
        "name": spec.name,
        "counts": counts,
        # Records larger than the record limit are among the unformattable, and counted on their own.
        "removed": {**report["removed"], "unformattable": unformatted, "too_large": too_large},
        "removed_by_filter": report.get("removed_by_filter", {}),
        "changed": report.get("changed", {}),
        "redactions": report["redactions"],
        "records": records,
        "token_estimate": tokens,
        "files": files,
        "fingerprint": fingerprint,
        "format": spec.format.kind,
        "seconds": {**report.get("seconds", {}), **{k: round(v, 3) for k, v in seconds.items()},
                    "total": round(elapsed, 3)},
        "spec": dict(raw_spec),
        "created_at": datetime.now(UTC).isoformat(),
        "builder_version": BUILDER_VERSION,
    }
