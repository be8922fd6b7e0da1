"""The training task: take a job id, claim the job row, run the trainer, record the outcome."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import worker_shutting_down

import structured_logs
from records import attempts, checkpoints
from records.db import Database, DatabaseUnavailable, retry_unavailable
from records.jobs import TRAINING, Claim, JobNotFound, add_event, get_job
from records.storage import directory_bytes
from settings import Settings
from tasks import worker_metrics
from tasks.delivery import progress_publisher, worker_name
from tasks.leases import LeaseKeeper
from trainers.checkpoints import Checkpoint, CheckpointStore
from trainers.config import LoraHyperparameters, TrainingConfigError
from trainers.continuous import ParentJob
from trainers.progress import ProgressReporter, TrainingProgress
from trainers.record_format import InvalidDataset

logger = logging.getLogger(__name__)

# Progress reaches PostgreSQL at most this often; every step would flood it on fast jobs.
PROGRESS_WRITE_SECONDS = 1.0
CANCEL_CHECK_SECONDS = 1.0
PROGRESS_EVENTS_PER_JOB = 20
LEASE_GRACE_SECONDS = 2.0
# A finished job must be recorded: keep trying through a PostgreSQL restart or failover. Past this the
# delivery is retried later, and the next attempt finds the published adapter or the newest checkpoint.
FINISH_RETRY_SECONDS = 300.0
# Shutdown should not hang on a dead database: the requeued message and the lapsing lease bring the job back.
HAND_BACK_RETRY_SECONDS = 10.0
# A checkpoint's index row and event ride out a blip; no longer, since training waits meanwhile and the disk,
# not the index, is what a resume reads.
CHECKPOINT_RECORD_RETRY_SECONDS = 2.0
# A delivery that cannot reach PostgreSQL comes back after this long rather than being dropped.
DATABASE_DOWN_RETRY_SECONDS = 15.0
# SIGTERMs this close together are one shutdown told twice (a process manager signals the whole group while
# the worker forwards its own); a later one insists, and the child ends as it would without Clara.
REPEATED_SIGTERM_SECONDS = 2.0

# Set once this process's worker shuts down warm: running training checkpoints and hands its job back.
_shutting_down = threading.Event()

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
    worker = worker_name(self)
    publish = progress_publisher(self, job_id)

    try:
        with _sigterm_hands_back(), structured_logs.about_job(job_id):
            summary = run_training_job(database(settings), settings, uuid.UUID(job_id), worker=worker,
                                       publish=publish)
    except DatabaseUnavailable as exc:
        # Acknowledging now would lose the job; a later delivery claims it or finds its adapter.
        logger.warning("Job %s could not reach PostgreSQL (%s); delivering it again in %.0f seconds.",
                       job_id, exc, DATABASE_DOWN_RETRY_SECONDS)
        raise self.retry(countdown=DATABASE_DOWN_RETRY_SECONDS) from exc
    if summary["outcome"] == "handed_back":
        # Back on the queue for another worker; late acks mean the message was never acknowledged.
        raise Reject("the worker is shutting down", requeue=True)
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
    structured_logs.set_user(f"user:{job['owner_id']}")
    logger.info("Attempt %s of job %s started on %s.", job["attempts"], job_id, worker)
    reporter = JobReporter(db, job_id, attempt_id, publish, deadline=time.monotonic() + settings.job_time_limit)
    lease = LeaseKeeper(db, job_id, attempt_id, settings.lease_seconds, on_lost=reporter.lose_lease)
    lease.start()
    try:
        status, message, fields = _published_earlier(job, settings) or _train(db, job, settings, reporter)
    finally:
        lease.stop()
    if status == "handed_back":
        _hand_back(db, job_id, attempt_id, worker, fields)
        return {"job_id": str(job_id), "outcome": status}
    if reporter.last_state is not None:
        # Throttled or failed progress writes must not leave the finished job showing an older step.
        fields = {**fields, "columns": {**fields.get("columns", {}), "progress": reporter.last_state}}
    # Retried until recorded: while PostgreSQL is down nobody else can claim the job either, and once it is
    # back the write succeeds unless another attempt took the lapsed lease (then finish answers False).
    retry_unavailable(lambda: attempts.finish(db, job_id, attempt_id, status, message, **fields),
                      give_up_after=FINISH_RETRY_SECONDS, what=f"record the end of job {job_id}")
    logger.info("Job %s ended %s.", job_id, status)
    return {"job_id": str(job_id), "outcome": status}


def _hand_back(db: Database, job_id: uuid.UUID, attempt_id: str, worker: str, fields: dict[str, Any]) -> None:
    """Return the job to the queue and free its lease, so the next worker need not wait for it to lapse."""
    step = fields["step"]
    try:
        retry_unavailable(lambda: attempts.hand_back(db, job_id, attempt_id, step=step, worker=worker,
                                                     metrics=fields["metrics"]),
                          give_up_after=HAND_BACK_RETRY_SECONDS, what=f"hand back job {job_id}")
    except DatabaseUnavailable:
        # The requeued message brings the job back once this attempt's lease lapses.
        logger.warning("Job %s goes back to the queue without its hand-back recorded.", job_id)
        return
    logger.info("Job %s handed back at step %s by %s.", job_id, step, worker)


@worker_shutting_down.connect
def _hand_back_on_shutdown(how: str = "", **_: Any) -> None:
    """On a warm shutdown, have every training of this worker checkpoint and hand its job back."""
    # Celery's warm shutdown waits for running tasks, which for training can be hours. This runs in the main
    # process only, and prefork children never see the worker's SIGTERM, so it is passed on to them.
    if how != "Warm":
        # A cold shutdown kills the children; their messages go back and their leases lapse.
        return
    _shutting_down.set()  # the solo pool trains in this very process
    from billiard.process import active_children

    for child in active_children():
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@contextmanager
def _sigterm_hands_back() -> Iterator[None]:
    """While a worker child trains, SIGTERM asks for a hand-back instead of ending the child."""
    from billiard.process import current_process

    if threading.current_thread() is not threading.main_thread() or current_process().name == "MainProcess":
        # Only a pool child's main thread may take SIGTERM over; the main process keeps Celery's handler.
        yield
        return
    first: list[float] = []

    def handle(signum: int, frame: Any) -> None:
        # No logging here: a signal can arrive while the logging lock is held.
        now = time.monotonic()
        if first and now - first[0] > REPEATED_SIGTERM_SECONDS:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        first[:1] = first[:1] or [now]
        _shutting_down.set()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        # The request was for this task only. Celery also sends SIGTERM to cancel a running task when the
        # broker connection drops; a child that lives on must train its next job normally. In a real
        # shutdown the main process takes no new task for it anyway.
        _shutting_down.clear()


def _published_earlier(job: dict[str, Any], settings: Settings) -> tuple[str, str, dict[str, Any]] | None:
    """A complete adapter from an attempt that died before recording it: the job is done, not retrained."""
    from trainers.lora import ADAPTER_CONFIG, METRICS_FILE

    output_dir = settings.output_dir / str(job["id"])
    try:
        metrics = json.loads((output_dir / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (output_dir / ADAPTER_CONFIG).is_file():
        return None
    logger.info("Job %s already has a published adapter in %s; recording it as completed.", job["id"], output_dir)
    return "completed", "Job completed (its adapter was published by an earlier attempt).", {
        "metrics": metrics, "columns": {"adapter_path": str(output_dir), "adapter_bytes": directory_bytes(output_dir)}}


def _request(db: Database, job: dict[str, Any], settings: Settings) -> Any:
    """The trainer's request for this job, its parent's adapter and data included."""
    from trainers.lora import TrainingRequest

    parent = None
    if job.get("parent_job_id") is not None:
        try:
            row = get_job(db, job["parent_job_id"])
        except JobNotFound:
            raise TrainingConfigError([f"parent_job_id: no job {job['parent_job_id']}"]) from None
        if row["status"] != "completed" or not row["adapter_path"]:
            raise TrainingConfigError([f"parent_job_id: job {row['id']} has no adapter (status {row['status']})"])
        bits = (row["metrics"] or {}).get("quantization_bits")
        parent = ParentJob(adapter_dir=Path(row["adapter_path"]), dataset_path=Path(row["dataset_path"]),
                           validation_path=Path(row["validation_path"]) if row["validation_path"] else None,
                           hyperparameters=LoraHyperparameters.from_dict(row["hyperparameters"]),
                           quantization_bits=bits)
    return TrainingRequest(
        base_model=job["base_model"],
        dataset_path=Path(job["dataset_path"]),
        output_dir=settings.output_dir / str(job["id"]),
        hyperparameters=LoraHyperparameters.from_dict(job["hyperparameters"]),
        trainer_type=job["trainer_type"],
        validation_path=Path(job["validation_path"]) if job.get("validation_path") else None,
        parent=parent,
        checkpoint_dir=settings.checkpoints_dir / str(job["id"]),
        cache_dir=settings.cache_dir / "tokens",
        max_evaluations=settings.max_evaluations_per_run,
        max_checkpoints=settings.max_checkpoints_per_run,
    )


def _train(db: Database, job: dict[str, Any], settings: Settings,
           reporter: JobReporter) -> tuple[str, str, dict[str, Any]]:
    """Run the trainer and translate its outcome into (status, event message, finish fields)."""
    # Imported here so the API, which enqueues by name, never loads torch.
    from trainers import token_cache
    from trainers.lora import ModelLoadError, OutOfMemory, train

    try:
        request = _request(db, job, settings)
        reporter.note_resume(CheckpointStore(request.checkpoint_dir, 1))
        try:
            result = train(request, reporter)
        finally:
            token_cache.prune(request.cache_dir, settings.token_cache_max_bytes)
    except InvalidDataset as exc:
        return "failed", f"Job failed: bad records: {exc}", {"error": ("invalid_dataset", f"Bad records: {exc}")}
    except TrainingConfigError as exc:
        return "failed", f"Job failed: {exc}", {"error": ("invalid_configuration", str(exc))}
    except ModelLoadError as exc:
        return "failed", f"Job failed: {exc}", {"error": ("model_load_failed", str(exc))}
    except OutOfMemory as exc:
        return "failed", f"Job failed: {exc}", {"error": ("out_of_memory", str(exc))}
    except SoftTimeLimitExceeded:
        message = f"The job ran past its time limit of {settings.job_time_limit} seconds in the middle of a step."
        return "failed", f"Job failed: {message}", {"error": ("time_limit", message)}
    except Exception as exc:
        logger.exception("Training job %s failed.", job["id"])
        message = f"{type(exc).__name__}: {exc}"
        return "failed", f"Job failed: {message}", {"error": ("training_error", message)}
    if result.status == "completed":
        return "completed", "Job completed.", {"metrics": result.metrics, "columns": {
            "adapter_path": str(result.adapter_dir), "adapter_bytes": directory_bytes(Path(result.adapter_dir))}}
    step = reporter.last_step
    if result.status == "handed_back":
        saved = reporter.last_checkpoint_step
        return "handed_back", "", {"metrics": result.metrics, "step": saved if saved is not None else step}
    if result.status == "time_limit":
        saved = reporter.last_checkpoint_step
        where = f"; a checkpoint at step {saved} was saved" if saved is not None else ""
        message = f"The job reached its time limit of {settings.job_time_limit} seconds at step {step}{where}."
        return "failed", f"Job failed: {message}", {"metrics": result.metrics, "error": ("time_limit", message)}
    return "cancelled", f"Job cancelled at step {step}.", {"metrics": result.metrics}


class JobReporter(ProgressReporter):
    """Carries the trainer's progress to the job row, its events and Celery, and the cancel flag back."""

    def __init__(self, db: Database, job_id: uuid.UUID, attempt_id: str,
                 publish: Callable[[dict[str, Any]], None] | None, deadline: float | None = None) -> None:
        self.db = db
        self.job_id = job_id
        self.attempt_id = attempt_id
        self.publish = publish
        self.deadline = deadline
        self.last_step = 0
        self.last_state: dict[str, Any] | None = None
        self.last_checkpoint_step: int | None = None
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
        worker_metrics.record_training(str(self.job_id), progress)
        state = {"step": progress.step, "total_steps": progress.total_steps, "epoch": round(progress.epoch, 4),
                 "percent": round(progress.percent, 2), "eta_seconds": progress.eta_seconds}
        self.last_state = state
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

    def out_of_time(self) -> bool:
        """True once this attempt has used up the job time limit."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def handing_back(self) -> bool:
        """True once this worker shuts down: checkpoint, stop, and let another worker go on."""
        return _shutting_down.is_set()

    def evaluated(self, step: int, metrics: dict[str, float | None]) -> None:
        """Store an evaluation's loss and perplexity with an event."""
        loss, ppl = metrics.get("eval_loss"), metrics.get("perplexity")
        text = f"Evaluation at step {step}: eval loss {loss:.4f}" + (f", perplexity {ppl:.2f}." if ppl else ".")
        self._write(lambda: attempts.record_progress(self.db, self.job_id, self.attempt_id, None,
                                                     {**metrics, "eval_step": step}, text))

    def checkpoint_saved(self, checkpoint: Checkpoint, pruned_steps: list[int]) -> None:
        """List a complete checkpoint in PostgreSQL, drop the pruned ones, and say so in an event."""
        self.last_checkpoint_step = checkpoint.step

        def write() -> bool:
            owned = checkpoints.record(self.db, self.job_id, self.attempt_id, step=checkpoint.step,
                                       name=checkpoint.path.name, path=str(checkpoint.path),
                                       created_at=checkpoint.created_at, metrics=checkpoint.metrics,
                                       pruned_steps=pruned_steps)
            if owned:
                with self.db.transaction() as cur:
                    add_event(cur, self.job_id, "log", f"Checkpoint saved at step {checkpoint.step}.",
                              data={"checkpoint": checkpoint.to_dict()}, kind=TRAINING)
            return owned

        # The index row and event are what the API lists; wait a little for a database that blipped.
        self._write(lambda: retry_unavailable(write, give_up_after=CHECKPOINT_RECORD_RETRY_SECONDS,
                                              what=f"record a checkpoint of job {self.job_id}"))

    def note_resume(self, store: CheckpointStore) -> None:
        """Reconcile the checkpoint index with the disk and record where this attempt resumes."""
        on_disk = store.list()
        if on_disk:
            worker_metrics.training_resumes(str(self.job_id), on_disk[-1].step)
        try:
            checkpoints.sync(self.db, self.job_id, [checkpoint.step for checkpoint in on_disk])
            if on_disk:
                step = on_disk[-1].step
                with self.db.transaction() as cur:
                    add_event(cur, self.job_id, "status", f"Resuming from the checkpoint at step {step}.",
                              data={"resumed_from_step": step}, kind=TRAINING)
                    # The dead attempt's last step may lie past its checkpoint; progress goes on from here.
                    cur.execute("UPDATE training_jobs SET progress = progress || jsonb_build_object('step', %s)"
                                " WHERE id = %s", (step, self.job_id))
        except DatabaseUnavailable as exc:
            logger.warning("Could not record the resume of job %s: %s", self.job_id, exc)

    def _write(self, write: Callable[[], bool]) -> None:
        """Run a write that reports whether this attempt still owns the job; a lost job stops training."""
        try:
            if not write():
                self.lose_lease()
        except DatabaseUnavailable as exc:
            logger.warning("Could not record an update of job %s: %s", self.job_id, exc)
