"""Formatting documents into records: kinds, defaults, uploads, metadata paths, the safe renderer, validation."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from dataset_builder.documents import Document
from dataset_builder.formatting import (
    FormatCounts,
    FormatSpec,
    RecordTooLarge,
    TemplateError,
    format_document,
    record_kind,
    render,
    template_problems,
    token_estimate,
)
from trainers.record_format import record_problems


def store_document(**fields: Any) -> Document:
    """Return a postgres document with the store fields, overridden by `fields` (None removes one)."""
    values = {
        "title": "Wohngeld",
        "content": "Wohngeld ist ein Zuschuss zur Miete.",
        "metadata": {"law": "WoGG", "section": {"number": 5, "title": "Haushalt"}, "tags": ["miete", "zuschuss"]},
        "created_at": "2024-05-01T10:00:00+00:00",
        **fields,
    }
    return Document("postgres", "doc-7", {key: value for key, value in values.items() if value is not None})


def upload(**fields: Any) -> Document:
    """Return an upload document with these record fields."""
    return Document("upload", "upload-1:3", fields)


def spec(kind: str, mapping: dict[str, Any] | None = None) -> FormatSpec:
    """Return a spec read from a request, asserting it is valid."""
    data: dict[str, Any] = {"kind": kind} if mapping is None else {"kind": kind, "mapping": mapping}
    result = FormatSpec.from_dict(data)
    assert result.problems() == []
    return result


def formatted(doc: Document, format_spec: FormatSpec, counts: FormatCounts | None = None) -> dict[str, Any]:
    """Format a document, asserting it gives a record the trainers accept."""
    record = format_document(doc, format_spec, counts)
    assert record is not None
    assert record_problems(record) == []
    return record


def test_text_default_puts_the_title_before_the_content() -> None:
    record = formatted(store_document(), spec("text"))

    assert record == {"text": "Wohngeld\n\nWohngeld ist ein Zuschuss zur Miete."}


@pytest.mark.parametrize("title", [None, "", "   "])
def test_text_default_without_a_title_is_the_content(title: str | None) -> None:
    record = formatted(store_document(title=title), spec("text"))

    assert record == {"text": "Wohngeld ist ein Zuschuss zur Miete."}


def test_text_template_reads_document_attributes_and_metadata_paths() -> None:
    mapping = {"text": "[{source}/{id}] {metadata.law} § {metadata.section.number} ({created_at}): {content}"}

    record = formatted(store_document(), spec("text", mapping))

    assert record == {
        "text": "[postgres/doc-7] WoGG § 5 (2024-05-01T10:00:00+00:00): Wohngeld ist ein Zuschuss zur Miete."
    }


def test_non_string_values_render_as_json_or_iso() -> None:
    doc = store_document(created_at=datetime.date(2024, 5, 1), metadata={"tags": ["a", "ü"], "open": True})

    record = formatted(doc, spec("text", {"text": "{metadata.tags} {metadata.open} {created_at} {metadata}"}))

    assert record == {"text": '["a", "ü"] true 2024-05-01 {"open": true, "tags": ["a", "ü"]}'}


def test_literal_braces_are_kept() -> None:
    record = formatted(store_document(), spec("text", {"text": "{{law}}: {metadata.law} {{{content}}}"}))

    assert record == {"text": "{law}: WoGG {Wohngeld ist ein Zuschuss zur Miete.}"}


def test_rendered_strings_are_trimmed() -> None:
    doc = store_document(content="  \n Inhalt \n ")

    assert formatted(doc, spec("text", {"text": "  {content}  \n"})) == {"text": "Inhalt"}


def test_instruction_from_a_store_with_and_without_input() -> None:
    with_input = spec("instruction", {
        "instruction": "Fasse die Regelung zu {title} zusammen.", "input": "{content}", "output": "{metadata.law}",
    })
    without_input = spec("instruction", {"instruction": "Was regelt {title}?", "output": "{content}"})

    assert formatted(store_document(), with_input) == {
        "instruction": "Fasse die Regelung zu Wohngeld zusammen.",
        "input": "Wohngeld ist ein Zuschuss zur Miete.",
        "output": "WoGG",
    }
    assert formatted(store_document(), without_input) == {
        "instruction": "Was regelt Wohngeld?", "input": "", "output": "Wohngeld ist ein Zuschuss zur Miete.",
    }


def test_chat_from_a_store_with_a_system_message() -> None:
    mapping = {"system": "Du beantwortest Fragen zum {metadata.law}.", "user": "Was ist {title}?",
               "assistant": "{content}"}

    record = formatted(store_document(), spec("chat", mapping))

    assert record == {"messages": [
        {"role": "system", "content": "Du beantwortest Fragen zum WoGG."},
        {"role": "user", "content": "Was ist Wohngeld?"},
        {"role": "assistant", "content": "Wohngeld ist ein Zuschuss zur Miete."},
    ]}


@pytest.mark.parametrize("system", [None, "{metadata.missing}"])
def test_chat_without_a_system_message_has_user_and_assistant_only(system: str | None) -> None:
    mapping = {"user": "Was ist {title}?", "assistant": "{content}"}
    if system is not None:
        mapping["system"] = system

    record = formatted(store_document(), spec("chat", mapping))

    assert [message["role"] for message in record["messages"]] == ["user", "assistant"]


@pytest.mark.parametrize(
    ("kind", "fields", "expected"),
    [
        ("text", {"text": "  Ein Text. ", "id": "r1"}, {"text": "  Ein Text. "}),
        ("instruction", {"instruction": "Frage?", "output": "Antwort."},
         {"instruction": "Frage?", "input": "", "output": "Antwort."}),
        ("instruction", {"instruction": "Frage?", "input": "Kontext", "output": "Antwort.", "id": 3},
         {"instruction": "Frage?", "input": "Kontext", "output": "Antwort."}),
        ("chat", {"messages": [{"role": "user", "content": "Hallo"},
                               {"role": "assistant", "content": "Guten Tag", "name": "clara"}]},
         {"messages": [{"role": "user", "content": "Hallo"}, {"role": "assistant", "content": "Guten Tag"}]}),
    ],
)
def test_uploads_of_the_kind_pass_through_without_a_mapping(kind: str, fields: dict, expected: dict) -> None:
    assert formatted(upload(**fields), spec(kind)) == expected


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("instruction", {"text": "Nur Text."}),
        ("text", {"instruction": "Frage?", "output": "Antwort."}),
        ("chat", {"instruction": "Frage?", "output": "Antwort."}),
        ("text", {"text": "Gemischt", "output": "Antwort."}),
    ],
)
def test_uploads_of_another_shape_without_a_mapping_are_dropped_and_counted(kind: str, fields: dict) -> None:
    counts = FormatCounts()

    assert format_document(upload(**fields), spec(kind), counts) is None
    assert counts.dropped == {"shape_mismatch": 1}


def test_invalid_upload_records_are_dropped_and_counted() -> None:
    counts = FormatCounts()
    no_assistant = upload(messages=[{"role": "user", "content": "Hallo"}])
    empty_output = upload(instruction="Frage?", output="  ")

    assert format_document(no_assistant, spec("chat"), counts) is None
    assert format_document(empty_output, spec("instruction"), counts) is None
    assert counts.dropped == {"invalid_upload": 2}


def test_uploads_are_reshaped_by_a_mapping() -> None:
    doc = upload(instruction="Wie lange gilt der Ausweis?", input="Alter: 30", output="Zehn Jahre.", id="r9")
    mapping = {"user": "{instruction}\n\n{input}", "assistant": "{output} ({id}, {source})"}

    record = formatted(doc, spec("chat", mapping))

    assert record == {"messages": [
        {"role": "user", "content": "Wie lange gilt der Ausweis?\n\nAlter: 30"},
        {"role": "assistant", "content": "Zehn Jahre. (r9, upload)"},
    ]}


def test_missing_fields_render_empty_and_are_counted_once_per_document() -> None:
    counts = FormatCounts()
    mapping = {"text": "{metadata.court}{metadata.court}{metadata.section.missing}{metadata.law.x}{metadata.tags.0}"
                       "{content}{created}"}

    record = formatted(store_document(), spec("text", mapping), counts)

    assert record == {"text": "Wohngeld ist ein Zuschuss zur Miete."}
    assert counts.missing_fields == {
        "metadata.court": 1, "metadata.section.missing": 1, "metadata.law.x": 1, "metadata.tags.0": 1, "created": 1,
    }
    assert counts.dropped == {}


@pytest.mark.parametrize(
    ("kind", "mapping", "reason"),
    [
        ("text", {"text": "{metadata.court}"}, "empty_text"),
        ("instruction", {"instruction": "Frage zu {title}", "output": "{metadata.answer}"}, "empty_output"),
        ("instruction", {"instruction": "{metadata.question}", "output": "{content}"}, "empty_instruction"),
        ("chat", {"user": "{title}", "assistant": "  {metadata.answer}  "}, "empty_assistant"),
        ("chat", {"user": "{metadata.question}", "assistant": "{content}"}, "empty_user"),
    ],
)
def test_a_required_part_rendering_empty_gives_none(kind: str, mapping: dict, reason: str) -> None:
    counts = FormatCounts()

    assert format_document(store_document(), spec(kind, mapping), counts) is None
    assert counts.dropped == {reason: 1}
    assert counts.to_dict()["dropped"] == {reason: 1}


def test_a_store_document_without_content_gives_none_under_the_text_default() -> None:
    counts = FormatCounts()

    assert format_document(store_document(title=None, content="   "), spec("text"), counts) is None
    assert counts.dropped == {"empty_text": 1}


@pytest.mark.parametrize(
    "template",
    [
        "{content.__class__}",
        "{metadata.__class__.__init__.__globals__}",
        "{__class__}",
        "{0}",
        "{}",
        "{content!r}",
        "{content:>10}",
        "{content:{title}}",
        "{metadata[law]}",
        "{metadata.law[0]}",
        "{title.upper}",
        "{content",
        "content}",
        "{metadata..law}",
        "{meta data}",
    ],
)
def test_unsafe_or_malformed_templates_are_rejected_at_validation(template: str) -> None:
    problems = FormatSpec.from_dict({"kind": "text", "mapping": {"text": template}}).problems()

    assert problems
    assert all(problem.startswith("format.mapping.text: ") for problem in problems)
    assert template_problems(template) != []
    with pytest.raises(TemplateError):
        render(template, store_document())


@pytest.mark.parametrize(
    "template",
    ["{title}", "{metadata.law}", "{metadata.2024}", "{metadata.law-code}", "{created_at}", "Konstant", "{{x}}"],
)
def test_plain_names_and_dotted_keys_are_accepted(template: str) -> None:
    assert template_problems(template) == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("text", ["format: must be an object, not str"]),
        ({"kind": "text", "mappings": {}}, ["format.mappings: unknown key; use kind and mapping"]),
        ({"mapping": {"text": "{content}"}}, ["format.kind: must be one of text, instruction, chat"]),
        ({"kind": "json"}, ["format.kind: must be one of text, instruction, chat"]),
        ({"kind": "text", "mapping": ["{content}"]}, ["format.mapping: must be an object of templates"]),
        ({"kind": "text", "mapping": {}}, ["format.mapping.text: required for kind text"]),
        ({"kind": "instruction", "mapping": {"instruction": "{title}"}},
         ["format.mapping.output: required for kind instruction"]),
        ({"kind": "chat", "mapping": {"user": "{title}", "assistant": "{content}", "tool": "{id}"}},
         ["format.mapping.tool: not a part of a chat record; use system, user, assistant"]),
        ({"kind": "chat", "mapping": {"user": 3, "assistant": "  "}},
         ["format.mapping.user: must be a template string", "format.mapping.assistant: must not be empty"]),
        ({"kind": "text", "mapping": {"text": "x" * 20_001}},
         ["format.mapping.text: must be at most 20000 characters"]),
    ],
)
def test_spec_problems_are_all_reported(data: Any, expected: list[str]) -> None:
    assert FormatSpec.from_dict(data).problems() == expected


@pytest.mark.parametrize("kind", ["instruction", "chat"])
def test_an_omitted_mapping_is_a_problem_for_stores_but_not_for_uploads_of_the_kind(kind: str) -> None:
    format_spec = FormatSpec.from_dict({"kind": kind})

    assert format_spec.problems(sources=["postgres", "upload"]) == [
        f"format.mapping: kind {kind} from postgres needs templates for "
        + ("instruction, output" if kind == "instruction" else "user, assistant")
    ]
    assert format_spec.problems(sources=["upload"], upload_kinds=[kind]) == []


def test_an_omitted_mapping_is_a_problem_for_uploads_of_another_kind() -> None:
    format_spec = FormatSpec.from_dict({"kind": "text"})

    assert format_spec.problems(sources=["neo4j"]) == []
    assert format_spec.problems(sources=["upload"], upload_kinds=["chat", "text"]) == [
        "format.mapping: required, the upload holds chat records, not text"
    ]


def test_to_dict_round_trips() -> None:
    data = {"kind": "instruction", "mapping": {"instruction": "{title}", "output": "{content}"}}

    assert FormatSpec.from_dict(data).to_dict() == data
    assert FormatSpec.from_dict({"kind": "text"}).to_dict() == {"kind": "text", "mapping": None}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"text": ""}, 0),
        ({"text": "abcd"}, 1),
        ({"text": "abcde"}, 2),
        ({"text": "x" * 400}, 100),
        ({"instruction": "abcd", "input": "", "output": "abcdabcd"}, 3),
        ({"messages": [{"role": "user", "content": "abcd" * 3}, {"role": "assistant", "content": "ab"}]}, 4),
    ],
)
def test_token_estimate_is_characters_over_four_rounded_up(record: dict, expected: int) -> None:
    assert token_estimate(record) == expected


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"text": "a"}, "text"),
        ({"instruction": "a", "output": "b"}, "instruction"),
        ({"output": "b"}, "instruction"),
        ({"messages": []}, "chat"),
        ({"text": "a", "messages": []}, None),
        ({"title": "a"}, None),
    ],
)
def test_record_kind_matches_the_trainers_shapes(record: dict, expected: str | None) -> None:
    assert record_kind(record) == expected


def test_a_template_repeating_a_field_is_refused_naming_the_mapping_key() -> None:
    amplified = FormatSpec.from_dict({"kind": "text", "mapping": {"text": "{content}" * 2222}})
    assert amplified.problems() == [
        "format.mapping.text: placeholder {content} is used more than 4 times in the mapping; each use copies "
        "the whole field into the record"]
    spread = FormatSpec.from_dict({"kind": "instruction", "mapping": {
        "instruction": "{title} {content} {content}", "input": "{content}", "output": "{content} {content}"}})
    assert [problem.split(":")[0] for problem in spread.problems()] == ["format.mapping.output"]
    fine = {"kind": "instruction", "mapping": {"instruction": "{title}", "input": "{content}", "output": "{title}"}}
    assert FormatSpec.from_dict(fine).problems() == []


def test_a_rendered_record_past_max_bytes_is_dropped_and_counted() -> None:
    spec = FormatSpec.from_dict({"kind": "text", "mapping": {"text": "{title}\n\n{content}"}})
    counts = FormatCounts()
    long = store_document(content="ä" * 600)
    # 600 characters, 1200 bytes of UTF-8: the byte count decides.
    assert format_document(long, spec, counts, max_bytes=1000) is None
    assert format_document(store_document(content="kurz"), spec, counts, max_bytes=1000) == {
        "text": "Wohngeld\n\nkurz"}
    assert format_document(long, spec, counts) is not None
    assert counts.to_dict()["dropped"] == {"too_large": 1}


def test_rendering_stops_as_soon_as_the_text_is_past_the_limit() -> None:
    huge = store_document(content="x" * 10_000)
    with pytest.raises(RecordTooLarge):
        render("{content}{content}{content}", huge, max_chars=15_000)
    assert len(render("{content}", huge, max_chars=15_000)) == 10_000
