"""The training task: take a job id, claim the job row, run the trainer, record the outcome."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from records import attempts
from records.db import Database, DatabaseUnavailable
from records.jobs import Claim
from settings import Settings
from tasks.leases import LeaseKeeper
from trainers.config import LoraHyperparameters, TrainingConfigError
from trainers.progress import TrainingProgress

logger = logging.getLogger(__name__)

# Progress reaches PostgreSQL at most this often; every step would flood it on fast jobs.
PROGRESS_WRITE_SECONDS = 1.0
CANCEL_CHECK_SECONDS = 1.0
PROGRESS_EVENTS_PER_JOB = 20
LEASE_GRACE_SECONDS = 2.0

_database: Database | None = None


def database(settings: Settings) -> Database:
    """This worker process's database."""
    global _database
    if _database is None:
        _database = Database(settings.database_url, max_connections=4)
    return _database


def reset_database() -> None:
    """Drop connections inherited from the parent process."""
    if _database is not None:
        _database.reset()


@shared_task(bind=True, name="clara.train_job", max_retries=None)
def train_job(self, job_id: str) -> dict[str, Any]:
    """Train the job with this id; the job row, not this task's result, is the record."""
    settings: Settings = self.app.clara_settings
    worker = f"{self.request.hostname or socket.gethostname()}/{os.getpid()}"

    def publish(meta: dict[str, Any]) -> None:
        # Flower and AsyncResult show this; PostgreSQL remains the truth.
        self.update_state(state="PROGRESS", meta=meta)

    summary = run_training_job(database(settings), settings, uuid.UUID(job_id), worker=worker, publish=publish)
    if summary["outcome"] == Claim.LEASED.value:
        # Another attempt holds the job, or held it before its worker died. Look again once its lease
        # would have lapsed: a live attempt will have renewed it, a dead one has left the job to us.
        raise self.retry(countdown=summary["retry_in"])
    return summary


def run_training_job(db: Database, settings: Settings, job_id: uuid.UUID, *, worker: str,
                     publish: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Claim the job, train it, and record how it ended; returns a short summary."""
    attempt_id = uuid.uuid4().hex
    claim = attempts.claim(db, job_id, attempt_id=attempt_id, worker=worker,
                           lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts)
    if claim.outcome is Claim.LEASED:
        retry_in = max(1.0, claim.lease_seconds_left) + LEASE_GRACE_SECONDS
        logger.info("Job %s is held by another attempt; looking again in %.0f seconds.", job_id, retry_in)
        return {"job_id": str(job_id), "outcome": claim.outcome.value, "retry_in": retry_in}
    if claim.outcome is not Claim.CLAIMED:
        logger.info("Delivery of job %s not run: %s.", job_id, claim.outcome.value)
        return {"job_id": str(job_id), "outcome": claim.outcome.value}
    job = claim.job
    logger.info("Attempt %s of job %s started on %s.", job["attempts"], job_id, worker)
    reporter = JobReporter(db, job_id, attempt_id, publish)
    lease = LeaseKeeper(db, job_id, attempt_id, settings.lease_seconds, on_lost=reporter.lose_lease)
    lease.start()
    try:
        status, message, fields = _train(job, settings, reporter)
    finally:
        lease.stop()
    attempts.finish(db, job_id, attempt_id, status, message, **fields)
    logger.info("Job %s ended %s.", job_id, status)
    return {"job_id": str(job_id), "outcome": status}


def _train(job: dict[str, Any], settings: Settings, reporter: JobReporter) -> tuple[str, str, dict[str, Any]]:
    """Run the trainer and translate its outcome into (status, event message, finish fields)."""
    # Imported here so the API, which enqueues by name, never loads torch.
    from trainers.lora import ModelLoadError, TrainingRequest, train

    try:
        request = TrainingRequest(
            base_model=job["base_model"],
            dataset_path=Path(job["dataset_path"]),
            output_dir=settings.output_dir / str(job["id"]),
            hyperparameters=LoraHyperparameters.from_dict(job["hyperparameters"]),
        )
        result = train(request, reporter)
    except TrainingConfigError as exc:
        return "failed", f"Job failed: {exc}", {"error": ("invalid_configuration", str(exc))}
    except ModelLoadError as exc:
        return "failed", f"Job failed: {exc}", {"error": ("model_load_failed", str(exc))}
    except SoftTimeLimitExceeded:
        message = f"The job ran longer than its time limit of {settings.job_time_limit} seconds."
        return "failed", f"Job failed: {message}", {"error": ("time_limit", message)}
    except Exception as exc:
        logger.exception("Training job %s failed.", job["id"])
        message = f"{type(exc).__name__}: {exc}"
        return "failed", f"Job failed: {message}", {"error": ("training_error", message)}
    if result.status == "completed":
        return "completed", "Job completed.", {"metrics": result.metrics,
                                               "columns": {"adapter_path": str(result.adapter_dir)}}
    step = reporter.last_step
    return "cancelled", f"Job cancelled at step {step}.", {"metrics": result.metrics}


class JobReporter:
    """Carries the trainer's progress to the job row, its events and Celery, and the cancel flag back."""

    def __init__(self, db: Database, job_id: uuid.UUID, attempt_id: str,
                 publish: Callable[[dict[str, Any]], None] | None) -> None:
        self.db = db
        self.job_id = job_id
        self.attempt_id = attempt_id
        self.publish = publish
        self.last_step = 0
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._stop = False
        self._lost_lease = threading.Event()

    def lose_lease(self) -> None:
        """Another attempt owns the job now: stop training at the next step."""
        self._lost_lease.set()

    def report(self, progress: TrainingProgress) -> None:
        """Store progress, throttled, with an event every few percent and at the last step."""
        self.last_step = progress.step
        state = {"step": progress.step, "total_steps": progress.total_steps, "epoch": round(progress.epoch, 4),
                 "percent": round(progress.percent, 2), "eta_seconds": progress.eta_seconds}
        metrics = {"train_loss": progress.loss, "trained_tokens": progress.trained_tokens,
                   "tokens_per_second": progress.tokens_per_second, "learning_rate": progress.learning_rate}
        if self.publish is not None:
            self.publish({"job_id": str(self.job_id), **state, **metrics})
        every = max(1, progress.total_steps // PROGRESS_EVENTS_PER_JOB)
        final = progress.step >= progress.total_steps
        event = None
        if progress.step % every == 0 or final:
            loss = f", loss {progress.loss:.4f}" if progress.loss is not None else ""
            event = f"Step {progress.step} of {progress.total_steps}{loss}."
        now = time.monotonic()
        if event is None and now - self._last_write < PROGRESS_WRITE_SECONDS:
            return
        self._last_write = now
        try:
            if not attempts.record_progress(self.db, self.job_id, self.attempt_id, state, metrics, event):
                self.lose_lease()
        except DatabaseUnavailable as exc:
            # Training goes on; the next report writes the newer state.
            logger.warning("Could not record progress of job %s: %s", self.job_id, exc)

    def should_stop(self) -> bool:
        """True once the job was cancelled or this attempt lost it."""
        if self._stop or self._lost_lease.is_set():
            return True
        now = time.monotonic()
        if now - self._last_cancel_check >= CANCEL_CHECK_SECONDS:
            self._last_cancel_check = now
            try:
                self._stop = attempts.cancel_requested(self.db, self.job_id)
            except DatabaseUnavailable as exc:
                logger.warning("Could not check job %s for a cancel: %s", self.job_id, exc)
        return self._stop or self._lost_lease.is_set()
