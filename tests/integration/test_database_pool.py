"""The connection pool: reused connections, a bounded wait for a free one, and "busy" apart from "down"."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from api import create_app
from records.db import Database, DatabaseBusy, execute_prepared
from settings import SettingsError, load
from tests.conftest import free_port, stop_process
from tests.integration.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 60


def backend_pid(db: Database) -> int:
    with db.transaction() as cur:
        cur.execute("SELECT pg_backend_pid() AS pid")
        return cur.fetchone()["pid"]


def test_sequential_transactions_share_one_connection(database_url):
    db = Database(database_url, max_connections=4)
    try:
        assert len({backend_pid(db) for _ in range(5)}) == 1
    finally:
        db.reset()


def test_concurrent_transactions_reuse_at_most_the_pool_size(database_url):
    db = Database(database_url, max_connections=3)
    try:
        with ThreadPoolExecutor(3) as pool:
            pids = set(pool.map(lambda _: backend_pid(db), range(30)))
        assert 1 <= len(pids) <= 3
    finally:
        db.reset()


@contextmanager
def holding(db: Database, count: int) -> Iterator[threading.Event]:
    """Hold `count` of the pool's connections in threads until the yielded event is set."""
    release = threading.Event()
    taken = threading.Barrier(count + 1)

    def hold() -> None:
        with db.transaction() as cur:
            cur.execute("SELECT 1")
            taken.wait()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(count)]
    for thread in threads:
        thread.start()
    taken.wait(timeout=30)
    try:
        yield release
    finally:
        release.set()
        for thread in threads:
            thread.join()


def test_a_waiter_gets_a_connection_that_is_released_within_the_timeout(database_url):
    db = Database(database_url, max_connections=2, pool_timeout=30)
    answered: list[int] = []
    try:
        with holding(db, 2) as release:
            waiter = threading.Thread(target=lambda: answered.append(backend_pid(db)))
            waiter.start()
            waiter.join(timeout=0.5)
            assert waiter.is_alive() and not answered, "the waiter must wait while every connection is in use"
            release.set()
            waiter.join(timeout=30)
        assert len(answered) == 1
        assert db.stats.waits == 1 and db.stats.timeouts == 0 and db.stats.in_use == 0
    finally:
        db.reset()


def test_a_waiter_past_the_timeout_gets_the_busy_error_not_unavailable(database_url):
    db = Database(database_url, max_connections=2, pool_timeout=0.2)
    try:
        with holding(db, 2):
            with pytest.raises(DatabaseBusy) as raised:
                backend_pid(db)
            assert "PostgreSQL is unavailable" not in str(raised.value)
            assert db.stats.timeouts == 1
        # Once released the pool serves again, with its own connections.
        assert backend_pid(db)
    finally:
        db.reset()


def test_a_busy_pool_answers_503_database_busy_and_is_no_outage_in_ready_or_metrics(settings_overrides, user_headers):
    app = create_app({**settings_overrides, "database_pool_size": 1, "database_pool_timeout": 0.2})
    client = app.test_client()
    admin = user_headers("admin")
    try:
        with holding(app.extensions["clara_db"], 1):
            response = client.get("/api/training/jobs", headers=admin)
            assert response.status_code == 503
            assert response.get_json()["error"]["code"] == "database_busy"
            assert int(response.headers["Retry-After"]) > 0
            ready = client.get("/ready").get_json()
            assert ready["checks"]["database"] == "busy"
            assert "database" not in ready["error"]["details"]["down"]  # the workers are what is down here.
            assert client.get("/health").status_code == 200
            metrics = client.get("/metrics").get_data(as_text=True)
        assert 'clara_source_up{source="postgresql"} 0.0' not in metrics
        assert "clara_database_pool_timeouts_total" in metrics and "clara_database_pool_size 1.0" in metrics
        timeouts = [line for line in metrics.splitlines() if line.startswith("clara_database_pool_timeouts_total")]
        assert float(timeouts[0].split()[-1]) >= 1
    finally:
        app.extensions["clara_db"].reset()


def test_python_m_api_serves_60_concurrent_clients_without_503(settings_overrides, tmp_path):
    """`python -m api` gives every connection a thread; 60 of them share 8 connections and none is refused."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLARA_")}
    env.update({f"CLARA_{key.upper()}": str(value) for key, value in settings_overrides.items()})
    env.update({"CLARA_API_PORT": str(port), "CLARA_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
                "CLARA_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    log = tmp_path / "api.log"
    process = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        token = _login(url, process, log)
        start = threading.Barrier(CLIENTS)

        def client(_: int) -> list[int]:
            with requests.Session() as session:
                session.headers["Authorization"] = f"Bearer {token}"
                start.wait(timeout=60)
                return [session.get(f"{url}/api/training/jobs", timeout=60).status_code for _ in range(5)]

        with ThreadPoolExecutor(CLIENTS) as pool:
            statuses = Counter(status for result in pool.map(client, range(CLIENTS)) for status in result)
        assert statuses == {200: CLIENTS * 5}, (statuses, log.read_text()[-3000:])
    finally:
        stop_process(process)


def _login(url: str, process: subprocess.Popen, log: Path) -> str:
    """Wait for the API to answer, then log in as the bootstrap admin."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            response = requests.post(f"{url}/api/auth/login", json={"username": "admin", "password": PASSWORD},
                                     timeout=10)
            if response.status_code == 200:
                return response.json()["access_token"]
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"python -m api did not answer: {log.read_text()[-3000:]}")


def test_prepared_statements_are_prepared_once_per_connection_and_recover_from_deallocation(database_url):
    db = Database(database_url, max_connections=1)
    statement = "SELECT $1::int + 1 AS n"
    try:
        for value in (1, 2):
            with db.read() as cur:
                execute_prepared(cur, statement, (value,))
                assert cur.fetchone() == {"n": value + 1}
        with db.read() as cur:
            cur.execute("SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE %s",
                        ("%$1::int + 1%",))
            assert cur.fetchone()["n"] == 1
            # Gone from the server, though the connection still thinks it has it (DISCARD ALL, a pooler).
            cur.execute("DEALLOCATE ALL")
            execute_prepared(cur, statement, (5,))
            assert cur.fetchone() == {"n": 6}
        with pytest.raises(TypeError), db.transaction() as cur:
            execute_prepared(cur, statement, (1,))
    finally:
        db.reset()


@pytest.mark.parametrize("name", ["database_pool_size", "database_pool_timeout", "max_streams_per_user"])
def test_pool_and_stream_limits_must_be_positive(name):
    with pytest.raises(SettingsError, match=f"CLARA_{name.upper()} must be positive"):
        load({name: 0}, environ={})
