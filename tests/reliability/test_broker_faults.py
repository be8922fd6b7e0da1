"""Broker faults: Redis restarted empty, down at submit, workers gone at cancel, a job past the visibility timeout.

Each test runs its own redis-server (no persistence) so that it can kill and restart it; the shared Redis is
never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg2
import pytest
import redis
import requests

from tests.conftest import free_port

# Short enough that lapsed leases and lost messages are noticed within seconds.
RECONCILE_SECONDS = 3
LEASE_SECONDS = 4


class PrivateRedis:
    """A redis-server without persistence on a fixed port, which a test may kill and start again empty."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The broker URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server, empty, and wait until it answers."""
        with self.log.open("a") as out:
            self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                             "--save", "", "--appendonly", "no"], stdout=out, stderr=out)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """Stop the server at once, as a crash does: everything it held is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(free_port(), tmp_path / "redis.log")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(private_redis: PrivateRedis) -> str:
    """The settings' Redis: the private server, which the stack's API and workers use."""
    return private_redis.url


def _kill_tree(pid: int) -> None:
    """SIGKILL a worker and its pool children, as a host that loses power does."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    for target in [pid, *children]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _messages(events: list[dict]) -> list[str]:
    return [event["message"] for event in events]


def test_redis_restarted_empty_loses_no_job_and_the_running_one_resumes(make_stack, dataset, private_redis):
    stack = make_stack(reconcile_seconds=RECONCILE_SECONDS, lease_seconds=LEASE_SECONDS)
    stack.start_api()
    stack.start_workers("worker")
    admin = stack.login()
    running = stack.submit(admin, dataset, max_steps=120, save_steps=5)
    queued = [stack.submit(admin, dataset, max_steps=4) for _ in range(2)]
    stack.wait_for_job(admin, running, lambda j: (j["progress"] or {}).get("step", 0) >= 6, timeout=180)
    client = redis.Redis.from_url(private_redis.url)
    assert client.llen("gpu") == 2
    client.close()

    private_redis.kill()
    private_redis.start()

    for job_id in [running, *queued]:
        job = stack.wait_for_job(admin, job_id, lambda j: j["is_terminal"], timeout=240)
        assert job["status"] == "completed", job
    for job_id in queued:
        messages = _messages(stack.events(admin, job_id))
        assert "Re-queued by the reconciler: the job was queued but the broker had no message for it." in messages
        assert stack.job(admin, job_id)["attempts"] == 1
    job = stack.job(admin, running)
    messages = _messages(stack.events(admin, running))
    # The worker stops its late-ack task when the broker connection drops (it is handed back or its lease
    # lapses), and its message died with Redis: the job came back from PostgreSQL.
    assert any(m.startswith("Re-queued by the reconciler: ") for m in messages), messages
    resumed = [int(m.rsplit(" ", 1)[1].rstrip(".")) for m in messages
               if m.startswith("Resuming from the checkpoint at step ")]
    assert resumed and resumed[0] >= 5, messages
    assert job["attempts"] <= 3 and job["progress"]["step"] == 120, job


def test_submit_while_the_broker_is_stopped_answers_503_and_queues_nothing(make_stack, dataset, private_redis,
                                                                         settings_overrides):
    stack = make_stack(reconcile_seconds=RECONCILE_SECONDS)
    stack.start_api()
    admin = stack.login()
    private_redis.kill()

    body = {"job_name": "no-broker", "base_model": "tiny-llama", "dataset_path": dataset,
            "hyperparameters": {"max_steps": 2}}
    began = time.monotonic()
    response = requests.post(f"{stack.url}/api/training/jobs", headers=admin, json=body, timeout=60)
    assert time.monotonic() - began < 30
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] in ("redis_unavailable", "broker_unavailable")
    assert "unavailable" in error["message"] and "try again" in error["message"].lower()
    conn = psycopg2.connect(settings_overrides["database_url"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status, error_code FROM training_jobs")
            rows = cur.fetchall()
    finally:
        conn.close()
    # Either no job was recorded, or it ended failed at once: none waits for a message no worker will see.
    assert all(status == "failed" and code == "broker_unavailable" for status, code in rows), rows


def test_submit_while_the_broker_refuses_the_task_fails_the_job_instead_of_queueing_it(make_stack, dataset,
                                                                                      private_redis):
    stack = make_stack(reconcile_seconds=RECONCILE_SECONDS)
    stack.start_api()
    admin = stack.login()
    client = redis.Redis.from_url(private_redis.url)
    # Redis still answers but refuses every write, so the publish is refused: the enqueue path itself is tested.
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")

    body = {"job_name": "refused", "base_model": "tiny-llama", "dataset_path": dataset,
            "hyperparameters": {"max_steps": 2}}
    response = requests.post(f"{stack.url}/api/training/jobs", headers=admin, json=body, timeout=60)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "broker_unavailable"
    assert error["message"] == "The job queue is unavailable; nothing was queued. Try again shortly."
    job = stack.job(admin, error["details"]["job_id"])
    assert job["status"] == "failed" and job["error"]["code"] == "broker_unavailable"
    client.config_set("maxmemory", "0")
    assert client.llen("gpu") == 0
    client.close()


def test_cancel_while_every_worker_is_down_holds_when_workers_return(make_stack, dataset):
    stack = make_stack(reconcile_seconds=RECONCILE_SECONDS, lease_seconds=LEASE_SECONDS)
    stack.start_api()
    stack.start_workers("first")
    admin = stack.login()
    running = stack.submit(admin, dataset, max_steps=400, save_steps=50)
    stack.wait_for_job(admin, running, lambda j: (j["progress"] or {}).get("step", 0) >= 2, timeout=180)
    _kill_tree(stack.processes["first"].pid)
    stack.wait_exit("first", timeout=30)
    waiting = stack.submit(admin, dataset, max_steps=4)

    for job_id in (running, waiting):
        response = requests.post(f"{stack.url}/api/training/jobs/{job_id}/cancel", headers=admin, timeout=30)
        assert response.status_code in (200, 202), response.text
    assert stack.job(admin, waiting)["status"] == "cancelled"
    # The killed attempt cannot stop itself: the cancel waits in PostgreSQL for the next delivery.
    assert stack.job(admin, running)["status"] == "running"

    stack.start_workers("second")
    ended = stack.wait_for_job(admin, running, lambda j: j["is_terminal"], timeout=120)
    assert ended["status"] == "cancelled" and ended["attempts"] == 1, ended
    assert not any(m.startswith("Attempt 2") for m in _messages(stack.events(admin, running)))
    # The waiting job's message reaches the new worker, which finds the job ended and never trains it.
    deadline = time.monotonic() + 60
    while f"Delivery of job {waiting} not run: finished." not in stack.log("second").read_text():
        assert time.monotonic() < deadline, stack.log("second").read_text()[-3000:]
        time.sleep(0.5)
    job = stack.job(admin, waiting)
    assert job["status"] == "cancelled" and job["attempts"] == 0 and job["started_at"] is None
    assert not any(m.startswith("Attempt") for m in _messages(stack.events(admin, waiting)))


# Redis hands an unacknowledged task out again VISIBILITY_TIMEOUT s after its delivery, once a worker's sweep
# (every VISIBILITY_TIMEOUT // 4 s) notices: about 6 s. The job must still be training then. A step of the tiny
# model takes only milliseconds on a CPU, so 600 steps were sometimes over in under 4 s, before the redelivery;
# 6000 steps take about 40 s on a 2-core machine, several times the redelivery's delay even on a faster one.
VISIBILITY_TIMEOUT = 5
LONGER_THAN_THE_VISIBILITY_TIMEOUT_STEPS = 6000


def test_a_job_longer_than_the_visibility_timeout_trains_once(make_stack, dataset):
    # Redis hands the unacknowledged task to the idle worker after 5 s; the lease keeps it from training twice.
    stack = make_stack(visibility_timeout=VISIBILITY_TIMEOUT, lease_seconds=2, reconcile_seconds=RECONCILE_SECONDS)
    stack.start_api()
    stack.start_workers("first", "second")
    admin = stack.login()
    job_id = stack.submit(admin, dataset, max_steps=LONGER_THAN_THE_VISIBILITY_TIMEOUT_STEPS)
    job = stack.wait_for_job(admin, job_id, lambda j: j["is_terminal"], timeout=400)
    assert job["status"] == "completed" and job["attempts"] == 1, job
    events = stack.events(admin, job_id)
    messages = _messages(events)
    assert len([m for m in messages if m.startswith("Attempt ")]) == 1, messages
    logs = stack.log("first").read_text() + stack.log("second").read_text()
    # The redelivery happened, and it met the live lease.
    if f"Job {job_id} is held by another attempt" not in logs:
        started, ended = (datetime.fromisoformat(event["created_at"]) for event in events
                          if event["message"].startswith(("Attempt ", "Job completed")))
        ran = (ended - started).total_seconds()
        assert ran > 2 * VISIBILITY_TIMEOUT, (
            f"the job trained only {ran:.1f} s, too short for a redelivery to meet it: "
            "raise LONGER_THAN_THE_VISIBILITY_TIMEOUT_STEPS")
        raise AssertionError(f"no redelivery met the lease of job {job_id}, which trained {ran:.1f} s")
