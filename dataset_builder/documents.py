"""The document that flows from a source through the quality stages to a formatted record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One document: where it came from, its fields, and the text the quality stages judge."""

    source: str
    """The source type it came from: postgres, chroma, neo4j or upload."""
    id: str
    """Its id in that source; (source, id) names it across a build."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Its fields, e.g. title, content, metadata, created_at; an upload's record fields."""
    text_fields: tuple[str, ...] = ("content",)
    """The fields whose strings make up `text`, in order."""

    @property
    def text(self) -> str:
        """The text the filters judge: the strings of text_fields joined by blank lines."""
        parts: list[str] = []
        for name in self.text_fields:
            _collect_strings(self.fields.get(name), parts)
        return "\n\n".join(part for part in parts if part)

    def map_strings(self, transform: Callable[[str], str]) -> None:
        """Apply a text transformation to every string in the text fields, nested ones included."""
        for name in self.text_fields:
            if name in self.fields:
                self.fields[name] = _map_strings(self.fields[name], transform)


def _collect_strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            # A chat message's role is markup, not text to judge or rewrite.
            if key != "role":
                _collect_strings(item, out)
    elif isinstance(value, list):
        for item in value:
            _collect_strings(item, out)


def _map_strings(value: Any, transform: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return transform(value)
    if isinstance(value, dict):
        return {key: item if key == "role" else _map_strings(item, transform) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, transform) for item in value]
    return value
