"""The connection pool reuses connections instead of opening one per transaction."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from records.db import Database


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
