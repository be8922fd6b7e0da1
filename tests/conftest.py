"""Fixtures shared by every test: real PostgreSQL databases, real Redis databases, a tiny local model."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest
import redis
from psycopg2 import sql

# No test may reach a model hub; the tiny model is made locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Spinning OpenMP threads starve each other when the API, workers and pytest share two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ADMIN_DATABASE_URL = os.environ.get("CLARA_TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("CLARA_TEST_REDIS_URL", "redis://127.0.0.1:6379")
TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-signing"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a child process, and kill it if it has not exited within timeout seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _database_url(name: str) -> str:
    return ADMIN_DATABASE_URL.rsplit("/", 1)[0] + "/" + name


def _admin_execute(statement: sql.Composable) -> None:
    conn = psycopg2.connect(ADMIN_DATABASE_URL)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A migrated database that each test's database is copied from."""
    from records import migrations
    from records.db import Database

    name = f"clara_test_template_{uuid.uuid4().hex[:8]}"
    _admin_execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = Database(_database_url(name))
    migrations.apply(db)
    db.reset()
    yield name
    _admin_execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def fresh_database(prefix: str, template: str | None = None) -> Iterator[str]:
    """Create a database (a copy of template, or empty), yield its URL, and drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
    _admin_execute(statement)
    try:
        yield _database_url(name)
    finally:
        _admin_execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of this test's own."""
    with fresh_database("clara_test", template_database) as url:
        yield url


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """An empty PostgreSQL database of this test's own, with no Clara schema."""
    with fresh_database("clara_test_empty") as url:
        yield url


REDIS_TEST_DBS = range(1, 16)
"""Redis databases a test run may claim; db 0 holds the claims."""
REDIS_CLAIM_SECONDS = 6 * 3600


@contextmanager
def claimed_redis_db() -> Iterator[int]:
    """Claim a Redis database number for this test run alone, so two runs on one machine never share one."""
    claims = redis.Redis.from_url(f"{REDIS_BASE_URL}/0")
    owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    for number in REDIS_TEST_DBS:
        # NX makes the claim atomic; the expiry frees the number if a run dies without releasing it.
        if claims.set(f"clara:test-redis-db:{number}", owner, nx=True, ex=REDIS_CLAIM_SECONDS):
            break
    else:
        pytest.exit("Every Redis test database (1-15) is claimed by other test runs; wait for one to end.", 2)
    try:
        yield number
    finally:
        if claims.get(f"clara:test-redis-db:{number}") == owner.encode():
            claims.delete(f"clara:test-redis-db:{number}")
        claims.close()


@pytest.fixture(scope="session")
def redis_db_number() -> Iterator[int]:
    """The Redis database number of this test run."""
    with claimed_redis_db() as number:
        yield number


@pytest.fixture
def redis_url(redis_db_number: int) -> Iterator[str]:
    """A Redis database of this test's own, empty before and after."""
    url = f"{REDIS_BASE_URL}/{redis_db_number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's tiny Llama with its tokenizer, made once per run from local text."""
    from trainers.tiny_model import make_tiny_model

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    make_tiny_model(out, corpus_files=[EXAMPLES / "demo-train.jsonl"])
    return out


@pytest.fixture
def storage(tmp_path: Path, tiny_model_dir: Path) -> dict[str, Path]:
    """Data, models and outputs directories with the tiny model and the example dataset in place."""
    dirs = {name: tmp_path / name for name in ("data", "models", "outputs", "datasets", "chroma", "checkpoints",
                                               "cache")}
    for path in dirs.values():
        path.mkdir()
    shutil.copytree(tiny_model_dir, dirs["models"] / "tiny-llama")
    shutil.copy(EXAMPLES / "demo-train.jsonl", dirs["data"] / "demo-train.jsonl")
    return dirs


@pytest.fixture
def settings_overrides(database_url: str, redis_url: str, storage: dict[str, Path]) -> dict[str, object]:
    """Settings for a test: its own database, Redis db and directories."""
    return {
        "env": "testing",
        "secret_key": TEST_SECRET,
        "database_url": database_url,
        "redis_url": redis_url,
        "data_dir": storage["data"],
        "models_dir": storage["models"],
        "output_dir": storage["outputs"],
        "checkpoints_dir": storage["checkpoints"],
        "cache_dir": storage["cache"],
        "datasets_dir": storage["datasets"],
        "chroma_path": storage["chroma"],
        "allow_hub_models": False,
        "ready_timeout": 0.5,
        "broker_timeout": 2.0,
    }
