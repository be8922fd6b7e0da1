"""A dataset build request, checked whole: every problem of every part, named by its field.

The API checks each request with this module, so it loads nothing a build runs: the quality stages,
the exporters and the stores' client libraries are imported by dataset_builder.build and the sources'
reading modules, in the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dataset_builder.formatting import FormatSpec
from dataset_builder.quality.config import QualityConfig
from dataset_builder.sources import SourceContext, request_problems, source_problems
from dataset_builder.split import SplitSpec

EXPORT_FORMATS = ("jsonl", "parquet", "csv")
KNOWN_KEYS = {"name", "description", "sources", "quality", "format", "split", "export_formats"}
MAX_SOURCES = 20


class BuildSpecError(ValueError):
    """A build request is invalid; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class BuildSpec:
    """A validated build request."""

    name: str
    description: str
    sources: list[dict[str, Any]]
    quality: QualityConfig
    format: FormatSpec
    split: SplitSpec
    export_formats: list[str] = field(default_factory=lambda: list(EXPORT_FORMATS))


def parse_spec(data: Mapping[str, Any], context: SourceContext, *, reach_stores: bool = True) -> BuildSpec:
    """Check a whole build request, sources included, and raise one BuildSpecError listing every problem.

    With reach_stores False the sources are checked without asking their stores (request_problems), as the
    API does: it must not load the stores' client libraries, and the worker asks the stores before building.
    """
    problems = [f"{key}: unknown field" for key in data if key not in KNOWN_KEYS]
    if not isinstance(data.get("name"), str) or not data.get("name", "").strip():
        problems.append("name: must be a non-empty string")
    sources = data.get("sources")
    if not isinstance(sources, list) or not sources:
        problems.append("sources: must be a non-empty list")
        sources = []
    elif len(sources) > MAX_SOURCES:
        problems.append(f"sources: at most {MAX_SOURCES} sources")
    check = source_problems if reach_stores else request_problems
    for index, source in enumerate(sources):
        if not isinstance(source, Mapping):
            problems.append(f"sources[{index}]: must be an object")
            continue
        problems.extend(check(source, context, index))
    source_types = [s.get("type") for s in sources if isinstance(s, Mapping)]
    quality = _part(QualityConfig, data.get("quality", {}), "quality", problems)
    fmt = _part(FormatSpec, data.get("format", {"kind": "text"}), "format", problems, sources=source_types)
    split = _part(SplitSpec, data.get("split", {}), "split", problems)
    formats = data.get("export_formats", list(EXPORT_FORMATS))
    if not isinstance(formats, list) or not formats or any(f not in EXPORT_FORMATS for f in formats):
        problems.append(f"export_formats: must be a non-empty list of {', '.join(EXPORT_FORMATS)}")
    elif "jsonl" not in formats:
        # Training jobs and previews read the JSONL files.
        problems.append("export_formats: must include jsonl")
    if problems:
        raise BuildSpecError(problems)
    return BuildSpec(name=data["name"].strip(), description=str(data.get("description", "")),
                     sources=[dict(s) for s in sources], quality=quality, format=fmt, split=split,
                     export_formats=list(dict.fromkeys(formats)))


def _part(kind: Any, data: Any, name: str, problems: list[str], **context: Any) -> Any:
    """Parse one part of the request, adding its problems under its name."""
    if not isinstance(data, Mapping):
        problems.append(f"{name}: must be an object")
        return None
    try:
        part = kind.from_dict(data)
    except ValueError as exc:
        found = getattr(exc, "problems", None) or [str(exc)]
        problems.extend(p if p.startswith(f"{name}.") or p.startswith(f"{name}:") else f"{name}.{p}" for p in found)
        return None
    for problem in part.problems(**context):
        problems.append(problem if problem.startswith(name) else f"{name}.{problem}")
    return part
