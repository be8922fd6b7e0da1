"""The sample corpus: loaded idempotently into PostgreSQL and Chroma, and readable through the sources."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from dataset_builder import sample_corpus
from dataset_builder.sample_corpus import COLLECTION, SAMPLE_DOCUMENTS, load_sample_corpus
from dataset_builder.sources import read_source

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}")


def test_corpus_has_work_for_the_quality_stages() -> None:
    assert 60 <= len(SAMPLE_DOCUMENTS) <= 100
    assert len({doc.id for doc in SAMPLE_DOCUMENTS}) == len(SAMPLE_DOCUMENTS)
    languages = Counter(doc.language for doc in SAMPLE_DOCUMENTS)
    assert languages["de"] >= 20 and languages["en"] >= 10
    contents = Counter(doc.content for doc in SAMPLE_DOCUMENTS)
    assert sum(count - 1 for count in contents.values()) >= 2
    assert sum(bool(EMAIL.search(doc.content)) for doc in SAMPLE_DOCUMENTS) >= 3
    assert sum(bool(IBAN.search(doc.content)) for doc in SAMPLE_DOCUMENTS) >= 2
    assert {doc.kind for doc in SAMPLE_DOCUMENTS} == {"law", "faq"}


def test_main_loads_the_stores_named_by_settings_and_again_changes_nothing(
    source_database_url: str, make_context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLARA_DATABASE_URL", source_database_url)
    monkeypatch.setenv("CLARA_SOURCE_DATABASE_URL", source_database_url)
    monkeypatch.setenv("CLARA_CHROMA_PATH", str(tmp_path / "chroma"))
    monkeypatch.delenv("CLARA_CHROMA_URL", raising=False)
    assert sample_corpus.main() == 0
    out = capsys.readouterr().out
    count = len(SAMPLE_DOCUMENTS)
    assert f"Sample corpus: {count} documents" in out
    assert f"PostgreSQL table documents: {count} rows" in out
    assert f"Chroma collection documents: {count} records" in out

    context = make_context(source_database_url=source_database_url, chroma_path=str(tmp_path / "chroma"))
    assert load_sample_corpus(context) == {
        "documents": count,
        "postgres": {"table": "documents", "rows": count},
        "chroma": {"collection": COLLECTION, "records": count},
    }

    rows = [d for batch in read_source({"type": "postgres"}, context) for d in batch]
    assert len(rows) == count
    by_id = {d.id: d for d in rows}
    assert by_id["sgb5-5"].fields["metadata"] == {"law": "SGB V", "topic": "krankenversicherung",
                                                   "language": "de", "kind": "law"}
    german = read_source({"type": "postgres", "query": "Krankenkassen", "metadata": {"law": "SGB V"}}, context)
    assert "faq-de-kassenwechsel" in {d.id for batch in german for d in batch}

    nearest = read_source({"type": "chroma", "collection": COLLECTION, "query_text": "Who may read my medical records?",
                           "top_k": 3, "where": {"language": "en"}}, context)
    assert next(nearest)[0].id == "faq-en-patient-record"
