"""Bytes each user stores: dataset files (builds and uploads) and published adapters."""

from __future__ import annotations

import os
from pathlib import Path

from records.db import Database


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
