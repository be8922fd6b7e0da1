"""Training job rows and their events: the truth about every job, whoever asks."""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql
from psycopg2.extras import Json

from records import audit
from records.db import Database, execute_prepared

logger = logging.getLogger(__name__)

ACTIVE_STATUSES = ("pending", "queued", "running")
TERMINAL_STATUSES = ("completed", "failed", "cancelled")

_JOB_COLUMNS = """
    j.id, j.job_name, j.trainer_type, j.status, j.base_model, j.dataset_path, j.hyperparameters,
    j.metadata, j.owner_id, u.username AS owner, j.created_at, j.started_at, j.finished_at,
    j.progress, j.metrics, j.adapter_path, j.error_code, j.error_message, j.attempts, j.worker,
    j.task_id, j.cancel_requested, j.dataset_id, j.validation_path, j.parent_job_id,
    coalesce((SELECT array_agg(c.id ORDER BY c.created_at, c.id) FROM training_jobs c
              WHERE c.parent_job_id = j.id), '{}') AS children
"""
_JOB_FROM = "training_jobs j JOIN users u ON u.id = j.owner_id"


@dataclass(frozen=True)
class JobTable:
    """Where one kind of job lives: its table and its events table."""

    table: str
    events: str

    def query(self, text: str) -> sql.Composed:
        """Fill {table} and {events} in a statement with the quoted table names."""
        return sql.SQL(text).format(table=sql.Identifier(self.table), events=sql.Identifier(self.events))


TRAINING = JobTable("training_jobs", "job_events")
DATASETS = JobTable("dataset_jobs", "dataset_events")


class JobNotFound(LookupError):
    """No job has this id (or the caller may not see it)."""


class JobNotCancellable(RuntimeError):
    """The job already ended."""


class UnknownCursor(LookupError):
    """A pagination cursor names no visible record."""


class QuotaExceeded(RuntimeError):
    """The user already has as many active jobs of this kind as the quota allows."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"{active} active of at most {limit}")
        self.active = active
        self.limit = limit


class Claim(enum.Enum):
    """What a delivery of a job's task found when it tried to take the job."""

    CLAIMED = "claimed"
    MISSING = "missing"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    LEASED = "leased"
    EXHAUSTED = "exhausted"


@dataclass
class ClaimResult:
    """The outcome of a claim and, when claimed, the job row."""

    outcome: Claim
    job: dict[str, Any] | None = None
    lease_seconds_left: float = 0.0
    """When LEASED: how long the other attempt's lease still runs unless renewed."""


def add_event(cur, job_id: uuid.UUID, type_: str, message: str, level: str = "info",
              data: dict[str, Any] | None = None, kind: JobTable = TRAINING) -> None:
    """Append one event to a job's history inside the caller's transaction."""
    cur.execute(
        kind.query("INSERT INTO {events} (job_id, type, level, message, data) VALUES (%s, %s, %s, %s, %s)"),
        (job_id, type_, level, message, Json(data or {})),
    )


def enforce_quota(cur, kind: JobTable, owner_id: int, limit: int | None) -> None:
    """Raise QuotaExceeded when the owner has `limit` jobs not yet ended; call in the inserting transaction."""
    if limit is None:
        return
    # Serialises count-and-insert per user and kind: two requests at once cannot both see room for one more.
    # The lock is transaction-scoped, so it is released by the insert's commit or rollback.
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s), %s)", (kind.table, owner_id))
    cur.execute(kind.query("SELECT count(*) AS n FROM {table} WHERE owner_id = %s AND status = ANY(%s)"),
                (owner_id, list(ACTIVE_STATUSES)))
    active = cur.fetchone()["n"]
    if active >= limit:
        raise QuotaExceeded(active, limit)


def create_job(db: Database, *, job_name: str, trainer_type: str, base_model: str, dataset_path: str,
               hyperparameters: dict[str, Any], metadata: dict[str, Any], owner_id: int,
               dataset_id: uuid.UUID | None = None, validation_path: str | None = None,
               parent_job_id: uuid.UUID | None = None, max_active: int | None = None,
               audit_entry: audit.Entry | None = None) -> dict[str, Any]:
    """Record a new job as pending and return it; with max_active, refuse past the owner's quota."""
    job_id = uuid.uuid4()
    with db.transaction() as cur:
        enforce_quota(cur, TRAINING, owner_id, max_active)
        cur.execute(
            "INSERT INTO training_jobs (id, job_name, trainer_type, status, base_model, dataset_path,"
            " hyperparameters, metadata, owner_id, dataset_id, validation_path, parent_job_id)"
            " VALUES (%s, %s, %s, 'pending', %s, %s, %s, %s, %s, %s, %s, %s)",
            (job_id, job_name, trainer_type, base_model, dataset_path, Json(hyperparameters),
             Json(metadata), owner_id, dataset_id, validation_path, parent_job_id),
        )
        add_event(cur, job_id, "status", "Job created.", data={"status": "pending"})
        if audit_entry is not None:
            audit.write(cur, audit_entry, object_id=job_id)
    return get_job(db, job_id)


def mark_queued(db: Database, job_id: uuid.UUID, task_id: str, kind: JobTable = TRAINING) -> None:
    """Record that the job's task is on the broker; a worker that already took it wins."""
    with db.transaction() as cur:
        cur.execute(
            kind.query("UPDATE {table} SET task_id = %s,"
                       " status = CASE WHEN status = 'pending' THEN 'queued' ELSE status END WHERE id = %s"
                       " RETURNING status"),
            (task_id, job_id),
        )
        row = cur.fetchone()
        if row and row["status"] == "queued":
            add_event(cur, job_id, "status", "Job queued.", data={"status": "queued"}, kind=kind)


def mark_enqueue_failed(db: Database, job_id: uuid.UUID, reason: str, kind: JobTable = TRAINING) -> None:
    """End a job that never reached the broker, so it does not sit pending forever."""
    with db.transaction() as cur:
        cur.execute(
            kind.query("UPDATE {table} SET status = 'failed', finished_at = now(),"
                       " error_code = 'broker_unavailable', error_message = %s WHERE id = %s AND status = 'pending'"),
            (reason, job_id),
        )
        if cur.rowcount:
            add_event(cur, job_id, "status", f"Job could not be queued: {reason}", level="error",
                      data={"status": "failed"}, kind=kind)


def get_job(db: Database, job_id: uuid.UUID, owner_id: int | None = None) -> dict[str, Any]:
    """Return one job; with owner_id, only if that user owns it. Raise JobNotFound otherwise."""
    # A status poll: one prepared statement outside a transaction, the cheapest read PostgreSQL offers.
    query = f"SELECT {_JOB_COLUMNS} FROM {_JOB_FROM} WHERE j.id = $1"
    params: list[Any] = [job_id]
    if owner_id is not None:
        query += " AND j.owner_id = $2"
        params.append(owner_id)
    with db.read() as cur:
        execute_prepared(cur, query, params)
        row = cur.fetchone()
    if row is None:
        raise JobNotFound(str(job_id))
    return dict(row)


def list_jobs(db: Database, *, owner_id: int | None, status: str | None, limit: int,
              after: uuid.UUID | None) -> tuple[list[dict[str, Any]], bool]:
    """Return a page of jobs, newest first, and whether more follow; `after` is the last id seen."""
    where: list[str] = []
    params: list[Any] = []

    def condition(text: str, *values: Any) -> None:
        """Add a condition whose {} are the next $n placeholders."""
        where.append(text.format(*(f"${len(params) + n}" for n in range(1, len(values) + 1))))
        params.extend(values)

    if owner_id is not None:
        condition("j.owner_id = {}", owner_id)
    if status is not None:
        condition("j.status = {}", status)
    # Reads outside a transaction: the cursor row and the page need no common snapshot, as a page after a
    # cursor is only ever defined by the cursor's (created_at, id).
    with db.read() as cur:
        if after is not None:
            execute_prepared(cur, "SELECT created_at, id FROM training_jobs"
                                  " WHERE id = $1 AND ($2::bigint IS NULL OR owner_id = $2)", (after, owner_id))
            cursor_row = cur.fetchone()
            if cursor_row is None:
                raise UnknownCursor(str(after))
            condition("(j.created_at, j.id) < ({}, {})", cursor_row["created_at"], cursor_row["id"])
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        execute_prepared(cur, f"SELECT {_JOB_COLUMNS} FROM {_JOB_FROM} {clause}"
                              f" ORDER BY j.created_at DESC, j.id DESC LIMIT ${len(params) + 1}", [*params, limit + 1])
        rows = [dict(row) for row in cur.fetchall()]
    return rows[:limit], len(rows) > limit


def list_events(db: Database, job_id: uuid.UUID, *, after: int | None, limit: int, kind: JobTable = TRAINING
                ) -> tuple[list[dict[str, Any]], bool]:
    """Return a job's events in the order they happened, after the given event id."""
    with db.transaction() as cur:
        cur.execute(
            kind.query("SELECT id, created_at, level, type, message, data FROM {events}"
                       " WHERE job_id = %s AND id > %s ORDER BY id LIMIT %s"),
            (job_id, after or 0, limit + 1),
        )
        rows = [dict(row) for row in cur.fetchall()]
    return rows[:limit], len(rows) > limit


def request_cancel(db: Database, job_id: uuid.UUID, owner_id: int | None = None,
                   kind: JobTable = TRAINING, audit_entry: audit.Entry | None = None) -> None:
    """Record a cancel; a job not yet running ends cancelled at once, a running one at its next step."""
    with db.transaction() as cur:
        if audit_entry is not None:
            # Written first but committed only with the cancel: a refused cancel rolls it back.
            audit.write(cur, audit_entry)
        cur.execute(
            kind.query("SELECT status, cancel_requested FROM {table}"
                       " WHERE id = %s AND (%s::bigint IS NULL OR owner_id = %s) FOR UPDATE"),
            (job_id, owner_id, owner_id),
        )
        row = cur.fetchone()
        if row is None:
            raise JobNotFound(str(job_id))
        if row["status"] in TERMINAL_STATUSES:
            raise JobNotCancellable(row["status"])
        if row["status"] == "running":
            cur.execute(kind.query("UPDATE {table} SET cancel_requested = true WHERE id = %s"), (job_id,))
            if not row["cancel_requested"]:
                add_event(cur, job_id, "status", "Cancellation requested; the job stops at its next step.",
                          kind=kind)
        else:
            cur.execute(
                kind.query("UPDATE {table} SET cancel_requested = true, status = 'cancelled', finished_at = now(),"
                           " lease_owner = NULL, lease_expires_at = NULL WHERE id = %s"),
                (job_id,),
            )
            add_event(cur, job_id, "status", "Job cancelled before it started.", data={"status": "cancelled"},
                      kind=kind)


def count_active(db: Database, wait: float | None = None) -> int:
    """Number of jobs running now; `wait` bounds the wait for a free pooled connection."""
    with db.read(wait=wait) as cur:
        cur.execute("SELECT count(*) AS n FROM training_jobs WHERE status = 'running'")
        return cur.fetchone()["n"]
