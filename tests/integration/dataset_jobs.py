"""Running queued dataset jobs (builds and uploads) in the test process, as a CPU worker would."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask

from records import datasets
from tasks.datasets import run_dataset_job


def run_queued_datasets(app: Flask) -> list[dict[str, Any]]:
    """Run every dataset job not yet started, oldest first, and return the datasets as they ended."""
    db, settings = app.extensions["clara_db"], app.extensions["clara_settings"]
    with db.transaction() as cur:
        cur.execute("SELECT id FROM dataset_jobs WHERE status IN ('pending', 'queued') AND deleted_at IS NULL"
                    " ORDER BY created_at, id")
        ids = [row["id"] for row in cur.fetchall()]
    for dataset_id in ids:
        run_dataset_job(db, settings, dataset_id, worker="test-worker")
    return [datasets.get_dataset(db, dataset_id) for dataset_id in ids]


def finish_upload(app: Flask, client: Any, headers: dict[str, str], response: Any) -> dict[str, Any]:
    """Given the 202 answer to an upload, run its job and return the dataset as the API shows it then."""
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "queued"
    run_queued_datasets(app)
    return client.get(f"/api/datasets/{response.get_json()['id']}", headers=headers).get_json()


@contextmanager
def dataset_worker(app: Flask, interval: float = 0.1) -> Iterator[None]:
    """Run queued dataset jobs in a background thread while the block runs, as a CPU worker would."""
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            if not run_queued_datasets(app):
                stop.wait(interval)

    thread = threading.Thread(target=work, name="dataset-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
