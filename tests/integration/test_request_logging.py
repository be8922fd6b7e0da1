"""API log lines about a job name the job and the user who asked."""

from __future__ import annotations

import io
import json
import logging

import structured_logs

JOB = {"job_name": "faq", "base_model": "tiny-llama", "dataset_path": "demo-train.jsonl",
       "hyperparameters": {"max_steps": 5}}


def test_cancel_is_logged_with_job_and_user(client, trainer):
    job = client.post("/api/training/jobs", headers=trainer, json=JOB).get_json()
    buffer = io.StringIO()
    handler = structured_logs.handler("json")
    handler.setStream(buffer)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        assert client.post(f"/api/training/jobs/{job['id']}/cancel", headers=trainer).status_code == 200
    finally:
        root.removeHandler(handler)
    entries = [json.loads(line) for line in buffer.getvalue().splitlines()]
    cancelled = [entry for entry in entries if "cancelled training job" in entry["message"]]
    assert cancelled, entries
    assert cancelled[0]["job_id"] == job["id"] and cancelled[0]["user"] == "trainer-user"


def test_a_request_leaves_no_user_behind(client, trainer):
    client.get("/api/training/jobs", headers=trainer)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "after the request", None, None)
    structured_logs.ContextFilter().filter(record)
    assert record.user is None and record.job_id is None
