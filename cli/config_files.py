"""Job and dataset specs from YAML or JSON files, with `--set key=value` overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from cli.client import ClaraError


def load_spec(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON file holding one object, the same fields as the HTTP body."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClaraError(f"Cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ClaraError(f"{path} is not UTF-8 text.") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClaraError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}.") from None
    else:
        # YAML is a superset of JSON, so any other file (.yaml, .yml, no suffix) is read as YAML.
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ClaraError(f"{path}: invalid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ClaraError(f"{path} must hold one mapping of fields, not {type(data).__name__}.")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message in one line, with the line number users need."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{' '.join(str(problem).split())}{where}."


def apply_overrides(spec: dict[str, Any], assignments: tuple[str, ...]) -> dict[str, Any]:
    """Set dotted keys such as hyperparameters.max_steps=50; values are parsed as YAML (numbers, null, lists)."""
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise ClaraError(f"--set needs KEY=VALUE, got {assignment!r}.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        target = spec
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise ClaraError(f"--set {key}: {part} is not a mapping in the spec.")
            target = child
        target[parts[-1]] = value
    return spec
