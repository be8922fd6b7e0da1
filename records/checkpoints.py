"""The index of a training job's complete checkpoints, for the API and for every host to see."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from psycopg2.extras import Json

from records.db import Database
from records.jobs import add_event

logger = logging.getLogger(__name__)


def record(db: Database, job_id: uuid.UUID, attempt_id: str, *, step: int, name: str, path: str,
           created_at: str, metrics: dict[str, Any], pruned_steps: Sequence[int] = ()) -> bool:
    """Add a complete checkpoint and drop the pruned ones; False when the attempt no longer owns the job."""
    with db.transaction() as cur:
        cur.execute("SELECT 1 FROM training_jobs WHERE id = %s AND lease_owner = %s AND status = 'running'",
                    (job_id, attempt_id))
        if cur.fetchone() is None:
            return False
        cur.execute(
            "INSERT INTO training_checkpoints (job_id, step, name, path, created_at, metrics)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (job_id, step) DO UPDATE"
            " SET name = excluded.name, path = excluded.path, created_at = excluded.created_at,"
            " metrics = excluded.metrics",
            (job_id, step, name, path, created_at, Json(metrics)),
        )
        if pruned_steps:
            cur.execute("DELETE FROM training_checkpoints WHERE job_id = %s AND step = ANY(%s)",
                        (job_id, list(pruned_steps)))
    return True


def sync(db: Database, job_id: uuid.UUID, steps_on_disk: Sequence[int]) -> None:
    """Forget checkpoints a dead attempt listed but which are not on disk (pruned or never finished)."""
    with db.transaction() as cur:
        cur.execute("DELETE FROM training_checkpoints WHERE job_id = %s AND NOT (step = ANY(%s))",
                    (job_id, list(steps_on_disk)))
        if cur.rowcount:
            logger.info("Forgot %s checkpoints of job %s that are no longer on disk.", cur.rowcount, job_id)


def list_checkpoints(db: Database, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """The job's checkpoints, oldest first."""
    with db.transaction() as cur:
        cur.execute("SELECT name AS id, step, created_at, metrics FROM training_checkpoints"
                    " WHERE job_id = %s ORDER BY step", (job_id,))
        return [dict(row) for row in cur.fetchall()]


def forget_removed(cur, job_id: uuid.UUID, retention_hours: int) -> None:
    """Record, in the caller's transaction, that retention deleted the ended job's checkpoint files."""
    cur.execute("DELETE FROM training_checkpoints WHERE job_id = %s", (job_id,))
    removed = cur.rowcount
    cur.execute("UPDATE training_jobs SET checkpoints_removed_at = now() WHERE id = %s", (job_id,))
    if removed:
        add_event(cur, job_id, "log", f"Checkpoints removed {retention_hours} hours after the job ended; "
                                      "the adapter is kept.", data={"checkpoints_removed": removed})
