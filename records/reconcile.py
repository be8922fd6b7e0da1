"""The reconciler's queries: jobs PostgreSQL says are waiting or running that nothing will move on."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from records.jobs import TERMINAL_STATUSES, JobTable, add_event

# One key for every host's reconciler, so that only one pass runs at a time (pg_try_advisory_xact_lock).
LOCK_KEY = 0x436C6172615F72  # "Clara_r"


@dataclass(frozen=True)
class Stray:
    """A job that no broker message or live attempt will move on, and why it looks so."""

    job_id: uuid.UUID
    status: str
    reason: str


def try_lock(cur) -> bool:
    """Take the reconciler's lock for this transaction; False while another host's pass holds it."""
    cur.execute("SELECT pg_try_advisory_xact_lock(%s) AS locked", (LOCK_KEY,))
    return cur.fetchone()["locked"]


def lock_strays(cur, kind: JobTable, *, wait_seconds: float, pending_seconds: float, on_broker: set[str],
                waiting: set[str]) -> list[Stray]:
    """Lock and return the kind's jobs that are stuck, inside the caller's transaction.

    A pending or queued job is stuck once it is older than its grace and the broker holds no message for
    it (`on_broker`: queued or delivered but unacknowledged). A running job is stuck once its lease lapsed
    `wait_seconds` ago and no message for it waits in a queue (`waiting`): an unacknowledged one belongs to
    a dead worker, which Redis would only hand out again after the visibility timeout.
    """
    cur.execute(
        kind.query(
            "SELECT id, status FROM {table}"
            " WHERE (status = 'pending' AND created_at < now() - make_interval(secs => %(pending)s))"
            " OR (status = 'queued' AND created_at < now() - make_interval(secs => %(wait)s))"
            " OR (status = 'running' AND (lease_expires_at IS NULL"
            "     OR lease_expires_at < now() - make_interval(secs => %(wait)s)))"
            " ORDER BY created_at, id FOR UPDATE SKIP LOCKED"),
        {"pending": pending_seconds, "wait": wait_seconds},
    )
    strays = []
    for row in cur.fetchall():
        job_id, status = row["id"], row["status"]
        if status == "running":
            if str(job_id) not in waiting:
                strays.append(Stray(job_id, status, "its running attempt stopped renewing its lease"))
        elif str(job_id) not in on_broker:
            strays.append(Stray(job_id, status, f"the job was {status} but the broker had no message for it"))
    return strays


def note_requeued(cur, kind: JobTable, stray: Stray, task_id: str) -> None:
    """Record that the stray's task is on the broker again: a pending job becomes queued."""
    cur.execute(
        kind.query("UPDATE {table} SET task_id = %s,"
                   " status = CASE WHEN status = 'pending' THEN 'queued' ELSE status END WHERE id = %s"
                   " RETURNING status"),
        (task_id, stray.job_id),
    )
    status = cur.fetchone()["status"]
    add_event(cur, stray.job_id, "status", f"Re-queued by the reconciler: {stray.reason}.", level="warning",
              data={"status": status, "requeued": True}, kind=kind)


def lock_expired_checkpoints(cur, *, retention_hours: int, limit: int) -> list[dict]:
    """Lock and return up to `limit` ended jobs whose checkpoints outlived the retention, oldest end first."""
    cur.execute(
        "SELECT id, adapter_path FROM training_jobs"
        " WHERE status = ANY(%s) AND checkpoints_removed_at IS NULL"
        " AND finished_at < now() - make_interval(hours => %s)"
        " ORDER BY finished_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
        (list(TERMINAL_STATUSES), retention_hours, limit),
    )
    return [dict(row) for row in cur.fetchall()]
