"""Bytes each user stores: dataset files (builds and uploads) and published adapters."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from records import audit
from records.db import Database
from records.jobs import ACTIVE_STATUSES, JobNotFound, add_event


def usage_bytes(db: Database, owner_id: int) -> int:
    """Bytes the user's datasets not deleted and their jobs' adapters take; unrecorded sizes count as 0."""
    with db.transaction() as cur:
        cur.execute(
            "SELECT"
            " (SELECT coalesce(sum(size_bytes), 0) FROM dataset_jobs"
            "   WHERE owner_id = %s AND deleted_at IS NULL)"
            " + (SELECT coalesce(sum(adapter_bytes), 0) FROM training_jobs WHERE owner_id = %s) AS used",
            (owner_id, owner_id),
        )
        return int(cur.fetchone()["used"])


def directory_bytes(directory: Path) -> int:
    """Bytes of the regular files under a directory, symlinks not followed; 0 when it is missing."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except OSError:
                continue  # removed while we walked
            if not os.path.islink(os.path.join(root, name)):
                total += stat.st_size
    return total


def remove_tree(directory: Path) -> None:
    """Delete a directory tree; a symlink in its place is unlinked, never followed."""
    if directory.is_symlink():
        directory.unlink()
    elif directory.exists():
        shutil.rmtree(directory)


class AdapterNotDeletable(RuntimeError):
    """The job has no adapter to delete: it has not completed, or its adapter is already gone."""


class AdapterInUse(RuntimeError):
    """A continuous job that has not ended trains on top of this adapter."""


def delete_adapter(db: Database, job_id: uuid.UUID, owner_id: int | None,
                   audit_entry: audit.Entry | None = None) -> str:
    """Forget a completed job's adapter so its bytes stop counting; returns the path whose files the caller removes.

    The job's record, events and metrics stay. Raises JobNotFound for a job the owner cannot see.
    """
    with db.transaction() as cur:
        cur.execute("SELECT status, adapter_path FROM training_jobs"
                    " WHERE id = %s AND (%s::bigint IS NULL OR owner_id = %s) FOR UPDATE",
                    (job_id, owner_id, owner_id))
        row = cur.fetchone()
        if row is None:
            raise JobNotFound(str(job_id))
        if row["status"] != "completed" or not row["adapter_path"]:
            raise AdapterNotDeletable(row["status"])
        cur.execute("SELECT id FROM training_jobs WHERE parent_job_id = %s AND status = ANY(%s) LIMIT 1",
                    (job_id, list(ACTIVE_STATUSES)))
        child = cur.fetchone()
        if child is not None:
            raise AdapterInUse(str(child["id"]))
        cur.execute("UPDATE training_jobs SET adapter_path = NULL, adapter_bytes = NULL WHERE id = %s", (job_id,))
        add_event(cur, job_id, "log", "Adapter deleted; the job's record, events and metrics stay.",
                  data={"adapter_deleted": True})
        if audit_entry is not None:
            audit.write(cur, audit_entry, object_id=job_id)
    return row["adapter_path"]
