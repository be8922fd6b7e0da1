"""The dataset task: take a dataset id, claim its row, build it or store its upload, record the manifest.

A job past CLARA_DATASET_TIME_LIMIT stops between batches and ends failed with code time_limit; Celery's
soft limit, where configured for clara.build_dataset, is the backstop for a batch that never ends.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

import structured_logs
from dataset_builder.sources import SourceContext, context_from_settings
from dataset_builder.sources.upload_spec import UPLOAD_RECORDS_FILE, incoming_path
from records import attempts
from records.datasets import storage_of
from records.db import Database, DatabaseUnavailable
from records.jobs import DATASETS, Claim
from settings import Settings
from tasks import worker_metrics
from tasks.delivery import progress_publisher, worker_name
from tasks.leases import LeaseKeeper

# The API imports this module for source_context: it imports tasks.training (torch, through trainers)
# only inside the task, which runs in a worker.

logger = logging.getLogger(__name__)

CANCEL_CHECK_SECONDS = 1.0


@shared_task(bind=True, name="clara.build_dataset", max_retries=None)
def build_dataset_job(self, dataset_id: str) -> dict[str, Any]:
    """Build the dataset with this id; its row, not this task's result, is the record."""
    from tasks.training import database

    settings: Settings = self.app.clara_settings
    with structured_logs.about_job(dataset_id):
        summary = run_dataset_job(database(settings), settings, uuid.UUID(dataset_id), worker=worker_name(self),
                                  publish=progress_publisher(self, dataset_id))
    if summary["outcome"] == Claim.LEASED.value:
        raise self.retry(countdown=summary["retry_in"])
    return summary


def source_context(db: Database, settings: Settings) -> SourceContext:
    """The sources' view of the settings, with uploads resolved through their dataset rows."""
    def upload_path(dataset_id: str) -> Path:
        storage = storage_of(db, uuid.UUID(dataset_id))
        if storage is None:
            raise ValueError(f"no completed dataset {dataset_id}")
        return Path(storage) / UPLOAD_RECORDS_FILE

    return context_from_settings(settings, upload_path=upload_path)


def run_dataset_job(db: Database, settings: Settings, dataset_id: uuid.UUID, *, worker: str,
                    publish=None) -> dict[str, Any]:
    """Claim the dataset job, build or store it, and record how it ended."""
    from tasks.training import LEASE_GRACE_SECONDS

    attempt_id = uuid.uuid4().hex
    claim = attempts.claim(db, dataset_id, attempt_id=attempt_id, worker=worker, kind=DATASETS,
                           lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts)
    if claim.outcome is Claim.LEASED:
        return {"job_id": str(dataset_id), "outcome": claim.outcome.value,
                "retry_in": max(1.0, claim.lease_seconds_left) + LEASE_GRACE_SECONDS}
    if claim.outcome is not Claim.CLAIMED:
        logger.info("Delivery of dataset job %s not run: %s.", dataset_id, claim.outcome.value)
        if claim.outcome in (Claim.FINISHED, Claim.CANCELLED, Claim.EXHAUSTED):
            # An upload cancelled or deleted before it ran leaves its file behind.
            incoming_path(settings.datasets_dir, dataset_id).unlink(missing_ok=True)
        return {"job_id": str(dataset_id), "outcome": claim.outcome.value}
    structured_logs.set_user(f"user:{claim.job['owner_id']}")
    lost = threading.Event()
    lease = LeaseKeeper(db, dataset_id, attempt_id, settings.lease_seconds, on_lost=lost.set, kind=DATASETS)
    watcher = _Watcher(db, dataset_id, attempt_id, lost, publish,
                       deadline=time.monotonic() + settings.dataset_time_limit)
    lease.start()
    out_dir = settings.datasets_dir / str(dataset_id)
    upload = claim.job["kind"] == "upload"
    try:
        run = _store_upload if upload else _build
        status, message, fields = run(db, claim.job, settings, out_dir, watcher)
    except SoftTimeLimitExceeded:
        status, message, fields = "cancelled", "", {}
        watcher.timed_out = True
    except Exception as exc:
        logger.exception("Dataset job %s failed.", dataset_id)
        text = f"{type(exc).__name__}: {exc}"
        status, message, fields = "failed", f"Dataset build failed: {text}", {"error": ("build_error", text)}
    finally:
        lease.stop()
    if status == "cancelled" and watcher.timed_out:
        text = f"The dataset job ran past its time limit of {settings.dataset_time_limit} seconds."
        status, message, fields = "failed", f"Dataset build failed: {text}", {"error": ("time_limit", text)}
    owned = attempts.finish(db, dataset_id, attempt_id, status, message, kind=DATASETS, **fields)
    if upload and owned:
        incoming_path(settings.datasets_dir, dataset_id).unlink(missing_ok=True)
    logger.info("Dataset job %s ended %s.", dataset_id, status)
    return {"job_id": str(dataset_id), "outcome": status}


Outcome = tuple[str, str, dict[str, Any]]


def _build(db: Database, job: dict[str, Any], settings: Settings, out_dir: Path, watcher: _Watcher) -> Outcome:
    """Build a dataset from its spec."""
    from dataset_builder.build import BuildLimits, BuildSpecError, build_dataset, parse_spec

    try:
        context = source_context(db, settings)
        spec = parse_spec(job["spec"], context)
    except BuildSpecError as exc:
        return "failed", f"Dataset build failed: {exc}", {"error": ("invalid_spec", str(exc))}
    limits = BuildLimits(max_record_bytes=settings.max_record_bytes, escape_formulas=settings.csv_escape_formulas)
    result = build_dataset(spec, job["spec"], context, out_dir, on_progress=watcher.progress,
                           should_stop=watcher.should_stop, limits=limits)
    if result.status != "completed":
        return "cancelled", "Dataset build cancelled.", {}
    return "completed", "Dataset built.", _completed(result.manifest, out_dir)


def _store_upload(db: Database, job: dict[str, Any], settings: Settings, out_dir: Path,
                  watcher: _Watcher) -> Outcome:
    """Check an uploaded file record by record, store and export it."""
    from dataset_builder.sources.uploads import UploadLimits
    from dataset_builder.upload_dataset import UploadRejected, store_uploaded_dataset

    spec = job["spec"]
    incoming = incoming_path(settings.datasets_dir, job["id"])
    if not incoming.is_file():
        text = "The uploaded file is no longer on disk; upload it again."
        return "failed", f"Upload failed: {text}", {"error": ("upload_missing", text)}
    try:
        manifest = store_uploaded_dataset(
            incoming, spec["format"], out_dir, dataset_id=str(job["id"]), name=job["name"],
            filename=spec["filename"], limits=UploadLimits.from_settings(settings),
            escape_formulas=settings.csv_escape_formulas, should_stop=watcher.should_stop)
    except UploadRejected as exc:
        text = f"The file has bad records: {'; '.join(exc.problems)}"
        return "failed", f"Upload failed: {text}", {"error": ("invalid_records", text)}
    if manifest is None:
        return "cancelled", "Upload cancelled.", {}
    return "completed", "Upload stored.", _completed(manifest, out_dir)


def _completed(manifest: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """What a completed dataset's row records: its manifest, where its files are and their size."""
    from dataset_builder.upload_dataset import directory_bytes

    return {"metrics": {"records": manifest["records"], "token_estimate": manifest["token_estimate"]},
            "columns": {"manifest": manifest, "storage_path": str(out_dir), "size_bytes": directory_bytes(out_dir)}}


class _Watcher:
    """Carries build progress to the row and Celery, and the cancel flag back, at most once a second."""

    def __init__(self, db: Database, dataset_id: uuid.UUID, attempt_id: str, lost: threading.Event,
                 publish, deadline: float) -> None:
        self.db, self.dataset_id, self.attempt_id, self.lost, self.publish = db, dataset_id, attempt_id, lost, publish
        self.deadline = deadline
        self.timed_out = False
        self._last_check = 0.0
        self._last_write = 0.0
        self._stop = False

    def progress(self, progress: dict[str, Any]) -> None:
        """Store the latest counts, throttled."""
        worker_metrics.record_dataset(str(self.dataset_id), progress)
        if self.publish is not None:
            self.publish({"dataset_id": str(self.dataset_id), **progress})
        now = time.monotonic()
        if now - self._last_write < 1.0:
            return
        self._last_write = now
        try:
            if not attempts.record_progress(self.db, self.dataset_id, self.attempt_id, progress, {}, kind=DATASETS):
                self.lost.set()
        except DatabaseUnavailable as exc:
            logger.warning("Could not record progress of dataset job %s: %s", self.dataset_id, exc)

    def should_stop(self) -> bool:
        """True once the build was cancelled, ran past its time limit, or this attempt lost the job."""
        now = time.monotonic()
        if now >= self.deadline:
            self.timed_out = True
            return True
        if not self._stop and now - self._last_check >= CANCEL_CHECK_SECONDS:
            self._last_check = now
            try:
                self._stop = attempts.cancel_requested(self.db, self.dataset_id, kind=DATASETS)
            except DatabaseUnavailable as exc:
                logger.warning("Could not check dataset job %s for a cancel: %s", self.dataset_id, exc)
        return self._stop or self.lost.is_set()
