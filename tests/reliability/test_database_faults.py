"""PostgreSQL goes away mid-training: the API says so with 503s and recovers, the worker's job still completes."""

from __future__ import annotations

import time

import pytest
import requests

# Short, so that the outage below outlasts the attempt's lease.
LEASE_SECONDS = 5


def _wait_for_log(path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.2)


def test_postgres_down_during_training_and_at_its_end_the_job_still_completes_once(
        make_stack, private_postgres, dataset, storage):
    url = private_postgres.create_database("clara")
    # One attempt only: the job can end completed only if the attempt that trained it records the end itself.
    stack = make_stack(database_url=url, max_attempts=1, lease_seconds=LEASE_SECONDS)
    stack.start_api()
    stack.start_workers("worker")
    admin = stack.login()
    job_id = stack.submit(admin, dataset, max_steps=300, save_steps=100)
    stack.wait_for_job(admin, job_id, lambda j: j["status"] == "running" and j["progress"]["step"] >= 20,
                       timeout=180)

    private_postgres.stop()
    down_at = time.monotonic()
    ready = requests.get(f"{stack.url}/ready", timeout=15)
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready" and ready.json()["error"]["details"]["down"] == ["database"]
    for path in (f"/api/training/jobs/{job_id}", "/api/training/jobs", f"/api/training/jobs/{job_id}/events"):
        response = requests.get(f"{stack.url}{path}", headers=admin, timeout=15)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["code"] == "database_unavailable"
    assert requests.get(f"{stack.url}/health", timeout=15).json()["active_jobs"] is None

    # Training goes on without the database; keep it down until the attempt has tried to record the end, and
    # past the lease, which the attempt still holds since nobody else could claim the job meanwhile.
    log = stack.log("worker")
    _wait_for_log(log, "Training finished after 300 steps", timeout=180)
    _wait_for_log(log, f"Could not record the end of job {job_id}", timeout=30)
    time.sleep(max(0.0, LEASE_SECONDS + 1 - (time.monotonic() - down_at)))
    private_postgres.start()

    deadline = time.monotonic() + 60
    while requests.get(f"{stack.url}/ready", timeout=15).status_code != 200:
        assert time.monotonic() < deadline, "the API did not become ready again after PostgreSQL came back"
        time.sleep(0.5)
    done = stack.wait_for_job(admin, job_id, lambda j: j["is_terminal"], timeout=120)
    assert done["status"] == "completed", done
    assert done["attempts"] == 1 and done["progress"]["step"] == 300
    assert (storage["outputs"] / job_id / "adapter_config.json").is_file()
    messages = [e["message"] for e in stack.events(admin, job_id)]
    assert messages.count("Job completed.") == 1
    assert "lost its lease" not in log.read_text()


def test_retry_unavailable_rides_out_an_outage_and_gives_up_after_its_bound(monkeypatch):
    from records import db as records_db
    from records.db import DatabaseUnavailable, retry_unavailable

    monkeypatch.setattr(records_db, "RETRY_FIRST_DELAY", 0.01)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise DatabaseUnavailable("PostgreSQL is unavailable: restarting")
        return "written"

    assert retry_unavailable(flaky, give_up_after=5, what="write") == "written" and len(calls) == 3

    def down() -> None:
        raise DatabaseUnavailable("PostgreSQL is unavailable: gone")

    began = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        retry_unavailable(down, give_up_after=0.2, what="write")
    assert time.monotonic() - began < 2
