"""A worker host may start before any API: the worker brings the schema up to date itself."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from contextlib import closing

import psycopg2

from records import migrations
from tests.conftest import free_port, stop_process
from tests.e2e.conftest import ROOT, _environment


def test_worker_start_applies_migrations_to_an_empty_database(settings_overrides, empty_database_url, tmp_path):
    env = _environment({**settings_overrides, "database_url": empty_database_url}, free_port())
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "gpu",
                               "--concurrency", "1", "-n", f"migrate-{uuid.uuid4().hex[:6]}@%h"],
                              cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        expected = [version for version, _, _ in migrations.available()]
        deadline = time.monotonic() + 90
        versions: list[int] = []
        while time.monotonic() < deadline and versions != expected:
            time.sleep(0.5)
            with closing(psycopg2.connect(empty_database_url)) as conn, conn.cursor() as cur:
                cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
                if cur.fetchone()[0]:
                    cur.execute("SELECT version FROM schema_migrations ORDER BY version")
                    versions = [row[0] for row in cur.fetchall()]
        assert versions == expected, log.read_text()[-3000:]
    finally:
        stop_process(worker)
