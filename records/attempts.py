"""The running attempt's side of a job: claim it under a lease, report progress, finish it."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from psycopg2 import sql
from psycopg2.extras import Json

from records.db import Database
from records.jobs import TERMINAL_STATUSES, TRAINING, Claim, ClaimResult, JobTable, add_event

logger = logging.getLogger(__name__)


def claim(db: Database, job_id: uuid.UUID, *, attempt_id: str, worker: str, lease_seconds: int,
          max_attempts: int, kind: JobTable = TRAINING) -> ClaimResult:
    """Take the job for this attempt unless it ended, was cancelled, or another attempt holds a live lease."""
    with db.transaction() as cur:
        cur.execute(
            kind.query("SELECT status, cancel_requested, attempts, lease_owner,"
                       " lease_expires_at > now() AS lease_live,"
                       " extract(epoch FROM lease_expires_at - now())::float AS lease_left,"
                       " (SELECT count(*) FROM {events} WHERE job_id = {table}.id AND type = 'status'"
                       "  AND data ? 'handed_back') AS handed_back"
                       " FROM {table} WHERE id = %s FOR UPDATE"),
            (job_id,),
        )
        row = cur.fetchone()
        if row is None:
            return ClaimResult(Claim.MISSING)
        if row["status"] in TERMINAL_STATUSES:
            return ClaimResult(Claim.FINISHED)
        if row["cancel_requested"]:
            _end(cur, kind, job_id, "cancelled", "Job cancelled before it started.")
            return ClaimResult(Claim.CANCELLED)
        if row["status"] == "running" and row["lease_live"]:
            return ClaimResult(Claim.LEASED, lease_seconds_left=row["lease_left"])
        # An attempt its worker handed back on shutdown did not fail, so deploys never use up a job's attempts.
        if row["attempts"] - row["handed_back"] >= max_attempts:
            _end(cur, kind, job_id, "failed", f"Job failed after {row['attempts']} attempts.",
                 error=("max_attempts", f"The job was started {row['attempts']} times without finishing."))
            return ClaimResult(Claim.EXHAUSTED)
        cur.execute(
            kind.query("UPDATE {table} SET status = 'running', attempts = attempts + 1, worker = %s,"
                       " started_at = coalesce(started_at, now()), lease_owner = %s,"
                       " lease_expires_at = now() + make_interval(secs => %s) WHERE id = %s RETURNING *"),
            (worker, attempt_id, lease_seconds, job_id),
        )
        job = dict(cur.fetchone())
        add_event(cur, job_id, "status", f"Attempt {job['attempts']} started on {worker}.",
                  data={"status": "running", "attempt": job["attempts"], "worker": worker}, kind=kind)
    return ClaimResult(Claim.CLAIMED, job)


def renew_lease(db: Database, job_id: uuid.UUID, attempt_id: str, lease_seconds: int,
                kind: JobTable = TRAINING) -> bool:
    """Extend this attempt's lease; False when the attempt no longer owns the job."""
    with db.transaction() as cur:
        cur.execute(
            kind.query("UPDATE {table} SET lease_expires_at = now() + make_interval(secs => %s)"
                       " WHERE id = %s AND lease_owner = %s AND status = 'running'"),
            (lease_seconds, job_id, attempt_id),
        )
        return cur.rowcount == 1


def record_progress(db: Database, job_id: uuid.UUID, attempt_id: str, progress: dict[str, Any] | None,
                    metrics: dict[str, Any], event: str | None = None, kind: JobTable = TRAINING) -> bool:
    """Store the attempt's latest progress (None keeps it) and metrics, optionally as an event.

    Returns False when the attempt lost the job.
    """
    with db.transaction() as cur:
        cur.execute(
            kind.query("UPDATE {table} SET progress = coalesce(%s, progress), metrics = metrics || %s"
                       " WHERE id = %s AND lease_owner = %s AND status = 'running'"),
            (Json(progress) if progress is not None else None, Json(metrics), job_id, attempt_id),
        )
        owned = cur.rowcount == 1
        if owned and event:
            add_event(cur, job_id, "progress", event, data={**(progress or {}), **metrics}, kind=kind)
    return owned


def cancel_requested(db: Database, job_id: uuid.UUID, kind: JobTable = TRAINING) -> bool:
    """Whether someone asked to cancel the job."""
    with db.transaction() as cur:
        cur.execute(kind.query("SELECT cancel_requested FROM {table} WHERE id = %s"), (job_id,))
        row = cur.fetchone()
    return row is None or row["cancel_requested"]


def finish(db: Database, job_id: uuid.UUID, attempt_id: str, status: str, message: str, *,
           metrics: dict[str, Any] | None = None, error: tuple[str, str] | None = None,
           columns: dict[str, Any] | None = None, kind: JobTable = TRAINING) -> bool:
    """End the job as this attempt saw it, setting `columns` too; False when another attempt owns it now."""
    with db.transaction() as cur:
        cur.execute(
            kind.query("SELECT 1 FROM {table} WHERE id = %s AND lease_owner = %s AND status = 'running' FOR UPDATE"),
            (job_id, attempt_id),
        )
        if cur.fetchone() is None:
            logger.warning("Attempt %s no longer owns job %s; its result is discarded.", attempt_id, job_id)
            return False
        _end(cur, kind, job_id, status, message, metrics=metrics, error=error, columns=columns)
    return True


def hand_back(db: Database, job_id: uuid.UUID, attempt_id: str, *, step: int, worker: str,
              metrics: dict[str, Any] | None = None, kind: JobTable = TRAINING) -> bool:
    """Put the job back to queued and release this attempt's lease; False when the attempt no longer owns it."""
    with db.transaction() as cur:
        cur.execute(
            kind.query("UPDATE {table} SET status = 'queued', metrics = metrics || %s, lease_owner = NULL,"
                       " lease_expires_at = NULL WHERE id = %s AND lease_owner = %s AND status = 'running'"),
            (Json(metrics or {}), job_id, attempt_id),
        )
        if cur.rowcount != 1:
            logger.warning("Attempt %s no longer owns job %s; nothing to hand back.", attempt_id, job_id)
            return False
        add_event(cur, job_id, "status", f"Handed back at step {step} by {worker} shutting down.",
                  data={"status": "queued", "handed_back": True, "step": step, "worker": worker}, kind=kind)
    return True


def _end(cur, kind: JobTable, job_id: uuid.UUID, status: str, message: str, *,
         metrics: dict[str, Any] | None = None, error: tuple[str, str] | None = None,
         columns: dict[str, Any] | None = None) -> None:
    """Move the job to a terminal status and release its lease, inside the caller's transaction."""
    code, error_message = error if error else (None, None)
    cur.execute(
        kind.query("UPDATE {table} SET status = %s, finished_at = now(), metrics = metrics || %s,"
                   " error_code = %s, error_message = %s, lease_owner = NULL, lease_expires_at = NULL"
                   " WHERE id = %s"),
        (status, Json(metrics or {}), code, error_message, job_id),
    )
    if columns:
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(name)) for name in columns)
        cur.execute(sql.SQL("UPDATE {} SET {} WHERE id = %s").format(sql.Identifier(kind.table), assignments),
                    [Json(v) if isinstance(v, dict) else v for v in columns.values()] + [job_id])
    level = "error" if status == "failed" else "info"
    add_event(cur, job_id, "status", message, level=level, kind=kind,
              data={"status": status, **({"error": {"code": code, "message": error_message}} if code else {})})
