"""A worker host may start before any API: the worker brings the schema up to date itself."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from contextlib import closing

import psycopg2
from psycopg2 import sql

from records import migrations
from tests.conftest import _admin_execute, _database_url
from tests.e2e.conftest import ROOT, _environment, _free_port, _stop


def test_worker_start_applies_migrations_to_an_empty_database(settings_overrides, tmp_path):
    name = f"clara_test_empty_{uuid.uuid4().hex[:8]}"
    _admin_execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    env = _environment({**settings_overrides, "database_url": _database_url(name)}, _free_port())
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
            with closing(psycopg2.connect(_database_url(name))) as conn, conn.cursor() as cur:
                cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
                if cur.fetchone()[0]:
                    cur.execute("SELECT version FROM schema_migrations ORDER BY version")
                    versions = [row[0] for row in cur.fetchall()]
        assert versions == expected, log.read_text()[-3000:]
    finally:
        _stop(worker)
        _admin_execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
