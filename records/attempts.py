"""The running attempt's side of a job: claim it under a lease, report progress, finish it."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from psycopg2.extras import Json

from records.db import Database
from records.jobs import TERMINAL_STATUSES, Claim, ClaimResult, add_event, get_job

logger = logging.getLogger(__name__)


def claim(db: Database, job_id: uuid.UUID, *, attempt_id: str, worker: str, lease_seconds: int,
          max_attempts: int) -> ClaimResult:
    """Take the job for this attempt unless it ended, was cancelled, or another attempt holds a live lease."""
    with db.transaction() as cur:
        cur.execute(
            "SELECT status, cancel_requested, attempts, lease_owner,"
            " lease_expires_at > now() AS lease_live,"
            " extract(epoch FROM lease_expires_at - now())::float AS lease_left"
            " FROM training_jobs WHERE id = %s FOR UPDATE",
            (job_id,),
        )
        row = cur.fetchone()
        if row is None:
            return ClaimResult(Claim.MISSING)
        if row["status"] in TERMINAL_STATUSES:
            return ClaimResult(Claim.FINISHED)
        if row["cancel_requested"]:
            _end(cur, job_id, "cancelled", "Job cancelled before it started.")
            return ClaimResult(Claim.CANCELLED)
        if row["status"] == "running" and row["lease_live"]:
            return ClaimResult(Claim.LEASED, lease_seconds_left=row["lease_left"])
        if row["attempts"] >= max_attempts:
            _end(cur, job_id, "failed", f"Job failed after {row['attempts']} attempts.",
                 error=("max_attempts", f"The job was started {row['attempts']} times without finishing."))
            return ClaimResult(Claim.EXHAUSTED)
        cur.execute(
            "UPDATE training_jobs SET status = 'running', attempts = attempts + 1, worker = %s,"
            " started_at = coalesce(started_at, now()), lease_owner = %s,"
            " lease_expires_at = now() + make_interval(secs => %s) WHERE id = %s RETURNING attempts",
            (worker, attempt_id, lease_seconds, job_id),
        )
        attempt = cur.fetchone()["attempts"]
        add_event(cur, job_id, "status", f"Attempt {attempt} started on {worker}.",
                  data={"status": "running", "attempt": attempt, "worker": worker})
    return ClaimResult(Claim.CLAIMED, get_job(db, job_id))


def renew_lease(db: Database, job_id: uuid.UUID, attempt_id: str, lease_seconds: int) -> bool:
    """Extend this attempt's lease; False when the attempt no longer owns the job."""
    with db.transaction() as cur:
        cur.execute(
            "UPDATE training_jobs SET lease_expires_at = now() + make_interval(secs => %s)"
            " WHERE id = %s AND lease_owner = %s AND status = 'running'",
            (lease_seconds, job_id, attempt_id),
        )
        return cur.rowcount == 1


def record_progress(db: Database, job_id: uuid.UUID, attempt_id: str, progress: dict[str, Any],
                    metrics: dict[str, Any], event: str | None = None) -> bool:
    """Store the attempt's latest progress and metrics, optionally as an event; False if it lost the job."""
    with db.transaction() as cur:
        cur.execute(
            "UPDATE training_jobs SET progress = %s, metrics = metrics || %s"
            " WHERE id = %s AND lease_owner = %s AND status = 'running'",
            (Json(progress), Json(metrics), job_id, attempt_id),
        )
        owned = cur.rowcount == 1
        if owned and event:
            add_event(cur, job_id, "progress", event, data={**progress, **metrics})
    return owned


def cancel_requested(db: Database, job_id: uuid.UUID) -> bool:
    """Whether someone asked to cancel the job."""
    with db.transaction() as cur:
        cur.execute("SELECT cancel_requested FROM training_jobs WHERE id = %s", (job_id,))
        row = cur.fetchone()
    return row is None or row["cancel_requested"]


def finish(db: Database, job_id: uuid.UUID, attempt_id: str, status: str, message: str, *,
           metrics: dict[str, Any] | None = None, adapter_path: str | None = None,
           error: tuple[str, str] | None = None) -> bool:
    """End the job as this attempt saw it; False when another attempt owns it now."""
    with db.transaction() as cur:
        cur.execute(
            "SELECT 1 FROM training_jobs WHERE id = %s AND lease_owner = %s AND status = 'running' FOR UPDATE",
            (job_id, attempt_id),
        )
        if cur.fetchone() is None:
            logger.warning("Attempt %s no longer owns job %s; its result is discarded.", attempt_id, job_id)
            return False
        _end(cur, job_id, status, message, metrics=metrics, adapter_path=adapter_path, error=error)
    return True


def _end(cur, job_id: uuid.UUID, status: str, message: str, *, metrics: dict[str, Any] | None = None,
         adapter_path: str | None = None, error: tuple[str, str] | None = None) -> None:
    """Move the job to a terminal status and release its lease, inside the caller's transaction."""
    code, error_message = error if error else (None, None)
    cur.execute(
        "UPDATE training_jobs SET status = %s, finished_at = now(), metrics = metrics || %s,"
        " adapter_path = coalesce(%s, adapter_path), error_code = %s, error_message = %s,"
        " lease_owner = NULL, lease_expires_at = NULL WHERE id = %s",
        (status, Json(metrics or {}), adapter_path, code, error_message, job_id),
    )
    level = "error" if status == "failed" else "info"
    add_event(cur, job_id, "status", message, level=level,
              data={"status": status, **({"error": {"code": code, "message": error_message}} if code else {})})
