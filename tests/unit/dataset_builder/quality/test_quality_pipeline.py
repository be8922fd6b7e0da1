"""The pipeline: configuration checks, stage order, state across batches, and a report whose counts add up."""

from __future__ import annotations

import copy

import pytest

from dataset_builder.documents import Document
from dataset_builder.quality import pipeline as pipeline_module
from dataset_builder.quality.pipeline import QualityConfig, QualityConfigError, QualityPipeline

LAW = (
    "(1) Die zuständige Behörde kann auf Antrag Ausnahmen von den Vorschriften des § 12 Abs. 3 zulassen, "
    "wenn die Sicherheit des Verkehrs nicht beeinträchtigt wird. Der Antrag ist schriftlich zu stellen. "
    "(2) Die Ausnahme kann befristet und mit Auflagen verbunden werden."
)
NOTICE = (
    "Für Rückfragen steht Ihnen das Bürgerbüro zur Verfügung, montags bis freitags von acht bis zwölf Uhr, "
    "telefonisch unter 030 1234567 oder per E-Mail an buergerbuero@stadt.example.de."
)
ENGLISH = (
    "The committee met on Tuesday to discuss the budget for the coming year and agreed to fund the "
    "digitisation project of the town library."
)
REPORT_KEYS = {"counts", "removed", "removed_by_filter", "changed", "redactions", "seconds"}


def _document(number: int, content: object, **fields: object) -> Document:
    return Document("upload", f"doc-{number}", {"content": content, **fields})


def _texts(documents: list[Document]) -> list[str]:
    return [document.text for document in documents]


def test_from_dict_rejects_unknown_fields_all_at_once() -> None:
    with pytest.raises(QualityConfigError) as raised:
        QualityConfig.from_dict({"dedup": "near", "langauges": ["de"], "pii": True})
    assert [problem.split(":")[0] for problem in raised.value.problems] == ["langauges", "pii"]


def test_problems_are_listed_all_at_once() -> None:
    config = QualityConfig.from_dict(
        {
            "normalize": "yes",
            "min_chars": 500,
            "max_chars": 100,
            "min_words": -1,
            "languages": ["de", "xx", "klingon"],
            "dedup": "fuzzy",
            "near_dup_threshold": 0.3,
        }
    )
    problems = config.problems()
    assert problems[0] == "normalize: must be true or false"
    assert "min_chars: must not exceed max_chars" in problems
    assert "min_words: must be a non-negative integer or null" in problems
    assert any(
        problem.startswith("languages: unsupported language 'xx'; supported: de, en, es") for problem in problems
    )
    assert any("'klingon'" in problem for problem in problems)
    assert "dedup: must be one of none, exact, near" in problems
    assert "near_dup_threshold: must be between 0.5 and 1" in problems
    assert len(problems) == 7
    with pytest.raises(QualityConfigError):
        QualityPipeline(config)


@pytest.mark.parametrize(
    "data",
    [{}, {"languages": ["de", "en"], "dedup": "near", "near_dup_threshold": 1}, {"min_words": 0, "max_words": 0}],
)
def test_valid_configurations_have_no_problems(data: dict[str, object]) -> None:
    assert QualityConfig.from_dict(data).problems() == []


def test_stages_in_order_with_a_report_that_adds_up() -> None:
    config = QualityConfig(min_chars=40, languages=["de"], dedup="near")
    pipeline = QualityPipeline(config)
    batch = [
        _document(0, "  " + LAW.replace(" ", "  ")),
        _document(1, "Zu kurz."),
        _document(2, ENGLISH),
        _document(3, "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24"),
        _document(4, LAW),
        _document(5, LAW.replace("befristet", "zeitlich befristet")),
        _document(6, NOTICE),
    ]
    kept = pipeline.process(batch)
    assert [document.id for document in kept] == ["doc-0", "doc-6"]
    assert kept[0].fields["content"] == LAW
    assert "[PHONE]" in kept[1].fields["content"] and "[EMAIL]" in kept[1].fields["content"]
    report = pipeline.report()
    assert set(report) == REPORT_KEYS
    assert report["counts"] == {
        "read": 7,
        "after_normalize": 7,
        "after_length": 6,
        "after_language": 4,
        "after_heuristics": 4,
        "after_exact_dedup": 3,
        "after_near_dedup": 2,
    }
    assert report["removed"] == {
        "length": 1,
        "language": 2,
        "heuristics": 0,
        "exact_duplicates": 1,
        "near_duplicates": 1,
    }
    assert report["changed"] == {"normalize": 1}
    assert report["redactions"] == {"email": 1, "iban": 0, "ip": 0, "social_security": 0, "tax_id": 0, "phone": 1}
    assert set(report["seconds"]) == {
        "normalize",
        "length",
        "language",
        "heuristics",
        "exact_dedup",
        "near_dedup",
        "pii",
    }
    assert sum(report["removed"].values()) == report["counts"]["read"] - len(kept)


def test_heuristic_removals_are_reported_per_filter() -> None:
    pipeline = QualityPipeline(QualityConfig())
    kept = pipeline.process([_document(0, LAW), _document(1, "1 2 3 4 5 6 7 8 9 ab"), _document(2, "")])
    report = pipeline.report()
    assert _texts(kept) == [LAW]
    assert report["removed"]["heuristics"] == 2
    assert report["removed_by_filter"]["mean_word_length"] == 2
    assert sum(report["removed_by_filter"].values()) == 2


def test_stages_that_are_off_pass_everything_and_still_report() -> None:
    off = QualityConfig(normalize=False, heuristics=False, dedup="none", redact_pii=False)
    pipeline = QualityPipeline(off)
    batch = [_document(0, "  a  "), _document(1, "  a  "), _document(2, NOTICE)]
    kept = pipeline.process(batch)
    assert _texts(kept) == ["  a  ", "  a  ", NOTICE]
    report = pipeline.report()
    assert set(report["counts"].values()) == {3}
    assert set(report["removed"].values()) == {0}
    assert set(report["removed_by_filter"].values()) == {0} and "duplicate_5gram_chars" in report["removed_by_filter"]
    assert report["changed"] == {"normalize": 0}
    assert set(report["redactions"].values()) == {0}


def test_dedup_state_spans_batches() -> None:
    pipeline = QualityPipeline(QualityConfig(dedup="near"))
    assert _texts(pipeline.process([_document(0, LAW)])) == [LAW]
    assert pipeline.process([_document(1, LAW + "  ")]) == []
    assert pipeline.process([_document(2, LAW.replace("befristet", "zeitlich befristet"))]) == []
    report = pipeline.report()
    assert report["removed"]["exact_duplicates"] == 1 and report["removed"]["near_duplicates"] == 1


def test_every_string_of_the_text_fields_is_rewritten_and_nothing_else() -> None:
    document = Document(
        "neo4j",
        "n1",
        {
            "title": "Kontakt: chef@example.org",
            "content": ["Mail  an a@example.org", {"note": "Tel. 030 1234567", "count": 3}],
            "summary": LAW + " Kontakt: b@example.org",
        },
        text_fields=("content", "summary"),
    )
    kept = QualityPipeline(QualityConfig(heuristics=False)).process([document])
    assert kept == [document]
    assert document.fields["title"] == "Kontakt: chef@example.org"
    assert document.fields["content"] == ["Mail an [EMAIL]", {"note": "Tel. [PHONE]", "count": 3}]
    assert document.fields["summary"].endswith("Kontakt: [EMAIL]")


def test_large_batches_are_processed_in_chunks_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = [_document(number, text) for number, text in enumerate([LAW, NOTICE, LAW, "x", NOTICE + " ", ENGLISH])]
    config = QualityConfig(languages=["de"], dedup="near")
    whole = QualityPipeline(config).process(copy.deepcopy(batch))
    monkeypatch.setattr(pipeline_module, "CHUNK_CHARS", 100)
    chunked_pipeline = QualityPipeline(config)
    chunked = chunked_pipeline.process(copy.deepcopy(batch))
    assert [(document.id, document.fields) for document in chunked] == [(d.id, d.fields) for d in whole]
    assert chunked_pipeline.report()["counts"]["read"] == len(batch)
