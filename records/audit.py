"""The audit log: who created, cancelled or deleted what, and when."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from psycopg2.extras import Json

from records.db import Database

logger = logging.getLogger(__name__)

_COLUMNS = "id, created_at, actor, action, object_type, object_id, details"


@dataclass(frozen=True)
class Entry:
    """One thing a user did, written with the action's own transaction where the action has one."""

    actor_id: int | None
    actor: str
    action: str
    object_type: str
    object_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def write(cur, entry: Entry, object_id: Any = None) -> None:
    """Insert an entry inside the caller's transaction; object_id fills in an id the caller just created."""
    ident = object_id if object_id is not None else entry.object_id
    cur.execute(
        "INSERT INTO audit_log (actor_id, actor, action, object_type, object_id, details)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (entry.actor_id, entry.actor, entry.action, entry.object_type,
         None if ident is None else str(ident), Json(entry.details)),
    )


def record(db: Database, entry: Entry) -> None:
    """Insert an entry in a transaction of its own, for actions that have none; a failure is logged, not raised."""
    try:
        with db.transaction() as cur:
            write(cur, entry)
    except Exception as exc:  # the action already happened; the gap is logged, not hidden.
        logger.error("Could not write the audit entry %s on %s %s by %s: %s",
                     entry.action, entry.object_type, entry.object_id, entry.actor, exc)


def list_entries(db: Database, *, actor: str | None, action: str | None, object_id: str | None, limit: int,
                 after: int | None) -> tuple[list[dict[str, Any]], bool]:
    """Return a page of entries, newest first, and whether more follow; `after` is the last id seen."""
    with db.transaction() as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM audit_log"
            " WHERE (%s::text IS NULL OR actor = %s) AND (%s::text IS NULL OR action = %s)"
            " AND (%s::text IS NULL OR object_id = %s) AND (%s::bigint IS NULL OR id < %s)"
            " ORDER BY id DESC LIMIT %s",
            (actor, actor, action, action, object_id, object_id, after, after, limit + 1),
        )
        rows = [dict(row) for row in cur.fetchall()]
    return rows[:limit], len(rows) > limit
