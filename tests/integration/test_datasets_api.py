"""Datasets over the API: bad specs, uploads, previews, files, deletion, and training on a dataset id."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from tests.integration.dataset_jobs import finish_upload

GOOD_JSONL = "".join(json.dumps({"instruction": f"Frage {i}: Wie melde ich mich um?", "input": "",
                                 "output": f"Antwort {i}: Im Bürgerbüro mit Personalausweis."}) + "\n"
                     for i in range(12))


def _upload(client, headers, content: bytes | str, filename: str = "faq.jsonl", **form):
    data = {"file": (io.BytesIO(content.encode() if isinstance(content, str) else content), filename), **form}
    return client.post("/api/datasets/upload", headers=headers, data=data, content_type="multipart/form-data")


@pytest.fixture
def uploaded(app, client, analyst):
    return finish_upload(app, client, analyst, _upload(client, analyst, GOOD_JSONL, name="faq"))


def test_upload_is_queued_then_stored_as_a_completed_dataset(app, client, analyst, queue_length, storage):
    response = _upload(client, analyst, GOOD_JSONL, name="faq")
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    assert queue_length("cpu") == 1 and queue_length("gpu") == 0
    assert (storage["datasets"] / f"{response.get_json()['id']}.incoming").is_file()
    uploaded = finish_upload(app, client, analyst, response)
    assert not (storage["datasets"] / f"{uploaded['id']}.incoming").exists()
    assert uploaded["status"] == "completed" and uploaded["kind"] == "upload" and uploaded["name"] == "faq"
    assert uploaded["size_bytes"] == sum(
        path.stat().st_size for path in (storage["datasets"] / uploaded["id"]).rglob("*") if path.is_file())
    manifest = uploaded["manifest"]
    assert manifest["records"] == {"train": 12, "validation": 0}
    assert set(manifest["files"]) == {"jsonl", "parquet", "csv"}
    preview = client.get(f"/api/datasets/{uploaded['id']}/preview?limit=2", headers=analyst).get_json()
    assert [r["output"] for r in preview["data"]] == ["Antwort 0: Im Bürgerbüro mit Personalausweis.",
                                                      "Antwort 1: Im Bürgerbüro mit Personalausweis."]
    parquet = client.get(f"/api/datasets/{uploaded['id']}/files/parquet", headers=analyst)
    assert parquet.status_code == 200
    assert pq.read_table(io.BytesIO(parquet.data)).num_rows == 12


@pytest.mark.parametrize("content,filename,needle", [
    ('{"text": "ok"}\n{"text": 5}\n{"txt": "x"}\n', "bad.jsonl", "line 2: field 'text' must be a string"),
    ('text\nfine\n""\n', "blank.csv", "row 2"),
    ('{"text": "ok"}\nnot json\n', "broken.jsonl", "line 2"),
    ("\n\n", "blank.jsonl", "no records"),
])
def test_bad_uploads_fail_with_the_lines_named(app, client, analyst, content, filename, needle, storage):
    response = _upload(client, analyst, content, filename)
    assert response.status_code == 202, response.get_json()
    dataset = finish_upload(app, client, analyst, response)
    assert dataset["status"] == "failed" and dataset["error"]["code"] == "invalid_records", dataset
    assert needle in dataset["error"]["message"]
    assert not (storage["datasets"] / dataset["id"]).exists()
    assert not (storage["datasets"] / f"{dataset['id']}.incoming").exists()


def test_an_empty_file_is_refused_at_once(client, analyst):
    response = _upload(client, analyst, "", "empty.jsonl")
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["details"]["fields"]["file"] == ["the file holds no records"]
    assert client.get("/api/datasets", headers=analyst).get_json()["data"] == []


def test_upload_of_an_unknown_format_is_422(client, analyst):
    response = _upload(client, analyst, "hello", "notes.txt")
    assert response.status_code == 422
    assert "format" in response.get_json()["error"]["details"]["fields"]


def test_upload_larger_than_the_limit_is_413(settings_overrides, analyst_headers_for):
    client, headers = analyst_headers_for({"max_upload_bytes": 1000})
    response = _upload(client, headers, GOOD_JSONL * 5)
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "payload_too_large"


@pytest.fixture
def analyst_headers_for(settings_overrides):
    from api import create_app
    from auth.users import create_user

    def _make(overrides):
        app = create_app({**settings_overrides, **overrides})
        create_user(app.extensions["clara_db"], "ana2", "ana-password-long", "analyst")
        client = app.test_client()
        token = client.post("/api/auth/login", json={"username": "ana2", "password": "ana-password-long"})
        return client, {"Authorization": f"Bearer {token.get_json()['access_token']}"}

    return _make


@pytest.mark.parametrize("spec,field", [
    ({"sources": [{"type": "postgres"}]}, "name"),
    ({"name": "x", "sources": []}, "sources"),
    ({"name": "x", "sources": [{"type": "ftp"}]}, "sources[0]"),
    ({"name": "x", "sources": [{"type": "neo4j", "seed_ids": ["a"], "relationships": ["CITES"]}]}, "sources[0]"),
    ({"name": "x", "sources": [{"type": "postgres", "limit": -1}]}, "sources[0].limit"),
    ({"name": "x", "sources": [{"type": "postgres"}],
      "format": {"kind": "text", "mapping": {"text": "{content.__class__}"}}}, "format.mapping.text"),
    ({"name": "x", "sources": [{"type": "postgres"}], "split": {"validation_fraction": 2}},
     "split.validation_fraction"),
    ({"name": "x", "sources": [{"type": "postgres"}], "export_formats": ["xlsx"]}, "export_formats"),
    ({"name": "x", "sources": [{"type": "postgres"}], "owner": "me"}, "owner"),
])
def test_bad_build_specs_name_the_field(client, analyst, queue_length, spec, field):
    response = client.post("/api/datasets", headers=analyst, json=spec)
    assert response.status_code == 422, response.get_json()
    fields = response.get_json()["error"]["details"]["fields"]
    assert any(name == field or name.startswith(field) for name in fields), fields
    assert queue_length("cpu") == 0


def test_a_build_is_queued_on_the_cpu_queue(client, analyst, queue_length):
    response = client.post("/api/datasets", headers=analyst, json={"name": "all", "sources": [{"type": "postgres"}]})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "queued" and queue_length("cpu") == 1 and queue_length("gpu") == 0


def test_training_on_an_uploaded_dataset_and_deleting_it_while_in_use(client, analyst, trainer, uploaded):
    job = client.post("/api/training/jobs", headers=trainer, json={
        "job_name": "faq", "base_model": "tiny-llama", "dataset_id": uploaded["id"]})
    assert job.status_code == 202, job.get_json()
    assert job.get_json()["dataset_id"] == uploaded["id"]
    assert job.get_json()["dataset_path"].endswith("train.jsonl")
    in_use = client.delete(f"/api/datasets/{uploaded['id']}", headers=analyst)
    assert in_use.status_code == 409 and in_use.get_json()["error"]["code"] == "dataset_in_use"
    client.post(f"/api/training/jobs/{job.get_json()['id']}/cancel", headers=trainer)
    assert client.delete(f"/api/datasets/{uploaded['id']}", headers=analyst).status_code == 204
    assert client.get(f"/api/datasets/{uploaded['id']}", headers=analyst).status_code == 404


@pytest.mark.parametrize("body,field", [
    ({"dataset_id": "00000000-0000-0000-0000-000000000000"}, "dataset_id"),
    ({"dataset_id": "00000000-0000-0000-0000-000000000000", "dataset_path": "demo-train.jsonl"}, "dataset_id"),
    ({}, "dataset_path"),
])
def test_training_needs_exactly_one_existing_dataset(client, trainer, body, field):
    response = client.post("/api/training/jobs", headers=trainer,
                           json={"job_name": "x", "base_model": "tiny-llama", **body})
    assert response.status_code == 422
    assert field in response.get_json()["error"]["details"]["fields"]


def test_only_owner_or_admin_changes_a_dataset(client, user_headers, admin, uploaded):
    other = user_headers("trainer", "someone-else")
    assert client.get(f"/api/datasets/{uploaded['id']}", headers=other).status_code == 200
    assert client.delete(f"/api/datasets/{uploaded['id']}", headers=other).status_code == 403
    assert client.delete(f"/api/datasets/{uploaded['id']}", headers=admin).status_code == 204
