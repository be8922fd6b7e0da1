"""Schema migrations: numbered SQL files applied once each, in order, under an advisory lock."""

from __future__ import annotations

import logging
from pathlib import Path

from records.db import Database

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant shared by every Clara process: API workers and Celery workers may start together.
ADVISORY_LOCK_KEY = 0x434C415241


def available() -> list[tuple[int, str, Path]]:
    """Every migration file as (version, name, path), ordered by version."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        found.append((int(version), name, path))
    return found


def apply(db: Database) -> list[int]:
    """Apply the migrations this database lacks and return their versions; safe to run concurrently."""
    applied_now = []
    with db.transaction() as cur:
        # Transaction-scoped, so it is released by the commit even if this process dies.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT version FROM schema_migrations")
        done = {row["version"] for row in cur.fetchall()}
        for version, name, path in available():
            if version in done:
                continue
            logger.info("Applying migration %s (%s).", version, name)
            cur.execute(path.read_text(encoding="utf-8"))
            cur.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied_now.append(version)
    return applied_now
