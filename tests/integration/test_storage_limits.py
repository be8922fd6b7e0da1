"""Submission checks in bounded time, the storage quota, and adapter downloads streamed under a per-user limit."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest

from records import datasets, jobs
from records.storage import usage_bytes
from settings import load
from tasks.training import run_training_job

JOB = {"job_name": "faq", "base_model": "tiny-llama", "dataset_path": "demo-train.jsonl",
       "hyperparameters": {"max_steps": 4, "batch_size": 2, "max_seq_length": 64}}
MB = 1024**2
GOOD = '{"text": "A fine record."}\n'
BAD = '{"text": 3}\n'


@pytest.fixture
def limits() -> dict[str, Any]:
    """Settings a test changes; parametrize it to change them."""
    return {}


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    return {**settings_overrides, **limits}


def _submit(client, headers, **changes):
    return client.post("/api/training/jobs", headers=headers, json={**JOB, **changes})


def _me(client, headers) -> int:
    return client.get("/api/auth/me", headers=headers).get_json()["id"]


def _error(response) -> dict[str, Any]:
    return response.get_json()["error"]


def _dataset(db, storage, owner_id: int, train: str, size_bytes: int | None = None) -> uuid.UUID:
    """A completed upload whose train.jsonl holds `train`."""
    row = datasets.create_dataset(db, name="faq", description="", kind="upload", spec={}, owner_id=owner_id)
    directory = storage["datasets"] / str(row["id"])
    directory.mkdir()
    (directory / "train.jsonl").write_text(train)
    datasets.complete_upload(db, row["id"], str(directory), {}, size_bytes=size_bytes)
    return row["id"]


def _completed_job(db, client, headers, storage, files: dict[str, bytes | int]) -> str:
    """A job marked completed whose adapter directory holds `files` (an int: incompressible bytes, whole MB)."""
    job = _submit(client, headers).get_json()
    adapter = storage["outputs"] / job["id"]
    adapter.mkdir()
    for name, content in files.items():
        if isinstance(content, int):
            # Random megabytes repeated: deflate finds no match beyond 32 KiB, so nothing compresses it away.
            block = os.urandom(MB)
            with open(adapter / name, "wb") as handle:
                for _ in range(content // MB):
                    handle.write(block)
        else:
            (adapter / name).write_bytes(content)
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = 'completed', adapter_path = %s WHERE id = %s",
                    (str(adapter), job["id"]))
    return job["id"]


# ---- submission: quotas first, then a bounded sample of the records ----

@pytest.mark.parametrize("limits", [{"max_active_jobs_per_user": 1}])
def test_a_user_at_the_jobs_quota_is_refused_before_the_dataset_is_read(client, trainer, storage):
    assert _submit(client, trainer).status_code == 202
    (storage["data"] / "bad.jsonl").write_text(BAD)
    response = _submit(client, trainer, dataset_path="bad.jsonl")
    assert response.status_code == 409
    assert _error(response)["details"]["quota"] == "max_active_jobs_per_user"


@pytest.mark.parametrize("limits", [{"storage_quota_bytes_per_user": 1000}])
def test_a_user_at_the_storage_quota_is_refused_before_the_dataset_is_read(client, trainer, db, storage):
    _dataset(db, storage, _me(client, trainer), GOOD, size_bytes=1000)
    (storage["data"] / "bad.jsonl").write_text(BAD)
    response = _submit(client, trainer, dataset_path="bad.jsonl")
    assert response.status_code == 409
    error = _error(response)
    assert error["code"] == "quota_exceeded" and "storage_quota_bytes_per_user" in error["message"]
    assert error["details"] == {"quota": "storage_quota_bytes_per_user", "limit": 1000, "used": 1000}


@pytest.mark.parametrize("limits", [{"storage_quota_bytes_per_user": 1000}])
def test_storage_counts_datasets_and_adapters_but_not_deleted_datasets(client, trainer, user_headers, db, storage):
    owner = _me(client, trainer)
    kept = _dataset(db, storage, owner, GOOD, size_bytes=300)
    deleted = _dataset(db, storage, owner, GOOD, size_bytes=5000)
    datasets.mark_deleted(db, deleted, owner_id=None)
    job = _submit(client, trainer).get_json()
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET adapter_bytes = 600 WHERE id = %s", (job["id"],))
    _dataset(db, storage, _me(client, user_headers("trainer", "other")), GOOD, size_bytes=10**6)
    assert usage_bytes(db, owner) == 900
    assert _submit(client, trainer).status_code == 202
    with db.transaction() as cur:
        cur.execute("UPDATE dataset_jobs SET size_bytes = 400 WHERE id = %s", (kept,))
    response = _submit(client, trainer)
    assert response.status_code == 409 and _error(response)["details"]["used"] == 1000


@pytest.mark.parametrize("limits", [{"submit_sample_records": 5}])
def test_submission_checks_a_sample_and_the_worker_names_the_bad_line(client, trainer, db, storage,
                                                                      settings_overrides):
    (storage["data"] / "late-bad.jsonl").write_text(GOOD * 5 + GOOD + BAD + GOOD)
    response = _submit(client, trainer, dataset_path="late-bad.jsonl")
    assert response.status_code == 202, response.get_json()
    job_id = uuid.UUID(response.get_json()["id"])
    settings = load(settings_overrides, environ={})
    assert run_training_job(db, settings, job_id, worker="w")["outcome"] == "failed"
    failed = jobs.get_job(db, job_id)
    assert failed["error_code"] == "invalid_dataset"
    assert "line 7" in failed["error_message"] and "field 'text' must be a string" in failed["error_message"]
    shown = client.get(f"/api/training/jobs/{job_id}", headers=trainer).get_json()
    assert shown["error"]["code"] == "invalid_dataset"


@pytest.mark.parametrize("limits", [{"submit_sample_records": 5}])
def test_bad_records_within_the_sample_are_still_refused_at_once(client, trainer, storage):
    (storage["data"] / "early-bad.jsonl").write_text(GOOD + BAD + GOOD * 10)
    response = _submit(client, trainer, dataset_path="early-bad.jsonl")
    assert response.status_code == 422
    assert "line 2" in _error(response)["details"]["fields"]["dataset_path"][0]


def test_the_sample_reads_a_bounded_part_of_the_file(tmp_path):
    from trainers.record_format import SAMPLE_BYTES, sample_problems

    path = tmp_path / "sample.jsonl"
    # A record past max_record_bytes is refused after reading only that much of it.
    path.write_text(GOOD + json.dumps({"text": "x" * 5000}) + "\n" + BAD)
    assert sample_problems(path, 1000, 1000) == ["line 2: record is larger than 1000 bytes (max_record_bytes)"]
    # Lines that start past SAMPLE_BYTES are left to the worker, whatever the record count allows.
    path.write_text(GOOD * (SAMPLE_BYTES // len(GOOD) + 1) + BAD)
    assert sample_problems(path, 10**9, 1000) == []
    path.write_text(GOOD * 3 + BAD)
    assert sample_problems(path, 10**9, 1000) == ["line 4: field 'text' must be a string"]


@pytest.mark.parametrize("limits", [{"max_record_bytes": 1000}])
def test_a_huge_record_is_refused_at_submission_naming_the_field(client, trainer, storage):
    (storage["data"] / "huge.jsonl").write_text(json.dumps({"text": "a" * 100_000}) + "\n")
    response = _submit(client, trainer, dataset_path="huge.jsonl")
    assert response.status_code == 422
    assert "line 1: record is larger than 1000 bytes" in _error(response)["details"]["fields"]["dataset_path"][0]


@pytest.mark.parametrize("limits", [{"max_dataset_bytes": 100}])
def test_a_dataset_files_over_the_size_limit_is_refused(client, trainer, db, storage):
    dataset_id = _dataset(db, storage, _me(client, trainer), GOOD * 10)
    response = _submit(client, trainer, dataset_path=None, dataset_id=str(dataset_id))
    assert response.status_code == 422
    assert "larger than the limit of 100 bytes" in _error(response)["details"]["fields"]["dataset_id"][0]


# ---- the worker records what a finished job stores ----

def test_a_completed_job_records_its_adapter_bytes(client, trainer, db, settings_overrides):
    job_id = uuid.UUID(_submit(client, trainer).get_json()["id"])
    settings = load(settings_overrides, environ={})
    assert run_training_job(db, settings, job_id, worker="w")["outcome"] == "completed"
    adapter = settings.output_dir / str(job_id)
    on_disk = sum(path.stat().st_size for path in adapter.rglob("*") if path.is_file())
    with db.transaction() as cur:
        cur.execute("SELECT adapter_bytes FROM training_jobs WHERE id = %s", (job_id,))
        assert cur.fetchone()["adapter_bytes"] == on_disk > 0
    assert usage_bytes(db, _me(client, trainer)) == on_disk


# ---- adapter downloads ----

# Larger than the bound below many times over; an archive built in memory would hold all of it.
LARGE = 64 * MB


def test_a_large_adapter_streams_in_bounded_memory_as_a_valid_tarball(client, trainer, db, storage, tmp_path):
    job_id = _completed_job(db, client, trainer, storage, {"adapter_config.json": b'{"r": 8}',
                                                           "adapter_model.safetensors": LARGE})
    received = tmp_path / "adapter.tar.gz"
    tracemalloc.start()
    try:
        response = client.get(f"/api/training/jobs/{job_id}/adapter", headers=trainer, buffered=False)
        assert response.status_code == 200
        with open(received, "wb") as out:
            for chunk in response.response:
                out.write(chunk)
        response.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2, f"peak {peak} bytes while streaming a {LARGE} byte file"
    with tarfile.open(received, mode="r:gz") as archive:
        members = {member.name: member for member in archive.getmembers()}
        assert set(members) == {f"{job_id}/adapter_config.json", f"{job_id}/adapter_model.safetensors"}
        assert archive.extractfile(members[f"{job_id}/adapter_config.json"]).read() == b'{"r": 8}'
        assert members[f"{job_id}/adapter_model.safetensors"].size == LARGE


def test_a_nested_adapter_round_trips(client, trainer, db, storage):
    job_id = _completed_job(db, client, trainer, storage, {"adapter_config.json": b"{}",
                                                           "weights.bin": os.urandom(300_000)})
    (storage["outputs"] / job_id / "sub").mkdir()
    (storage["outputs"] / job_id / "sub" / "tokenizer.json").write_bytes(b'{"vocab": 1}')
    response = client.get(f"/api/training/jobs/{job_id}/adapter", headers=trainer)
    assert response.status_code == 200 and response.mimetype == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.data), mode="r:gz") as archive:
        assert archive.extractfile(f"{job_id}/weights.bin").read() == (storage["outputs"] / job_id /
                                                                       "weights.bin").read_bytes()
        assert archive.extractfile(f"{job_id}/sub/tokenizer.json").read() == b'{"vocab": 1}'
        assert archive.getmember(f"{job_id}/sub").isdir()


def test_downloads_past_the_per_user_limit_answer_429(client, trainer, user_headers, db, storage, redis_url):
    import redis

    job_id = _completed_job(db, client, trainer, storage, {"adapter_config.json": b"{}"})
    url = f"/api/training/jobs/{job_id}/adapter"
    first = client.get(url, headers=trainer, buffered=False)
    second = client.get(url, headers=trainer, buffered=False)
    assert first.status_code == second.status_code == 200
    refused = client.get(url, headers=trainer)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "10"
    assert _error(refused)["code"] == "too_many_downloads" and _error(refused)["details"] == {"limit": 2}
    # Each user has slots of their own; an admin sees the trainer's job.
    assert client.get(url, headers=user_headers("admin")).status_code == 200
    # The slots live in Redis, where every API host sees them, and expire if a host dies holding one.
    key = f"clara:downloads:{_me(client, trainer)}"
    client_redis = redis.Redis.from_url(redis_url)
    assert client_redis.zcard(key) == 2 and 0 < client_redis.ttl(key) <= 300
    # Closed newest first: each streamed response holds a request context on this thread's stack.
    second.close()
    again = client.get(url, headers=trainer, buffered=False)
    assert again.status_code == 200
    for response in (again, first):
        response.close()
    assert client_redis.zcard(key) == 0
    client_redis.close()


def test_a_stale_download_slot_stops_counting(client, trainer, db, storage, redis_url):
    import redis

    job_id = _completed_job(db, client, trainer, storage, {"adapter_config.json": b"{}"})
    key = f"clara:downloads:{_me(client, trainer)}"
    client_redis = redis.Redis.from_url(redis_url)
    now = int(client_redis.time()[0])
    # Two slots of a host that died mid-download, last refreshed longer ago than a slot lives.
    client_redis.zadd(key, {"dead-1": now - 301, "dead-2": now - 400})
    response = client.get(f"/api/training/jobs/{job_id}/adapter", headers=trainer)
    assert response.status_code == 200
    assert client_redis.zcard(key) == 1  # the dead slots are gone; this download holds the one left
    response.close()
    assert client_redis.zcard(key) == 0
    client_redis.close()


def test_adapter_bytes_are_counted_from_regular_files_only(tmp_path: Path):
    from records.storage import directory_bytes

    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 5)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert directory_bytes(tmp_path) == 15
    assert directory_bytes(tmp_path / "missing") == 0


@pytest.mark.parametrize("overrides,problem", [
    ({"checkpoint_retention_hours": 0}, "CLARA_CHECKPOINT_RETENTION_HOURS must be positive"),
    ({"storage_quota_bytes_per_user": 0}, "CLARA_STORAGE_QUOTA_BYTES_PER_USER must be positive"),
    ({"max_downloads_per_user": 0}, "CLARA_MAX_DOWNLOADS_PER_USER must be positive"),
    ({"max_plot_points": 0}, "CLARA_MAX_PLOT_POINTS must be positive"),
    ({"submit_sample_records": 0}, "CLARA_SUBMIT_SAMPLE_RECORDS must be positive"),
    ({"output_dir": "var/same", "checkpoints_dir": "var/same"}, "CLARA_CHECKPOINTS_DIR must differ from"),
])
def test_storage_settings_are_checked(overrides, problem):
    from settings import SettingsError

    with pytest.raises(SettingsError) as raised:
        load(overrides, environ={})
    assert any(found.startswith(problem) for found in raised.value.problems), raised.value.problems


# ---- deleting an adapter frees its storage ----

@pytest.mark.parametrize("limits", [{"storage_quota_bytes_per_user": 1000}])
def test_deleting_an_adapter_frees_its_storage_and_keeps_the_record(client, trainer, db, storage):
    job_id = _completed_job(db, client, trainer, storage, {"adapter_model.safetensors": b"w" * 1200})
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET adapter_bytes = 1200 WHERE id = %s", (job_id,))
    checkpoint_dir = storage["checkpoints"] / job_id
    checkpoint_dir.mkdir()
    assert _submit(client, trainer).status_code == 409
    response = client.delete(f"/api/training/jobs/{job_id}/adapter", headers=trainer)
    assert response.status_code == 204
    assert not (storage["outputs"] / job_id).exists() and not checkpoint_dir.exists()
    assert usage_bytes(db, _me(client, trainer)) == 0
    job = client.get(f"/api/training/jobs/{job_id}", headers=trainer).get_json()
    assert job["status"] == "completed" and job["adapter_path"] is None
    gone = client.get(f"/api/training/jobs/{job_id}/adapter", headers=trainer)
    assert gone.status_code == 409 and "it was deleted" in _error(gone)["message"]
    again = client.delete(f"/api/training/jobs/{job_id}/adapter", headers=trainer)
    assert again.status_code == 409 and _error(again)["code"] == "adapter_not_ready"
    assert _submit(client, trainer).status_code == 202


def test_an_adapter_a_continuous_job_trains_on_is_kept(client, trainer, db, storage):
    job_id = _completed_job(db, client, trainer, storage, {"adapter_model.safetensors": b"w"})
    child = _submit(client, trainer).get_json()
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET parent_job_id = %s, status = 'running' WHERE id = %s",
                    (job_id, child["id"]))
    response = client.delete(f"/api/training/jobs/{job_id}/adapter", headers=trainer)
    assert response.status_code == 409 and _error(response)["code"] == "adapter_in_use"
    assert (storage["outputs"] / job_id / "adapter_model.safetensors").is_file()


def test_only_the_owner_or_an_admin_deletes_an_adapter(client, trainer, user_headers, admin, db, storage):
    job_id = _completed_job(db, client, trainer, storage, {"adapter_model.safetensors": b"w"})
    other = user_headers("trainer", "other-trainer")
    assert client.delete(f"/api/training/jobs/{job_id}/adapter", headers=other).status_code == 404
    assert client.delete(f"/api/training/jobs/{job_id}/adapter", headers=user_headers("analyst")).status_code == 403
    assert (storage["outputs"] / job_id).is_dir()
    assert client.delete(f"/api/training/jobs/{job_id}/adapter", headers=admin).status_code == 204
    audit = client.get("/api/audit?action=training_job.adapter_delete", headers=admin).get_json()["data"]
    assert [entry["object_id"] for entry in audit] == [job_id]
