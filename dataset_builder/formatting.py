"""Turning a Document into one training record: the request's format spec and a safe template renderer.

Templates are str.format-style strings whose placeholders name a document's fields: `{title}`,
`{content}`, `{id}`, `{source}`, `{created_at}`, dotted paths into dict fields such as
`{metadata.law}`, and an upload's own fields (`{text}`, `{instruction}`, `{input}`, `{output}`).
Only plain names and dotted dict keys are allowed: no attribute access, indexing, conversions or
format specs, so a template from a request can never reach Python objects. `{{` and `}}` are
literal braces.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import re
import string
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dataset_builder.documents import Document
from trainers.record_format import record_problems

logger = logging.getLogger(__name__)

Kind = Literal["text", "instruction", "chat"]
KINDS: tuple[str, ...] = ("text", "instruction", "chat")
UPLOAD_SOURCE = "upload"

TEMPLATE_KEYS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "instruction": ("instruction", "input", "output"),
    "chat": ("system", "user", "assistant"),
}
"""The mapping keys each kind accepts, in record order."""
REQUIRED_TEMPLATE_KEYS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "instruction": ("instruction", "output"),
    "chat": ("user", "assistant"),
}
"""The mapping keys whose rendering must not be empty; a document where one is empty is dropped."""
RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "instruction": ("instruction", "input", "output"),
    "chat": ("messages",),
}
"""The keys of a formatted record of each kind."""

DEFAULT_TEXT_TEMPLATE = "{content}"
DEFAULT_TITLED_TEXT_TEMPLATE = "{title}\n\n{content}"
MAX_TEMPLATE_CHARS = 20_000
MAX_FIELD_USES = 4
"""How often one field may appear across a mapping's templates; more only amplifies a document."""
CHARS_PER_TOKEN = 4

# The first segment is a field name; later ones are dict keys, which may start with a digit
# ("metadata.2024"). Nothing may start with "_", which rules out dunder names outright.
PLACEHOLDER_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9][A-Za-z0-9_-]*)*")
# Fields that always hold text; a dotted path into one is a mistake, not a lookup.
SCALAR_FIELDS = frozenset({"id", "source", "title", "content", "created_at", "text", "instruction", "input", "output"})

_FORMATTER = string.Formatter()
Segment = tuple[str, tuple[str, ...] | None]


class TemplateError(ValueError):
    """A template is malformed or uses a placeholder the safe renderer refuses."""


@dataclass
class FormatCounts:
    """What formatting left blank or dropped, for the build manifest."""

    missing_fields: Counter[str] = field(default_factory=Counter)
    """Placeholder -> documents that had no value for it (it rendered as "")."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Reason -> documents that gave no record: "empty_<key>", "shape_mismatch", "invalid_upload", "too_large"."""

    def to_dict(self) -> dict[str, dict[str, int]]:
        """Return the counts as plain, key-sorted dicts."""
        return {
            "missing_fields": dict(sorted(self.missing_fields.items())),
            "dropped": dict(sorted(self.dropped.items())),
        }


@dataclass
class FormatSpec:
    """The request's "format": which record kind to produce and the templates that fill it."""

    kind: str
    """text, instruction or chat."""
    mapping: dict[str, str] | None = None
    """Template per record part (see TEMPLATE_KEYS); None uses the defaults."""
    input_problems: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """Problems found while reading the request: unknown keys, a value that is not an object."""

    @classmethod
    def from_dict(cls, data: object) -> FormatSpec:
        """Read a spec from the request's "format" value; problems() reports what is wrong with it."""
        if not isinstance(data, Mapping):
            # The default kind keeps the one problem that matters from drowning in follow-up ones.
            return cls(kind="text", input_problems=(f"format: must be an object, not {type(data).__name__}",))
        unknown = sorted(str(key) for key in data if key not in ("kind", "mapping"))
        return cls(
            kind=data.get("kind"),  # type: ignore[arg-type]  # problems() checks it
            mapping=data.get("mapping"),
            input_problems=tuple(f"format.{key}: unknown key; use kind and mapping" for key in unknown),
        )

    def problems(
        self, sources: Collection[str] | None = None, upload_kinds: Collection[str] | None = None
    ) -> list[str]:
        """Return every problem as "format.<field>: message"; empty when valid.

        sources: the source types of the documents (postgres, chroma, neo4j, upload), when known;
        upload_kinds: the record kinds the uploads hold, when known. Both decide whether an
        omitted mapping has a default; without them only the spec itself is checked.
        """
        found = list(self.input_problems)
        if self.kind not in KINDS:
            found.append(f"format.kind: must be one of {', '.join(KINDS)}")
            return found
        if self.mapping is None:
            found.extend(self._default_problems(sources or (), upload_kinds or ()))
        elif not isinstance(self.mapping, Mapping):
            found.append("format.mapping: must be an object of templates")
        else:
            found.extend(_mapping_problems(self.kind, self.mapping))
        return found

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as the request spells it."""
        return {"kind": self.kind, "mapping": None if self.mapping is None else dict(self.mapping)}

    def _default_problems(self, sources: Collection[str], upload_kinds: Collection[str]) -> list[str]:
        """Return why an omitted mapping has no default for these documents."""
        found = []
        stores = sorted(set(sources) - {UPLOAD_SOURCE})
        if self.kind != "text" and stores:
            keys = ", ".join(REQUIRED_TEMPLATE_KEYS[self.kind])
            found.append(f"format.mapping: kind {self.kind} from {', '.join(stores)} needs templates for {keys}")
        others = sorted(set(upload_kinds) - {self.kind})
        if others:
            found.append(f"format.mapping: required, the upload holds {', '.join(others)} records, not {self.kind}")
        return found


def _mapping_problems(kind: str, mapping: Mapping[Any, Any]) -> list[str]:
    """Return every problem with a kind's mapping of templates."""
    allowed = TEMPLATE_KEYS[kind]
    found: list[str] = []
    for key, template in mapping.items():
        if key not in allowed:
            found.append(f"format.mapping.{key}: not a part of a {kind} record; use {', '.join(allowed)}")
        elif not isinstance(template, str):
            found.append(f"format.mapping.{key}: must be a template string")
        elif len(template) > MAX_TEMPLATE_CHARS:
            found.append(f"format.mapping.{key}: must be at most {MAX_TEMPLATE_CHARS} characters")
        else:
            found.extend(f"format.mapping.{key}: {problem}" for problem in template_problems(template))
    found.extend(_repeat_problems(mapping))
    for key in REQUIRED_TEMPLATE_KEYS[kind]:
        template = mapping.get(key)
        if key not in mapping:
            found.append(f"format.mapping.{key}: required for kind {kind}")
        elif isinstance(template, str) and not template.strip():
            found.append(f"format.mapping.{key}: must not be empty")
    return found


def _repeat_problems(mapping: Mapping[Any, Any]) -> list[str]:
    """Name the template where a field is used more than MAX_FIELD_USES times across the mapping."""
    uses: Counter[str] = Counter()
    found = []
    for key, template in mapping.items():
        if not isinstance(template, str) or template_problems(template):
            continue
        for _literal, name, _spec, _conversion in _FORMATTER.parse(template):
            if name is None:
                continue
            uses[name] += 1
            if uses[name] == MAX_FIELD_USES + 1:
                found.append(f"format.mapping.{key}: placeholder {{{name}}} is used more than {MAX_FIELD_USES} "
                             "times in the mapping; each use copies the whole field into the record")
    return found


def template_problems(template: str) -> list[str]:
    """Return why a template is malformed or unsafe; empty when the safe renderer accepts it."""
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as error:
        return [f"malformed template ({error}); write literal braces as {{{{ and }}}}"]
    found: list[str] = []
    for _literal, name, spec, conversion in parts:
        if name is None:
            continue
        if conversion is not None or spec:
            found.append(f"placeholder {{{name}}} must not have a conversion (!) or format spec (:)")
        if not PLACEHOLDER_PATTERN.fullmatch(name):
            found.append(f"placeholder {{{name}}} must be a field name or a dotted path such as {{metadata.law}}")
        elif "." in name and name.split(".", 1)[0] in SCALAR_FIELDS:
            found.append(f"placeholder {{{name}}}: {name.split('.', 1)[0]} is text and has no keys")
    return found


@functools.lru_cache(maxsize=256)
def _compile(template: str) -> tuple[Segment, ...]:
    """Split a template into (literal, placeholder path) pairs; raise TemplateError when unsafe."""
    problems = template_problems(template)
    if problems:
        raise TemplateError("; ".join(problems))
    return tuple(
        (literal, None if name is None else tuple(name.split(".")))
        for literal, name, _spec, _conversion in _FORMATTER.parse(template)
    )


class RecordTooLarge(ValueError):
    """A rendered record would be larger than the record limit."""


def render(template: str, doc: Document, missing: set[str] | None = None, max_chars: int | None = None) -> str:
    """Render a template against a document, trimmed; placeholders without a value become "".

    With max_chars, raise RecordTooLarge as soon as the text grows past it, before it is all assembled.
    """
    out: list[str] = []
    chars = 0
    for literal, path in _compile(template):
        out.append(literal)
        chars += len(literal)
        if path is not None:
            value = _lookup(doc, path)
            if value is None:
                if missing is not None:
                    missing.add(".".join(path))
            else:
                text = _as_text(value)
                out.append(text)
                chars += len(text)
        if max_chars is not None and chars > max_chars:
            raise RecordTooLarge(f"more than {max_chars} characters")
    return "".join(out).strip()


def _lookup(doc: Document, path: tuple[str, ...]) -> Any:
    """Return the value at a placeholder path, or None; only dict keys are followed, never attributes."""
    root = path[0]
    # A field wins over the Document attribute, so an upload's own "id" is what {id} shows.
    if root in doc.fields:
        value = doc.fields[root]
    elif root in ("id", "source"):
        value = getattr(doc, root)
    else:
        return None
    for key in path[1:]:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _as_text(value: Any) -> str:
    """Render one field value: strings as they are, JSON for containers and booleans."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


def record_kind(record: Mapping[str, Any]) -> str | None:
    """Return the kind whose shape a record (or an upload's fields) has, or None when it has none or mixes them."""
    shapes = [
        kind
        for kind, present in (
            ("text", "text" in record),
            ("instruction", "instruction" in record or "output" in record),
            ("chat", "messages" in record),
        )
        if present
    ]
    return shapes[0] if len(shapes) == 1 else None


def format_document(doc: Document, spec: FormatSpec, counts: FormatCounts | None = None,
                    max_bytes: int | None = None) -> dict[str, Any] | None:
    """Return the record for a document, or None when a required part is empty, the shape does not fit,
    or (with max_bytes) the record's text would be larger than max_bytes of UTF-8.

    The spec must be valid (problems() empty); counts, when given, collects missing fields and drops.
    """
    counts = counts if counts is not None else FormatCounts()
    record = _format(doc, spec, counts, max_bytes)
    if record is not None and max_bytes is not None and record_bytes(record) > max_bytes:
        counts.dropped["too_large"] += 1
        return None
    return record


def record_bytes(record: Mapping[str, Any]) -> int:
    """A record's text in bytes of UTF-8: its string fields and its messages' contents."""
    return sum(len(value.encode("utf-8")) for value in _record_strings(record))


def _format(doc: Document, spec: FormatSpec, counts: FormatCounts, max_bytes: int | None) -> dict[str, Any] | None:
    """The record for a document, before its size is checked."""
    if spec.mapping is None:
        if doc.source == UPLOAD_SOURCE:
            return _pass_through(doc, spec.kind, counts)
        if spec.kind != "text":
            # Validation refuses this for stores; counting keeps a mis-validated build visible.
            counts.dropped["shape_mismatch"] += 1
            return None
        title = doc.fields.get("title")
        has_title = isinstance(title, str) and bool(title.strip())
        mapping = {"text": DEFAULT_TITLED_TEXT_TEMPLATE if has_title else DEFAULT_TEXT_TEMPLATE}
    else:
        mapping = spec.mapping
    missing: set[str] = set()
    try:
        # A character is at least one byte, so more characters than max_bytes can never fit.
        rendered = {key: render(template, doc, missing, max_bytes) for key, template in mapping.items()}
    except RecordTooLarge:
        counts.dropped["too_large"] += 1
        return None
    counts.missing_fields.update(missing)
    for key in REQUIRED_TEMPLATE_KEYS[spec.kind]:
        if not rendered.get(key):
            counts.dropped[f"empty_{key}"] += 1
            return None
    return _assemble(spec.kind, rendered)


def _assemble(kind: str, rendered: Mapping[str, str]) -> dict[str, Any]:
    """Build a record of a kind from its rendered parts; an empty system message is left out."""
    if kind == "text":
        return {"text": rendered["text"]}
    if kind == "instruction":
        return {
            "instruction": rendered["instruction"],
            "input": rendered.get("input", ""),
            "output": rendered["output"],
        }
    messages = [{"role": "system", "content": rendered["system"]}] if rendered.get("system") else []
    messages.append({"role": "user", "content": rendered["user"]})
    messages.append({"role": "assistant", "content": rendered["assistant"]})
    return {"messages": messages}


def _pass_through(doc: Document, kind: str, counts: FormatCounts) -> dict[str, Any] | None:
    """Return an upload's own record when its shape is the kind, keeping only the record's keys."""
    fields = doc.fields
    if record_kind(fields) != kind:
        counts.dropped["shape_mismatch"] += 1
        return None
    if kind == "text":
        record: dict[str, Any] = {"text": fields["text"]}
    elif kind == "instruction":
        record = {
            "instruction": fields.get("instruction"),
            "input": fields.get("input", ""),
            "output": fields.get("output"),
        }
    else:
        messages = fields["messages"]
        if isinstance(messages, list):
            # Extra message keys (e.g. "name") are dropped so every export format holds the same columns.
            messages = [
                {"role": item.get("role"), "content": item.get("content")} if isinstance(item, dict) else item
                for item in messages
            ]
        record = {"messages": messages}
    problems = record_problems(record)
    if problems:
        logger.debug("Upload record %s dropped: %s", doc.id, "; ".join(problems))
        counts.dropped["invalid_upload"] += 1
        return None
    return record


def token_estimate(record: Mapping[str, Any]) -> int:
    """Estimate a record's tokens as its characters / 4, rounded up.

    Four characters per token is the usual rule of thumb for BPE tokenizers on English and German
    prose; it is cheap and tokenizer-free, and meant for manifest totals, not for truncation.
    """
    chars = sum(len(value) for value in _record_strings(record))
    return -(-chars // CHARS_PER_TOKEN)


def _record_strings(record: Mapping[str, Any]) -> Iterator[str]:
    """Yield the text of a record: its string fields and its messages' contents."""
    for value in record.values():
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for message in value:
                if isinstance(message, Mapping) and isinstance(message.get("content"), str):
                    yield message["content"]
