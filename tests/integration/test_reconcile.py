"""The reconciler against real PostgreSQL and a private Redis: what it re-queues, what it leaves, and once only."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from psycopg2.extras import Json

import tasks.reconcile
from records.db import Database
from records.reconcile import LOCK_KEY
from settings import Settings, load
from tasks import make_celery
from tasks.reconcile import reconcile

OLD = "10 minutes"


@pytest.fixture
def private_redis() -> Iterator[str]:
    """A redis-server of this test's own: the shared one is never flushed."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    client.close()
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def settings(settings_overrides: dict[str, Any], private_redis: str) -> Settings:
    """Settings on this test's database and private Redis."""
    return load({**settings_overrides, "redis_url": private_redis}, environ={})


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    """This test's database."""
    database = Database(settings.database_url)
    yield database
    database.reset()


@pytest.fixture
def app(settings: Settings):
    """A Celery app publishing to the private Redis; no worker consumes."""
    return make_celery(settings, set_as_current=False)


@pytest.fixture
def broker(private_redis: str) -> Iterator[redis.Redis]:
    """A client of the private Redis."""
    client = redis.Redis.from_url(private_redis)
    yield client
    client.close()


@pytest.fixture
def owner(db: Database) -> int:
    """A user that owns the test's jobs."""
    with db.transaction() as cur:
        cur.execute("INSERT INTO users (username, password_hash, role) VALUES ('owner', 'x', 'trainer') RETURNING id")
        return cur.fetchone()["id"]


def _job(db: Database, owner: int, status: str, age: str = OLD, lease: str | None = None,
         table: str = "training_jobs") -> str:
    """Insert a job of this status created `age` ago; lease is an interval from now (negative: lapsed)."""
    job_id = uuid.uuid4()
    lease_sql = f"now() + interval '{lease}'" if lease else "NULL"
    with db.transaction() as cur:
        if table == "training_jobs":
            cur.execute(
                "INSERT INTO training_jobs (id, job_name, trainer_type, status, base_model, dataset_path,"
                f" hyperparameters, owner_id, created_at, lease_owner, lease_expires_at, attempts)"
                f" VALUES (%s, 'j', 'lora', %s, 'm', 'd.jsonl', '{{}}', %s, now() - interval '{age}', %s,"
                f" {lease_sql}, %s)",
                (job_id, status, owner, "attempt" if lease else None, 1 if status == "running" else 0))
        else:
            cur.execute(
                "INSERT INTO dataset_jobs (id, name, kind, status, spec, owner_id, created_at)"
                f" VALUES (%s, 'd', 'build', %s, %s, %s, now() - interval '{age}')",
                (job_id, status, Json({}), owner))
    return str(job_id)


def _queued_ids(broker: redis.Redis, queue: str) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in broker.lrange(queue, 0, -1)]


def _job_row(db: Database, job_id: str, table: str = "training_jobs") -> dict[str, Any]:
    with db.transaction() as cur:
        cur.execute(f"SELECT status, task_id FROM {table} WHERE id = %s", (job_id,))
        row = dict(cur.fetchone())
        events = "job_events" if table == "training_jobs" else "dataset_events"
        cur.execute(f"SELECT message FROM {events} WHERE job_id = %s ORDER BY id", (job_id,))
        row["events"] = [event["message"] for event in cur.fetchall()]
    return row


def test_queued_job_whose_message_is_gone_goes_back_on_the_broker_once(db, app, settings, broker, owner):
    job = _job(db, owner, "queued")
    assert reconcile(db, app, settings, broker) == 1
    assert _queued_ids(broker, "gpu") == [job]
    message = json.loads(broker.lrange("gpu", 0, -1)[0])
    assert message["headers"]["task"] == "clara.train_job" and message["headers"]["argsrepr"] == repr([job])
    row = _job_row(db, job)
    assert row["status"] == "queued" and row["task_id"] == job
    assert row["events"] == ["Re-queued by the reconciler: the job was queued but the broker had no message for it."]
    # The next pass finds the message it published and adds nothing.
    assert reconcile(db, app, settings, broker) == 0
    assert _queued_ids(broker, "gpu") == [job]


def test_a_job_whose_message_is_queued_or_delivered_is_left_alone(db, app, settings, broker, owner):
    waiting, delivered = _job(db, owner, "queued"), _job(db, owner, "queued")
    app.send_task("clara.train_job", args=[waiting], task_id=waiting)
    app.send_task("clara.train_job", args=[delivered], task_id=delivered)
    # What kombu does when a worker takes a message: it moves from the list to the unacked hash.
    raw = broker.rpop("gpu")
    assert json.loads(raw)["headers"]["id"] == waiting
    broker.hset("unacked", "tag-1", json.dumps([json.loads(raw), "", "gpu"]))
    assert reconcile(db, app, settings, broker) == 0
    assert _queued_ids(broker, "gpu") == [delivered]


def test_young_jobs_live_leases_and_ended_jobs_are_left_alone(db, app, settings, broker, owner):
    _job(db, owner, "queued", age="1 second")
    _job(db, owner, "pending", age="1 second")
    _job(db, owner, "running", lease="30 seconds")
    # Lapsed, but for less than a pass: its own delivery's retry normally takes it first.
    _job(db, owner, "running", lease="-5 seconds")
    for status in ("completed", "failed", "cancelled"):
        _job(db, owner, status)
    assert reconcile(db, app, settings, broker) == 0
    assert broker.llen("gpu") == 0


def test_pending_job_the_api_never_published_is_queued(db, app, settings, broker, owner):
    job = _job(db, owner, "pending")
    assert reconcile(db, app, settings, broker) == 1
    assert _queued_ids(broker, "gpu") == [job]
    assert _job_row(db, job)["status"] == "queued"


def test_running_job_whose_lease_lapsed_is_delivered_again_unless_a_message_waits(db, app, settings, broker,
                                                                                  owner):
    dead = _job(db, owner, "running", lease="-5 minutes")
    assert reconcile(db, app, settings, broker) == 1
    assert _queued_ids(broker, "gpu") == [dead]
    row = _job_row(db, dead)
    # The claim, not the reconciler, decides what happens to it: resume, cancel, or fail at max attempts.
    assert row["status"] == "running"
    assert row["events"] == ["Re-queued by the reconciler: its running attempt stopped renewing its lease."]
    assert reconcile(db, app, settings, broker) == 0


def test_a_dead_workers_unacknowledged_message_does_not_hold_a_lapsed_job_back(db, app, settings, broker, owner):
    dead = _job(db, owner, "running", lease="-5 minutes")
    app.send_task("clara.train_job", args=[dead], task_id=dead)
    # Redis would hand this back only after the visibility timeout, a day by default.
    broker.hset("unacked", "tag-1", json.dumps([json.loads(broker.rpop("gpu")), "", "gpu"]))
    assert reconcile(db, app, settings, broker) == 1
    assert _queued_ids(broker, "gpu") == [dead]


def test_dataset_jobs_go_back_to_the_cpu_queue(db, app, settings, broker, owner):
    job = _job(db, owner, "queued", table="dataset_jobs")
    assert reconcile(db, app, settings, broker) == 1
    assert _queued_ids(broker, "cpu") == [job] and broker.llen("gpu") == 0
    assert json.loads(broker.lrange("cpu", 0, -1)[0])["headers"]["task"] == "clara.build_dataset"
    assert _job_row(db, job, "dataset_jobs")["events"][-1].startswith("Re-queued by the reconciler")


def test_a_pass_is_skipped_while_another_host_holds_the_lock(db, app, settings, broker, owner):
    _job(db, owner, "queued")
    other = Database(settings.database_url, max_connections=1)
    try:
        with other.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            assert reconcile(db, app, settings, broker) == 0
        assert broker.llen("gpu") == 0
    finally:
        other.reset()
    assert reconcile(db, app, settings, broker) == 1


def test_concurrent_passes_from_many_hosts_publish_each_job_once(db, app, settings, broker, owner, private_redis,
                                                                monkeypatch):
    jobs = {_job(db, owner, "queued") for _ in range(5)}
    hosts = 4
    scan = tasks.reconcile.broker_task_ids
    turns = itertools.count()

    def slow_scan(*args: Any) -> tuple[set[str], set[str]]:
        # Stagger the gap between reading the broker and locking rows: unserialised, a later pass would
        # lock rows an earlier one already re-queued, with a broker read from before it did.
        found = scan(*args)
        time.sleep(0.3 * (next(turns) % hosts))
        return found

    monkeypatch.setattr(tasks.reconcile, "broker_task_ids", slow_scan)
    barrier = threading.Barrier(hosts)
    results: list[int] = []

    def host() -> None:
        host_db = Database(settings.database_url, max_connections=1)
        host_app = make_celery(settings, set_as_current=False)
        client = redis.Redis.from_url(private_redis)
        try:
            for _ in range(2):
                barrier.wait(timeout=30)
                results.append(reconcile(host_db, host_app, settings, client))
        finally:
            client.close()
            host_db.reset()

    threads = [threading.Thread(target=host) for _ in range(hosts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(_queued_ids(broker, "gpu")) == sorted(jobs)
    assert sum(results) == len(jobs)


def _ended_job_with_checkpoints(db: Database, settings: Settings, owner: int, status: str | None,
                                ended: str | None) -> str:
    """A job that ended `ended` ago (None: still running) with two checkpoints on disk and listed."""
    job = _job(db, owner, status or "running", lease=None if status else "1 minute")
    directory = settings.checkpoints_dir / job
    for step in (10, 20):
        (directory / f"step-{step:08d}").mkdir(parents=True)
        (directory / f"step-{step:08d}" / "adapter_model.safetensors").write_bytes(b"w" * 100)
    adapter = settings.output_dir / job
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with db.transaction() as cur:
        for step in (10, 20):
            cur.execute("INSERT INTO training_checkpoints (job_id, step, name, path, created_at)"
                        " VALUES (%s, %s, %s, %s, now())", (job, step, f"step-{step:08d}",
                                                            str(directory / f"step-{step:08d}")))
        if ended:
            cur.execute(f"UPDATE training_jobs SET finished_at = now() - interval '{ended}', adapter_path = %s"
                        " WHERE id = %s", (str(adapter), job))
    return job


def test_checkpoints_of_jobs_ended_past_the_retention_are_removed_and_unlisted(db, app, settings, owner):
    from records.checkpoints import list_checkpoints
    from tasks.reconcile import Reconciler

    assert settings.checkpoint_retention_hours == 168
    expired = [_ended_job_with_checkpoints(db, settings, owner, status, "169 hours")
               for status in ("completed", "failed", "cancelled")]
    recent = _ended_job_with_checkpoints(db, settings, owner, "completed", "167 hours")
    running = _ended_job_with_checkpoints(db, settings, owner, None, None)
    reconciler = Reconciler(app, settings)
    try:
        reconciler.run_once()
    finally:
        reconciler.client.close()
        reconciler.db.reset()
    for job in expired:
        assert not (settings.checkpoints_dir / job).exists()
        assert list_checkpoints(db, uuid.UUID(job)) == []
        # The published adapter is what the job delivered; retention never touches it.
        assert (settings.output_dir / job / "adapter_config.json").is_file()
        assert _job_row(db, job)["events"][-1] == ("Checkpoints removed 168 hours after the job ended; the adapter "
                                                   "is kept.")
    for job in (recent, running):
        assert len(list((settings.checkpoints_dir / job).iterdir())) == 2
        assert [c["step"] for c in list_checkpoints(db, uuid.UUID(job))] == [10, 20]


def test_retention_runs_once_per_job_and_waits_for_the_reconcilers_lock(db, settings, owner):
    from tasks.reconcile import remove_expired_checkpoints

    job = _ended_job_with_checkpoints(db, settings, owner, "completed", "200 hours")
    other = Database(settings.database_url, max_connections=1)
    try:
        with other.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            assert remove_expired_checkpoints(db, settings) == 0
            assert (settings.checkpoints_dir / job).is_dir()
    finally:
        other.reset()
    assert remove_expired_checkpoints(db, settings) == 1
    assert not (settings.checkpoints_dir / job).exists()
    # A job whose checkpoints went is not visited again, even if something reappears in its directory.
    (settings.checkpoints_dir / job).mkdir()
    assert remove_expired_checkpoints(db, settings) == 0
    assert (settings.checkpoints_dir / job).is_dir()


def test_retention_follows_no_symlink(db, settings, owner, tmp_path):
    from tasks.reconcile import remove_expired_checkpoints

    job = _job(db, owner, "completed")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep")
    (settings.checkpoints_dir / job).symlink_to(precious, target_is_directory=True)
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET finished_at = now() - interval '30 days' WHERE id = %s", (job,))
    assert remove_expired_checkpoints(db, settings) == 1
    assert not (settings.checkpoints_dir / job).exists() and (precious / "keep.txt").is_file()
