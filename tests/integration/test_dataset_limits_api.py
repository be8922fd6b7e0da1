"""Limits of uploads and builds over the API: quotas, bombs, names, templates, allowed sources, CSV formulas."""

from __future__ import annotations

import contextlib
import io
import json

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from api import create_app
from auth.users import UsernameTaken, create_user
from tests.integration.dataset_jobs import finish_upload, run_queued_datasets

RECORDS = "".join(json.dumps({"text": f"Satz {i}: Die Anmeldung erfolgt im Bürgerbüro."}) + "\n" for i in range(3))


def _upload(client, headers, content: bytes | str, filename: str = "faq.jsonl", **form):
    data = {"file": (io.BytesIO(content.encode() if isinstance(content, str) else content), filename), **form}
    return client.post("/api/datasets/upload", headers=headers, data=data, content_type="multipart/form-data")


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


@pytest.fixture
def app_with(settings_overrides):
    """An app with these settings overrides, its client and an analyst's headers."""

    def _make(**overrides):
        app = create_app({**settings_overrides, **overrides})
        with contextlib.suppress(UsernameTaken):
            create_user(app.extensions["clara_db"], "ana2", "ana-password-long", "analyst")
        client = app.test_client()
        token = client.post("/api/auth/login", json={"username": "ana2", "password": "ana-password-long"})
        return app, client, {"Authorization": f"Bearer {token.get_json()['access_token']}"}

    return _make


def test_uploads_count_against_the_dataset_quota(app_with, storage):
    _, client, headers = app_with(max_active_datasets_per_user=1)
    assert _upload(client, headers, RECORDS).status_code == 202
    refused = _upload(client, headers, RECORDS)
    assert refused.status_code == 409, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "quota_exceeded" and error["details"]["quota"] == "max_active_datasets_per_user"
    assert len(list(storage["datasets"].glob("*.incoming"))) == 1


def test_a_full_storage_quota_refuses_uploads_and_builds(app_with):
    app, client, headers = app_with(storage_quota_bytes_per_user=1000)
    first = finish_upload(app, client, headers, _upload(client, headers, RECORDS))
    assert first["status"] == "completed" and first["size_bytes"] > 1000
    for response in (_upload(client, headers, RECORDS),
                     client.post("/api/datasets", headers=headers, json={"name": "x", "sources": [
                         {"type": "postgres"}]})):
        assert response.status_code == 409, response.get_json()
        assert response.get_json()["error"]["details"]["quota"] == "storage_quota_bytes_per_user"


def test_a_parquet_bomb_is_refused_by_its_footer_before_anything_is_stored(client, analyst, storage):
    bomb = _parquet(pa.table({"text": ["x" * 50 * 2**20]}))
    assert len(bomb) < 100_000
    response = _upload(client, analyst, bomb, "bomb.parquet")
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "invalid_records" and "max_record_bytes" in error["details"]["fields"]["file"][0]
    assert client.get("/api/datasets", headers=analyst).get_json()["data"] == []
    assert list(storage["datasets"].iterdir()) == []


def test_records_past_the_limit_fail_the_upload_naming_the_line(app_with):
    app, client, headers = app_with(max_record_bytes=200)
    content = json.dumps({"text": "kurz"}) + "\n" + json.dumps({"text": "x" * 300}) + "\n"
    dataset = finish_upload(app, client, headers, _upload(client, headers, content))
    assert dataset["status"] == "failed" and dataset["error"]["code"] == "invalid_records"
    assert "line 2: record is larger than 200 bytes (max_record_bytes)" in dataset["error"]["message"]


def test_a_timestamp_out_of_range_fails_the_upload_naming_row_and_field(app, client, analyst):
    table = pa.table({"id": pa.array([2**55], pa.timestamp("ms")), "text": ["Ein Satz."]})
    dataset = finish_upload(app, client, analyst, _upload(client, analyst, _parquet(table), "dates.parquet"))
    assert dataset["status"] == "failed" and dataset["error"]["code"] == "invalid_records"
    assert "row 1: field 'id' cannot be read" in dataset["error"]["message"]


def test_deleting_a_queued_upload_removes_its_file(app, client, analyst, storage):
    queued = _upload(client, analyst, RECORDS).get_json()
    assert (storage["datasets"] / f"{queued['id']}.incoming").is_file()
    assert client.delete(f"/api/datasets/{queued['id']}", headers=analyst).status_code == 204
    assert not (storage["datasets"] / f"{queued['id']}.incoming").exists()
    assert run_queued_datasets(app) == []


@pytest.mark.parametrize("name", ["zwei\nzeilen", "tab\there", "nul\x00", "bidi\u202eexe.txt"])
def test_names_with_control_characters_are_refused(client, analyst, name):
    for response in (_upload(client, analyst, RECORDS, name=name),
                     client.post("/api/datasets", headers=analyst, json={"name": name, "sources": [
                         {"type": "postgres"}]})):
        assert response.status_code == 422, response.get_json()
        assert "name" in response.get_json()["error"]["details"]["fields"]


def test_a_stored_name_with_a_newline_still_downloads_under_a_safe_name(app, client, analyst, db):
    dataset = finish_upload(app, client, analyst, _upload(client, analyst, RECORDS, name="faq"))
    with db.transaction() as cur:
        cur.execute("UPDATE dataset_jobs SET name = %s WHERE id = %s", ('böse\r\nSet-Cookie: x/"y', dataset["id"]))
    response = client.get(f"/api/datasets/{dataset['id']}/files/jsonl", headers=analyst)
    assert response.status_code == 200
    disposition = response.headers["Content-Disposition"]
    assert "\n" not in disposition and "\r" not in disposition and "/" not in disposition
    assert "Set-Cookie" in disposition and "train.jsonl" in disposition


def test_a_template_that_repeats_a_field_is_refused_naming_it(client, analyst, queue_length):
    response = client.post("/api/datasets", headers=analyst, json={
        "name": "x", "sources": [{"type": "postgres"}],
        "format": {"kind": "text", "mapping": {"text": "{content}" * 2222}}})
    assert response.status_code == 422, response.get_json()
    assert "format.mapping.text" in response.get_json()["error"]["details"]["fields"]
    assert queue_length("cpu") == 0


def test_builds_may_read_only_the_sources_the_allowlist_names(app_with):
    _, client, headers = app_with(source_allowlist="chroma:laws,neo4j:Law")
    for source, field in (({"type": "postgres"}, "sources[0].type"),
                          ({"type": "chroma", "collection": "personal"}, "sources[0].collection")):
        response = client.post("/api/datasets", headers=headers, json={"name": "x", "sources": [source]})
        assert response.status_code == 422, response.get_json()
        assert field in response.get_json()["error"]["details"]["fields"]
    _, open_client, open_headers = app_with(source_allowlist="postgres:documents")
    accepted = open_client.post("/api/datasets", headers=open_headers, json={"name": "x", "sources": [
        {"type": "postgres"}]})
    assert accepted.status_code == 202, accepted.get_json()


@pytest.mark.parametrize("escape", [True, False])
def test_csv_downloads_escape_formulas_unless_turned_off(app_with, escape):
    app, client, headers = app_with(csv_escape_formulas=escape)
    content = json.dumps({"text": "=HYPERLINK(\"http://evil\", \"klick\")"}) + "\n"
    dataset = finish_upload(app, client, headers, _upload(client, headers, content))
    csv_file = client.get(f"/api/datasets/{dataset['id']}/files/csv", headers=headers)
    table = pcsv.read_csv(io.BytesIO(csv_file.data))
    expected = "=HYPERLINK(\"http://evil\", \"klick\")"
    assert table.column("text").to_pylist() == ["'" + expected if escape else expected]
    jsonl = client.get(f"/api/datasets/{dataset['id']}/files/jsonl", headers=headers)
    assert json.loads(jsonl.data)["text"] == expected


def test_the_upload_is_documented_as_202(client):
    spec = client.get("/api/openapi.json").get_json()
    responses = spec["paths"]["/api/datasets/upload"]["post"]["responses"]
    assert "202" in responses and "201" not in responses

