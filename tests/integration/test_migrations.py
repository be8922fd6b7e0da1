"""Migrations apply once, in order, even when several processes start together."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from records import migrations
from records.db import Database


def test_applying_again_changes_nothing(database_url):
    db = Database(database_url)
    try:
        assert migrations.apply(db) == []
        with db.transaction() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [row["version"] for row in cur.fetchall()] == [v for v, _, _ in migrations.available()]
    finally:
        db.reset()


def test_concurrent_starts_apply_each_migration_once(database_url):
    db = Database(database_url)
    try:
        with db.transaction() as cur:
            cur.execute("DROP TABLE audit_log, training_checkpoints, job_events, training_jobs, dataset_events,"
                        " dataset_jobs, auth_sessions, users, schema_migrations")
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: migrations.apply(Database(database_url)), range(4)))
        applied = [versions for versions in results if versions]
        assert applied == [[v for v, _, _ in migrations.available()]]
    finally:
        db.reset()
