"""Resolving the files a request names, never letting it leave the directory it is allowed."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from settings import Settings
from trainers.record_format import sample_problems

# owner/name or a bare legacy name such as gpt2; no path tricks.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


class PathRejected(ValueError):
    """A requested path is malformed, outside its root, or missing."""


def resolve_inside(root: Path, requested: str) -> Path:
    """Resolve a relative path under root, following symlinks, and refuse anything that ends up outside."""
    pure = PurePosixPath(requested)
    if not requested or pure.is_absolute() or "\\" in requested or "\x00" in requested:
        raise PathRejected("must be a relative path")
    if any(part == ".." for part in pure.parts):
        raise PathRejected("must not contain '..'")
    root = root.resolve()
    resolved = (root / pure).resolve()
    if not resolved.is_relative_to(root):
        raise PathRejected("points outside its allowed directory")
    return resolved


def resolve_base_model(settings: Settings, requested: str) -> str:
    """Return the local model directory for a name under models_dir, or the name itself as an allowed hub id."""
    try:
        local: Path | None = resolve_inside(settings.models_dir, requested)
    except PathRejected:
        local = None
    if local is not None and local.is_dir():
        return str(local)
    if settings.allow_hub_models and _HUB_ID.match(requested):
        # Any hub id would let a user make every worker download and run whatever code or weights it names.
        if requested in settings.hub_model_allowlist:
            return requested
        raise PathRejected(f"the hub model {requested!r} is not in CLARA_HUB_MODEL_ALLOWLIST, and no model "
                           "directory has that name")
    if local is None:
        raise PathRejected("must be a hub id or a directory name under the models directory")
    raise PathRejected(f"no model directory named {requested!r} under the models directory")


def resolve_dataset(settings: Settings, requested: str) -> Path:
    """Return the training file under data_dir after checking a sample of its records (the worker checks all)."""
    path = resolve_inside(settings.data_dir, requested)
    if path.suffix != ".jsonl":
        raise PathRejected("must be a .jsonl file")
    if not path.is_file():
        raise PathRejected(f"no file named {requested!r} under the data directory")
    if path.stat().st_size > settings.max_dataset_bytes:
        raise PathRejected(f"is larger than the limit of {settings.max_dataset_bytes} bytes")
    problems = sample_problems(path, settings.submit_sample_records, settings.max_record_bytes)
    if problems:
        raise PathRejected("has bad records: " + "; ".join(problems))
    return path
