"""Dataset rows: builds and uploads, their manifests, and who may see them."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from psycopg2.extras import Json

from records import audit
from records.db import Database
from records.jobs import ACTIVE_STATUSES, DATASETS, JobNotFound, UnknownCursor, add_event, enforce_quota

logger = logging.getLogger(__name__)

_COLUMNS = """
    d.id, d.name, d.description, d.kind, d.status, d.spec, d.owner_id, u.username AS owner, d.created_at,
    d.started_at, d.finished_at, d.progress, d.metrics, d.manifest, d.storage_path, d.error_code,
    d.error_message, d.attempts, d.worker, d.task_id, d.cancel_requested, d.size_bytes
"""
_FROM = "dataset_jobs d JOIN users u ON u.id = d.owner_id"


class DatasetInUse(RuntimeError):
    """A training job that is not over yet uses the dataset."""


def create_dataset(db: Database, *, name: str, description: str, kind: str, spec: dict[str, Any],
                   owner_id: int, dataset_id: uuid.UUID | None = None, max_active: int | None = None,
                   audit_entry: audit.Entry | None = None) -> dict[str, Any]:
    """Record a new dataset job as pending and return it; with max_active, refuse past the owner's quota."""
    dataset_id = dataset_id or uuid.uuid4()
    with db.transaction() as cur:
        enforce_quota(cur, DATASETS, owner_id, max_active)
        cur.execute(
            "INSERT INTO dataset_jobs (id, name, description, kind, status, spec, owner_id)"
            " VALUES (%s, %s, %s, %s, 'pending', %s, %s)",
            (dataset_id, name, description, kind, Json(spec), owner_id),
        )
        add_event(cur, dataset_id, "status", "Dataset job created.", data={"status": "pending"}, kind=DATASETS)
        if audit_entry is not None:
            audit.write(cur, audit_entry, object_id=dataset_id)
    return get_dataset(db, dataset_id)


def complete_upload(db: Database, dataset_id: uuid.UUID, storage_path: str, manifest: dict[str, Any],
                    size_bytes: int | None = None) -> None:
    """Mark a dataset as stored and usable, with the bytes its files take (the storage quota's)."""
    with db.transaction() as cur:
        cur.execute(
            "UPDATE dataset_jobs SET status = 'completed', started_at = created_at, finished_at = now(),"
            " storage_path = %s, manifest = %s, size_bytes = %s WHERE id = %s",
            (storage_path, Json(manifest), size_bytes, dataset_id),
        )
        add_event(cur, dataset_id, "status", "Upload stored.", data={"status": "completed"}, kind=DATASETS)


def get_dataset(db: Database, dataset_id: uuid.UUID, owner_id: int | None = None) -> dict[str, Any]:
    """Return one dataset that is not deleted; with owner_id only that user's. Raise JobNotFound otherwise."""
    with db.transaction() as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM {_FROM} WHERE d.id = %s AND d.deleted_at IS NULL"
            " AND (%s::bigint IS NULL OR d.owner_id = %s)",
            (dataset_id, owner_id, owner_id),
        )
        row = cur.fetchone()
    if row is None:
        raise JobNotFound(str(dataset_id))
    return dict(row)


def list_datasets(db: Database, *, owner_id: int | None, status: str | None, limit: int,
                  after: uuid.UUID | None) -> tuple[list[dict[str, Any]], bool]:
    """Return a page of datasets, newest first, and whether more follow."""
    where = ["d.deleted_at IS NULL", "(%s::bigint IS NULL OR d.owner_id = %s)", "(%s::text IS NULL OR d.status = %s)"]
    params: list[Any] = [owner_id, owner_id, status, status]
    with db.transaction() as cur:
        if after is not None:
            cur.execute(
                "SELECT created_at, id FROM dataset_jobs d WHERE id = %s AND " + " AND ".join(where[:2]),
                [after, owner_id, owner_id],
            )
            cursor_row = cur.fetchone()
            if cursor_row is None:
                raise UnknownCursor(str(after))
            where.append("(d.created_at, d.id) < (%s, %s)")
            params += [cursor_row["created_at"], cursor_row["id"]]
        cur.execute(
            f"SELECT {_COLUMNS} FROM {_FROM} WHERE {' AND '.join(where)}"
            " ORDER BY d.created_at DESC, d.id DESC LIMIT %s",
            params + [limit + 1],
        )
        rows = [dict(row) for row in cur.fetchall()]
    return rows[:limit], len(rows) > limit


def mark_deleted(db: Database, dataset_id: uuid.UUID, owner_id: int | None,
                 audit_entry: audit.Entry | None = None) -> dict[str, Any]:
    """Delete a dataset's record (its files are the caller's); refused while a live training job uses it."""
    with db.transaction() as cur:
        cur.execute(
            "SELECT status, storage_path FROM dataset_jobs WHERE id = %s AND deleted_at IS NULL"
            " AND (%s::bigint IS NULL OR owner_id = %s) FOR UPDATE",
            (dataset_id, owner_id, owner_id),
        )
        row = cur.fetchone()
        if row is None:
            raise JobNotFound(str(dataset_id))
        cur.execute(
            "SELECT count(*) AS n FROM training_jobs WHERE dataset_id = %s AND status = ANY(%s)",
            (dataset_id, list(ACTIVE_STATUSES)),
        )
        if cur.fetchone()["n"]:
            raise DatasetInUse(str(dataset_id))
        cur.execute(
            "UPDATE dataset_jobs SET deleted_at = now(), cancel_requested = true,"
            " status = CASE WHEN status IN ('pending', 'queued', 'running') THEN 'cancelled' ELSE status END,"
            " finished_at = coalesce(finished_at, now()), lease_owner = NULL WHERE id = %s",
            (dataset_id,),
        )
        add_event(cur, dataset_id, "status", "Dataset deleted.", kind=DATASETS)
        if audit_entry is not None:
            audit.write(cur, audit_entry)
    return dict(row)


def storage_of(db: Database, dataset_id: uuid.UUID) -> str | None:
    """Where a completed dataset's files are, for a build that reads an upload or a training job."""
    with db.transaction() as cur:
        cur.execute(
            "SELECT storage_path FROM dataset_jobs WHERE id = %s AND status = 'completed' AND deleted_at IS NULL",
            (dataset_id,),
        )
        row = cur.fetchone()
    return row["storage_path"] if row else None
