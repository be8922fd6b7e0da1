"""The upload source's request checks, and where uploads wait for their worker and their records are stored.

Light on purpose: the API checks build requests and places uploads with this module, and loads no Arrow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dataset_builder.sources.context import SourceContext
from dataset_builder.sources.spec import text_problems, unknown_field_problems

FIELDS = ("dataset_id",)
UPLOAD_RECORDS_FILE = "records.parquet"
DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def incoming_path(datasets_dir: Path, dataset_id: object) -> Path:
    """Where an upload waits for its worker: <datasets_dir>/<id>.incoming, on storage every host shares."""
    return Path(datasets_dir) / f"{dataset_id}.incoming"


def stored_upload_path(datasets_dir: Path, dataset_id: str) -> Path:
    """Where an uploaded dataset's records are stored: <datasets_dir>/<id>/records.parquet; ids are never paths."""
    if not isinstance(dataset_id, str) or not DATASET_ID.fullmatch(dataset_id):
        raise ValueError(f"{dataset_id!r} is not a dataset id")
    return Path(datasets_dir) / dataset_id / UPLOAD_RECORDS_FILE


def spec_problems(spec: Mapping[str, Any], context: SourceContext, prefix: str) -> list[str]:
    """Return every problem with an upload source spec; the dataset must have been stored."""
    problems = unknown_field_problems(spec, FIELDS, prefix)
    problems += text_problems(spec, "dataset_id", prefix, required=True, max_length=200)
    if problems:
        return problems
    try:
        path = context.upload_path(spec["dataset_id"])
    except ValueError as error:
        return [f"{prefix}.dataset_id: {error}"]
    if not path.is_file():
        return [f"{prefix}.dataset_id: no uploaded dataset {spec['dataset_id']!r}"]
    return []
