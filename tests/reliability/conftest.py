"""Fault-injection fixtures: an API and any number of workers as subprocesses, and a PostgreSQL of our own.

The shared Redis and PostgreSQL serve other engineers' tests at the same time, so nothing here stops or
restarts them: a test that restarts PostgreSQL gets a private cluster, and the workers of these tests
consume a Redis database of their own, claimed like every test run's (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis
import requests

from tests.conftest import REDIS_BASE_URL, claimed_redis_db, free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "reliability-admin-password"
START_TIMEOUT = 180
PG_BIN = Path(os.environ.get("CLARA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
# Short leases so that a killed attempt's job is free again within seconds.
LEASE_SECONDS = 10
SLOW_ENV = "CLARA_TEST_SLOW"

TEXTS = [
    "Die Meldebescheinigung wird nach der Anmeldung der Wohnung im Bürgerbüro ausgestellt.",
    "A residents' parking permit is issued for one year and must be renewed online.",
    "Für den Personalausweis bringen Sie ein biometrisches Passfoto und den alten Ausweis mit.",
    "Building permit applications are checked by the planning office within three months.",
] * 4


@pytest.fixture(scope="session")
def reliability_redis_db() -> Iterator[int]:
    """A Redis database number of this suite's own: the other suites' workers also consume a queue named "gpu"."""
    with claimed_redis_db() as number:
        yield number


@pytest.fixture
def redis_url(reliability_redis_db: int) -> Iterator[str]:
    """A Redis database of this suite's own, empty before and after."""
    url = f"{REDIS_BASE_URL}/{reliability_redis_db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster that a test may stop and start at will."""

    data_dir: Path
    port: int
    run_as: list[str]

    @property
    def admin_url(self) -> str:
        """URL of the maintenance database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, name: str) -> str:
        """URL of a database in this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*self.run_as, str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-o", options,
                        "-l", str(self.data_dir / "server.log"), "-w", "-t", "60", *args],
                       check=True, capture_output=True)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._ctl("start")

    def stop(self) -> None:
        """Stop the server at once, cutting every connection (a crash as clients see it)."""
        self._ctl("stop", "-m", "fast")

    def create_database(self, name: str) -> str:
        """Create a database, apply Clara's migrations to it, and return its URL."""
        from records import migrations
        from records.db import Database

        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        db = Database(self.url(name))
        migrations.apply(db)
        db.reset()
        return self.url(name)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test's own on a free port; initdb refuses root, so it runs as postgres."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL server binaries in {PG_BIN} (set CLARA_TEST_PG_BIN)")
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="clara-pg-"))
    data_dir = base / "data"
    if run_as:
        shutil.chown(base, "postgres")
    subprocess.run([*run_as, str(PG_BIN / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust",
                    "--no-sync"], check=True, capture_output=True)
    cluster = PrivatePostgres(data_dir=data_dir, port=free_port(), run_as=run_as)
    cluster.start()
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped by the test
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Stack:
    """An API and named workers as subprocesses sharing one environment, and ways to talk to them."""

    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], log_dir: Path) -> Stack:
        """A stack whose processes get these settings as CLARA_* variables, the first admin and no hub access."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("CLARA_")}
        env.update({f"CLARA_{key.upper()}": str(value) for key, value in settings.items()})
        env.update({"CLARA_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD, "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
        stack = cls(env=env, log_dir=log_dir)
        env["CLARA_API_PORT"] = str(stack.port)
        return stack

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return f"http://127.0.0.1:{self.port}"

    def log(self, name: str) -> Path:
        """The log file of a process (all its runs, appended)."""
        return self.log_dir / f"{name}.log"

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        with self.log(name).open("a") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def start_api(self) -> None:
        """Start `python -m api` and wait until it answers."""
        self._spawn("api", [sys.executable, "-m", "api"])
        self._wait(lambda: requests.get(f"{self.url}/health", timeout=5).status_code == 200, "api")

    def start_workers(self, *names: str, queue: str = "gpu") -> None:
        """Start workers of a queue (`celery -A tasks worker -Q gpu`, one child each) and wait until they consume."""
        marks = {}
        for name in names:
            marks[name] = self.log(name).stat().st_size if self.log(name).exists() else 0
            self._spawn(name, [str(Path(sys.executable).with_name("celery")), "-A", "tasks", "worker", "-Q", queue,
                               "--concurrency", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                               "-n", f"{name}@%h"])
        for name in names:
            self._wait(lambda name=name: " ready." in self.log(name).read_text()[marks[name]:], name)

    def signal(self, name: str, signum: int) -> None:
        """Send a signal to a process's main pid."""
        self.processes[name].send_signal(signum)

    def wait_exit(self, name: str, timeout: float) -> int:
        """Wait for a process to exit and return its exit code."""
        return self.processes[name].wait(timeout=timeout)

    def stop_all(self) -> None:
        """Stop every process still running: politely, then by force."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGQUIT if process.args[0].endswith("celery") else signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _wait(self, ready: Callable[[], bool], name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.processes[name].returncode}:\n"
                                   f"{self.log(name).read_text()[-4000:]}")
            try:
                if ready():
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{name} did not start within {START_TIMEOUT} s:\n{self.log(name).read_text()[-4000:]}")

    def login(self) -> dict[str, str]:
        """Log in as the first admin and return Authorization headers."""
        response = requests.post(f"{self.url}/api/auth/login", timeout=10,
                                 json={"username": "admin", "password": ADMIN_PASSWORD})
        response.raise_for_status()
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def submit(self, headers: dict[str, str], dataset: str, **hyperparameters: Any) -> str:
        """Submit a tiny-model training job and return its id."""
        body = {"job_name": f"reliability-{uuid.uuid4().hex[:6]}", "base_model": "tiny-llama",
                "dataset_path": dataset,
                "hyperparameters": {"batch_size": 1, "max_seq_length": 64, **hyperparameters}}
        response = requests.post(f"{self.url}/api/training/jobs", headers=headers, json=body, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def job(self, headers: dict[str, str], job_id: str) -> dict[str, Any]:
        """The job as the API shows it."""
        response = requests.get(f"{self.url}/api/training/jobs/{job_id}", headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()

    def events(self, headers: dict[str, str], job_id: str) -> list[dict[str, Any]]:
        """Every event of a job, oldest first."""
        response = requests.get(f"{self.url}/api/training/jobs/{job_id}/events?limit=1000", headers=headers,
                                timeout=10)
        response.raise_for_status()
        return response.json()["data"]

    def wait_for_job(self, headers: dict[str, str], job_id: str, until: Callable[[dict[str, Any]], bool],
                     timeout: float = 300) -> dict[str, Any]:
        """Poll a job until `until(job)` holds, and return it."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(headers, job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never reached the expected state; last seen: {job}")
            time.sleep(0.2)


@pytest.fixture
def make_stack(settings_overrides: dict[str, Any], storage: dict[str, Path], tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[Callable[..., Stack]]:
    """A factory for a Stack from the test's settings plus overrides; every process stops at the end."""
    stacks: list[Stack] = []

    def make(**overrides: Any) -> Stack:
        stack = Stack.from_settings({**settings_overrides, "lease_seconds": LEASE_SECONDS, **overrides}, tmp_path)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop_all()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for stack in stacks:
            for name in stack.processes:
                print(f"----- {name} log -----\n{stack.log(name).read_text()[-6000:]}")


@pytest.fixture
def dataset(storage: dict[str, Path]) -> str:
    """A small text dataset in the data directory; returns the name a job gives as dataset_path."""
    path = storage["data"] / "reliability.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS), encoding="utf-8")
    return path.name


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker of the long fault runs."""
    config.addinivalue_line("markers", f"slow: a long fault-injection run; only with {SLOW_ENV}=1 "
                                       "(make test-reliability)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the long fault runs to `make test-reliability`, so that `make test` stays quick enough."""
    if os.environ.get(SLOW_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"a long fault-injection run; set {SLOW_ENV}=1 or use make test-reliability")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Remember each phase's outcome so that a failed test prints its processes' logs."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
