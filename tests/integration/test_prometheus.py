"""GET /metrics: jobs, queues, durations, tokens and HTTP requests in Prometheus' format, and who may scrape."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from records import jobs

JOB = {"job_name": "faq", "base_model": "tiny-llama", "dataset_path": "demo-train.jsonl",
       "hyperparameters": {"max_steps": 5}}


def _scrape(client, **kwargs) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, keyed by name and sorted labels."""
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples}


def _job(db, owner_id: int, status: str, *, seconds: int | None = None, metrics: str = "{}") -> uuid.UUID:
    job = jobs.create_job(db, job_name="m", trainer_type="lora", base_model="m", dataset_path="d.jsonl",
                          hyperparameters={}, metadata={}, owner_id=owner_id)
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = %s, metrics = %s::jsonb,"
                    " started_at = now() - %s * interval '1s',"
                    " finished_at = CASE WHEN %s::int IS NULL THEN NULL ELSE now() END WHERE id = %s",
                    (status, metrics, seconds or 0, seconds, job["id"]))
    return job["id"]


def test_jobs_queues_durations_and_tokens_are_reported(client, db, trainer, redis_url):
    owner = client.get("/api/auth/me", headers=trainer).get_json()["id"]
    assert client.post("/api/training/jobs", headers=trainer, json=JOB).status_code == 202
    _job(db, owner, "completed", seconds=120, metrics='{"trained_tokens": 5000}')
    _job(db, owner, "completed", seconds=4000, metrics='{"trained_tokens": 7000}')
    running = _job(db, owner, "running", metrics='{"trained_tokens": 300, "tokens_per_second": 1234.5}')
    redis.Redis.from_url(redis_url).rpush("cpu", "a", "b")

    samples = _scrape(client)
    assert samples[("clara_jobs", (("kind", "training"), ("status", "queued"), ("type", "lora")))] == 1
    assert samples[("clara_jobs", (("kind", "training"), ("status", "completed"), ("type", "lora")))] == 2
    assert samples[("clara_jobs", (("kind", "training"), ("status", "running"), ("type", "lora")))] == 1
    assert samples[("clara_queue_depth", (("queue", "gpu"),))] == 1
    assert samples[("clara_queue_depth", (("queue", "cpu"),))] == 2
    completed = (("kind", "training"), ("status", "completed"))
    assert samples[("clara_job_duration_seconds_count", completed)] == 2
    assert samples[("clara_job_duration_seconds_sum", completed)] == pytest.approx(4120, abs=5)
    assert samples[("clara_job_duration_seconds_bucket", (*completed[:1], ("le", "300.0"), completed[1]))] == 1
    assert samples[("clara_job_duration_seconds_bucket", (*completed[:1], ("le", "+Inf"), completed[1]))] == 2
    assert samples[("clara_trained_tokens_total", ())] == 12300
    assert samples[("clara_job_tokens_per_second", (("job_id", str(running)),))] == 1234.5
    assert samples[("clara_source_up", (("source", "postgresql"),))] == 1
    assert samples[("clara_source_up", (("source", "redis"),))] == 1


def test_requests_are_counted_by_route_rule_not_path(client, admin):
    before = _scrape(client)
    for _ in range(3):
        client.get("/health")
    client.get("/api/training/jobs/00000000-0000-0000-0000-000000000001", headers=admin)
    client.get("/api/nowhere")
    samples = _scrape(client)
    health = ("clara_http_requests_total", (("method", "GET"), ("route", "/health"), ("status", "200")))
    assert samples[health] - before.get(health, 0) == 3
    job = ("clara_http_requests_total", (("method", "GET"), ("route", "/api/training/jobs/<uuid:job_id>"),
                                         ("status", "404")))
    assert samples[job] == 1
    assert samples[("clara_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert samples[("clara_http_request_duration_seconds_count", (("method", "GET"), ("route", "/health")))] >= 3


def test_without_a_token_only_loopback_may_scrape(client):
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    response = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"


def test_behind_a_trusted_proxy_the_forwarded_client_is_not_loopback(settings_overrides):
    client = create_app({**settings_overrides, "trusted_proxies": 1}).test_client()
    proxied = {"environ_base": {"REMOTE_ADDR": "127.0.0.1"}}
    assert client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.7"}, **proxied).status_code == 403
    assert client.get("/metrics", **proxied).status_code == 200


def test_with_a_token_every_address_needs_it(app, client):
    app.extensions["clara_settings"] = dataclasses.replace(app.extensions["clara_settings"],
                                                           metrics_token="scrape-token-0123456789")
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}, environ_base=remote).status_code == 403
    _scrape(client, headers={"Authorization": "Bearer scrape-token-0123456789"}, environ_base=remote)


def test_two_apps_keep_their_own_counters(app, client, settings_overrides):

    other = create_app(settings_overrides)
    try:
        client.get("/health")
        samples = _scrape(other.test_client())
        assert ("clara_http_requests_total", (("method", "GET"), ("route", "/health"), ("status", "200"))) \
            not in samples
    finally:
        other.extensions["clara_db"].reset()
