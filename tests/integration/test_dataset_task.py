"""The dataset build task in-process: the sample corpus through every stage into files, twice identically."""

from __future__ import annotations

import json

import pytest

from auth.users import create_user
from dataset_builder.sample_corpus import load_sample_corpus
from records import datasets, jobs
from records.jobs import DATASETS
from settings import load
from tasks.datasets import run_dataset_job, source_context

SPEC = {
    "name": "sample",
    "sources": [{"type": "postgres", "limit": 1000},
                {"type": "chroma", "collection": "documents", "query_text": "Personalausweis beantragen",
                 "top_k": 10}],
    "quality": {"min_chars": 40, "languages": ["de", "en"], "dedup": "near", "redact_pii": True},
    "format": {"kind": "text", "mapping": {"text": "{title}\n\n{content}"}},
    "split": {"validation_fraction": 0.2, "seed": 7},
    "export_formats": ["jsonl", "parquet", "csv"],
}


@pytest.fixture
def settings(settings_overrides):
    return load(settings_overrides, environ={})


@pytest.fixture
def corpus(db, settings):
    return load_sample_corpus(source_context(db, settings))


@pytest.fixture
def owner(db):
    return create_user(db, "ana", "ana-password-long", "analyst")


def _build(db, settings, owner, spec=SPEC):
    dataset = datasets.create_dataset(db, name=spec["name"], description="", kind="build", spec=spec,
                                      owner_id=owner["id"])
    summary = run_dataset_job(db, settings, dataset["id"], worker="test-worker")
    return summary, datasets.get_dataset(db, dataset["id"])


def test_sample_corpus_builds_through_every_stage(db, settings, corpus, owner):
    summary, dataset = _build(db, settings, owner)
    assert summary["outcome"] == "completed", dataset["error_message"]
    manifest = dataset["manifest"]
    counts = manifest["counts"]
    assert counts["read"] == corpus["postgres"]["rows"] + 10
    assert counts["read"] >= counts["after_length"] >= counts["after_exact_dedup"] >= counts["written"] > 0
    # The chroma hits are documents the postgres source read already: exact duplicates.
    assert manifest["removed"]["exact_duplicates"] >= 10
    assert sum(manifest["redactions"].values()) > 0
    assert manifest["records"]["train"] + manifest["records"]["validation"] == counts["written"]
    for fmt in ("jsonl", "parquet", "csv"):
        for split in ("train", "validation"):
            entry = manifest["files"][fmt][split]
            path = settings.datasets_dir / str(dataset["id"]) / entry["path"]
            assert path.stat().st_size == entry["bytes"]
    lines = (settings.datasets_dir / str(dataset["id"]) / "train.jsonl").read_text().splitlines()
    assert all("@" not in json.loads(line)["text"] for line in lines)
    assert dataset["attempts"] == 1 and dataset["storage_path"]


def test_the_same_request_on_the_same_data_gives_the_same_files(db, settings, corpus, owner):
    _, first = _build(db, settings, owner)
    _, second = _build(db, settings, owner)
    assert first["manifest"]["fingerprint"] == second["manifest"]["fingerprint"]
    assert first["manifest"]["files"] == second["manifest"]["files"]


def test_a_cancelled_build_is_not_run(db, settings, corpus, owner):
    dataset = datasets.create_dataset(db, name="x", description="", kind="build", spec=SPEC, owner_id=owner["id"])
    jobs.request_cancel(db, dataset["id"], kind=DATASETS)
    assert run_dataset_job(db, settings, dataset["id"], worker="w")["outcome"] == "finished"
    assert not (settings.datasets_dir / str(dataset["id"])).exists()


def test_a_spec_that_no_longer_holds_fails_with_the_reason(db, settings, corpus, owner):
    spec = {**SPEC, "sources": [{"type": "chroma", "collection": "gone"}]}
    summary, dataset = _build(db, settings, owner, spec)
    assert summary["outcome"] == "failed"
    assert dataset["error_code"] == "invalid_spec" and "gone" in dataset["error_message"]


def test_a_build_records_its_size_on_disk(db, settings, corpus, owner):
    _, dataset = _build(db, settings, owner)
    directory = settings.datasets_dir / str(dataset["id"])
    assert dataset["size_bytes"] == sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def test_records_past_max_record_bytes_are_dropped_and_counted(db, settings_overrides, corpus, owner):
    limited = load({**settings_overrides, "max_record_bytes": 250}, environ={})
    summary, dataset = _build(db, limited, owner)
    assert summary["outcome"] == "completed", dataset["error_message"]
    manifest = dataset["manifest"]
    dropped = manifest["removed"]["too_large"]
    assert dropped > 0 and manifest["formatting"]["dropped"]["too_large"] == dropped
    lines = (limited.datasets_dir / str(dataset["id"]) / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines and all(len(json.loads(line)["text"].encode()) <= 250 for line in lines)


def test_a_build_past_its_time_limit_fails_with_time_limit(db, settings_overrides, corpus, owner):
    hurried = load({**settings_overrides, "dataset_time_limit": 0.001}, environ={})
    summary, dataset = _build(db, hurried, owner)
    assert summary["outcome"] == "failed"
    assert dataset["error_code"] == "time_limit" and "0.001 seconds" in dataset["error_message"]
    assert not (hurried.datasets_dir / str(dataset["id"])).exists()
    assert not list(hurried.datasets_dir.glob("*.partial"))


def test_an_upload_past_its_time_limit_fails_with_time_limit_and_stores_nothing(db, settings_overrides, owner):
    hurried = load({**settings_overrides, "dataset_time_limit": 0.001}, environ={})
    dataset = datasets.create_dataset(db, name="faq", description="", kind="upload", owner_id=owner["id"],
                                      spec={"type": "upload", "filename": "faq.jsonl", "format": "jsonl"})
    hurried.datasets_dir.mkdir(parents=True, exist_ok=True)
    incoming = hurried.datasets_dir / f"{dataset['id']}.incoming"
    incoming.write_text("".join(json.dumps({"text": f"Satz {i}."}) + "\n" for i in range(5000)), encoding="utf-8")
    assert run_dataset_job(db, hurried, dataset["id"], worker="w")["outcome"] == "failed"
    ended = datasets.get_dataset(db, dataset["id"])
    assert ended["error_code"] == "time_limit" and ended["size_bytes"] is None
    assert not incoming.exists() and list(hurried.datasets_dir.iterdir()) == []
