"""Training jobs over HTTP: /api/training/jobs."""

from __future__ import annotations

import logging
import os
import tarfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import marshmallow as ma
from flask import Response, current_app, stream_with_context
from flask_jwt_extended import current_user, jwt_required
from flask_smorest import Blueprint

from api.enqueue import enqueue
from api.errors import ApiError, ErrorSchema
from api.openapi_examples import JOB_ID, error_example, field_error, forbidden
from api.paths import PathRejected, resolve_base_model, resolve_dataset
from api.quotas import STORAGE_QUOTA_EXAMPLE, TOO_MANY_DOWNLOADS_EXAMPLE, acquire_download, require_storage
from api.schemas import (
    CANCELLED_JOB_EXAMPLE,
    QUEUED_JOB_EXAMPLE,
    CheckpointListSchema,
    EventListQuerySchema,
    EventListSchema,
    JobCreateSchema,
    JobListQuerySchema,
    JobListSchema,
    JobSchema,
    dump_job_page,
)
from auth.tokens import job_access_required, page_access_required, roles_required, visible_job, visible_page
from records import audit, checkpoints, datasets, jobs, storage
from settings import Settings
from trainers.continuous import adapter_settings
from trainers.record_format import sample_problems

logger = logging.getLogger(__name__)

blp = Blueprint("training", __name__, url_prefix="/api/training/jobs",
                description="Submit, follow, cancel and download LoRA training jobs.")

TRAIN_TASK = "clara.train_job"
_JOB_SCHEMA = JobSchema()
TRAINERS_ONLY = {"schema": ErrorSchema, "description": "Analysts follow jobs but do not run them.",
                 "example": forbidden("admin", "trainer")}
ENDED = {"schema": ErrorSchema, "description": "The job already ended.",
         "example": error_example("job_not_cancellable", "The job already ended (its status is completed); there "
                                                         "is nothing to cancel.")}
QUOTA_EXAMPLE = error_example(
    "quota_exceeded", "Quota exceeded: you already have 3 training jobs not yet ended, and max_active_jobs_per_user "
                      "allows 3 per user; wait for one to end or cancel one.",
    quota="max_active_jobs_per_user", limit=3, active=3)


def _settings() -> Settings:
    return current_app.extensions["clara_settings"]


def _db():
    return current_app.extensions["clara_db"]


def _visible_owner() -> int | None:
    """Trainers see only their own jobs; analysts and admins see every job."""
    return current_user["id"] if current_user["role"] == "trainer" else None


def _load_visible(job_id: uuid.UUID) -> dict:
    """The job if the caller may see it; 404 otherwise, so others' ids reveal nothing."""
    try:
        return jobs.get_job(_db(), job_id, owner_id=_visible_owner())
    except jobs.JobNotFound:
        raise ApiError(404, f"No training job {job_id}.", "job_not_found") from None


def _entry(action: str, job_id: uuid.UUID | None = None, **details) -> audit.Entry:
    """An audit entry for what the signed-in user does to a training job."""
    return audit.Entry(current_user["id"], current_user["username"], action, "training_job",
                       None if job_id is None else str(job_id), details)


def quota_error(what: str, setting: str, exc: jobs.QuotaExceeded) -> ApiError:
    """A 409 naming the quota a user has reached."""
    return ApiError(409, f"Quota exceeded: you already have {exc.active} {what} not yet ended, and "
                         f"{setting} allows {exc.limit} per user; wait for one to end or cancel one.",
                    "quota_exceeded", {"quota": setting, "limit": exc.limit, "active": exc.active})


def _field_error(field: str, message: str) -> ApiError:
    return ApiError(422, f"Invalid request. {field}: {message}", "validation_error", {"fields": {field: [message]}})


@blp.route("", methods=["POST"])
@roles_required("admin", "trainer")
@blp.arguments(JobCreateSchema)
@blp.response(202, JobSchema, example=QUEUED_JOB_EXAMPLE)
@blp.alt_response(403, **TRAINERS_ONLY)
@blp.alt_response(409, schema=ErrorSchema, description="quota_exceeded: too many of your jobs have not ended "
                  "(max_active_jobs_per_user), or your datasets and adapters fill your storage quota "
                  "(storage_quota_bytes_per_user; details name used bytes).",
                  examples={"active_jobs": {"value": QUOTA_EXAMPLE}, "storage": {"value": STORAGE_QUOTA_EXAMPLE}})
@blp.alt_response(422, schema=ErrorSchema, description="A field is invalid; the response names it.",
                  example=field_error("hyperparameters.lora_rank",
                                      "Must be greater than or equal to 1 and less than or equal to 1024."))
@blp.alt_response(503, schema=ErrorSchema, description="The database or the queue is down; nothing was queued.",
                  example=error_example("broker_unavailable", "The job queue is unavailable; try again shortly."))
def submit(body: dict) -> dict:
    """Submit a training job; it is queued for a GPU worker and answered at once.

    A sample of the dataset's records is checked here; the worker checks every record before training and
    fails the job with invalid_dataset, naming the bad lines.
    """
    settings = _settings()
    _check_quotas(settings)
    problems: dict[str, list[str]] = {}
    base_model = body.get("base_model")
    if body.get("parent_job_id") is not None:
        try:
            parent = _parent_job(body["parent_job_id"], body.get("base_model"))
            base_model = parent["base_model"]
            problems.update(_adapter_conflicts(Path(parent["adapter_path"]), body["hyperparameters"]))
        except PathRejected as exc:
            problems["parent_job_id"] = [str(exc)]
    elif base_model is not None:
        try:
            base_model = resolve_base_model(settings, base_model)
        except PathRejected as exc:
            problems["base_model"] = [str(exc)]
    dataset_path = validation_path = None
    if body.get("dataset_id") is not None:
        try:
            dataset_path, validation_path = _dataset_files(body["dataset_id"])
        except PathRejected as exc:
            problems["dataset_id"] = [str(exc)]
    else:
        try:
            dataset_path = resolve_dataset(settings, body["dataset_path"])
        except PathRejected as exc:
            problems["dataset_path"] = [str(exc)]
    if problems:
        summary = " ".join(f"{name}: {messages[0]}." for name, messages in problems.items())
        raise ApiError(422, f"Invalid request. {summary}", "validation_error", {"fields": problems})
    try:
        job = jobs.create_job(
            _db(), job_name=body["job_name"], trainer_type=body["trainer_type"], base_model=base_model,
            dataset_path=str(dataset_path), hyperparameters=body["hyperparameters"], metadata=body["metadata"],
            owner_id=current_user["id"], dataset_id=body.get("dataset_id"),
            validation_path=str(validation_path) if validation_path else None,
            parent_job_id=body.get("parent_job_id"), max_active=settings.max_active_jobs_per_user,
            audit_entry=_entry("training_job.submit", job_name=body["job_name"], trainer_type=body["trainer_type"]),
        )
    except jobs.QuotaExceeded as exc:
        raise quota_error("training jobs", "max_active_jobs_per_user", exc) from None
    enqueue(TRAIN_TASK, job["id"], jobs.TRAINING, name=job["job_name"])
    logger.info("User %s submitted training job %s.", current_user["username"], job["id"])
    return jobs.get_job(_db(), job["id"])


def _check_quotas(settings: Settings) -> None:
    """Refuse a user at a quota before reading any file; create_job checks active jobs again as it inserts."""
    try:
        with _db().transaction() as cur:
            jobs.enforce_quota(cur, jobs.TRAINING, current_user["id"], settings.max_active_jobs_per_user)
    except jobs.QuotaExceeded as exc:
        raise quota_error("training jobs", "max_active_jobs_per_user", exc) from None
    # A job stores an adapter: a user whose files fill their quota may not add one.
    require_storage(_db(), settings, current_user["id"])


def _parent_job(parent_job_id: uuid.UUID, base_model: str | None) -> dict:
    """The job a continuous job continues: the caller's own completed job, or any for admins."""
    owner = current_user["id"] if current_user["role"] != "admin" else None
    try:
        parent = jobs.get_job(_db(), parent_job_id, owner_id=owner)
    except jobs.JobNotFound:
        raise PathRejected(f"no training job {parent_job_id} of yours") from None
    if parent["status"] != "completed" or not parent["adapter_path"]:
        raise PathRejected(f"job {parent_job_id} is {parent['status']}; only a completed job can be continued")
    if not Path(parent["adapter_path"]).is_dir():
        raise PathRejected(f"the adapter of job {parent_job_id} is no longer on disk")
    if base_model is not None and resolve_base_model(_settings(), base_model) != parent["base_model"]:
        raise PathRejected(f"job {parent_job_id} was trained on {parent['base_model']}; a continuous job keeps "
                           "its parent's base model (leave base_model out)")
    return parent


def _adapter_conflicts(adapter_dir: Path, hyperparameters: dict) -> dict[str, list[str]]:
    """Adapter shape settings of the request that differ from the parent adapter's, which training keeps."""
    try:
        parent_settings = adapter_settings(adapter_dir)
    except (OSError, ValueError) as exc:
        raise PathRejected(f"the parent's adapter config cannot be read ({exc})") from None
    conflicts = {}
    for name, parent_value in parent_settings.items():
        given = hyperparameters.get(name)
        if name == "target_modules" and not isinstance(given, list):
            continue  # A name such as "all-linear" resolves per model; only a list can be compared.
        if isinstance(given, list):
            given = sorted(given)
        if given is not None and parent_value is not None and given != parent_value:
            conflicts[f"hyperparameters.{name}"] = [
                f"The parent adapter has {name} {parent_value}, which a continuous job keeps; leave {name} out."]
    return conflicts


def _dataset_files(dataset_id: uuid.UUID) -> tuple[Path, Path | None]:
    """The train and validation JSONL files of a completed dataset, checked like any dataset file."""
    storage = datasets.storage_of(_db(), dataset_id)
    if storage is None:
        raise PathRejected(f"no completed dataset {dataset_id}")
    settings = _settings()
    directory = Path(storage).resolve()
    if not directory.is_relative_to(settings.datasets_dir):
        raise PathRejected("the dataset's files are outside the datasets directory")
    train = directory / "train.jsonl"
    if not train.is_file() or train.stat().st_size == 0:
        raise PathRejected(f"dataset {dataset_id} has no training records")
    validation = directory / "validation.jsonl"
    for path in (train, validation):
        if path.is_file() and path.stat().st_size > settings.max_dataset_bytes:
            raise PathRejected(f"its {path.name} is larger than the limit of {settings.max_dataset_bytes} bytes")
    problems = sample_problems(train, settings.submit_sample_records, settings.max_record_bytes)
    if problems:
        raise PathRejected("has bad records: " + "; ".join(problems))
    return train, validation if validation.is_file() and validation.stat().st_size else None


@blp.route("", methods=["GET"])
@page_access_required
# An instance, not the class: webargs would build a new schema (deep copies of its fields) on every request.
@blp.arguments(JobListQuerySchema(), location="query", unknown=ma.RAISE)
@blp.response(200, JobListSchema)
@blp.alt_response(422, schema=ErrorSchema, description="A query parameter is invalid, or after names no job.",
                  example=field_error("after", "No job with this id."))
def index(query: dict) -> Response:
    """List jobs, newest first; pass the last id of a page as `after` for the next."""
    # Read with the token check, in one query, as jobs.list_jobs would read it for the caller.
    try:
        rows, has_more = visible_page(status=query.get("status"), limit=query["limit"], after=query.get("after"))
    except jobs.UnknownCursor:
        raise _field_error("after", "No job with this id.") from None
    # A ready response, which @blp.response passes through (it stays for the docs): the same body as its
    # JobListSchema dump and jsonify, without marshmallow's walk of the page.
    return current_app.json.response(dump_job_page(rows, has_more))


@blp.route("/<uuid:job_id>", methods=["GET"])
@job_access_required
@blp.response(200, JobSchema)
def show(job_id: uuid.UUID) -> Response:
    """One job: status, progress, metrics, error."""
    # Read with the token check, in one query; None answers as _load_visible does.
    job = visible_job()
    if job is None:
        raise ApiError(404, f"No training job {job_id}.", "job_not_found")
    # A ready response, as index's: what @blp.response would answer for JobSchema.
    return current_app.json.response(_JOB_SCHEMA.dump(job))


@blp.route("/<uuid:job_id>/events", methods=["GET"])
@jwt_required()
@blp.arguments(EventListQuerySchema, location="query", unknown=ma.RAISE)
@blp.response(200, EventListSchema)
@blp.alt_response(422, schema=ErrorSchema, description="A query parameter is invalid; the response names it.",
                  example=field_error("after", "Must be greater than or equal to 0."))
def events(query: dict, job_id: uuid.UUID) -> dict:
    """A job's events in order; pass the last event id as `after` to poll for new ones."""
    _load_visible(job_id)
    rows, has_more = jobs.list_events(_db(), job_id, after=query.get("after"), limit=query["limit"])
    return {"data": rows, "has_more": has_more}


@blp.route("/<uuid:job_id>/checkpoints", methods=["GET"])
@jwt_required()
@blp.response(200, CheckpointListSchema)
def checkpoint_list(job_id: uuid.UUID) -> dict:
    """A job's complete checkpoints, oldest first: step, time and losses of each."""
    _load_visible(job_id)
    return {"data": checkpoints.list_checkpoints(_db(), job_id)}


def _cancel(job_id: uuid.UUID, action: str) -> dict:
    """Cancel a job the caller may cancel: trainers their own, admins any."""
    owner = current_user["id"] if current_user["role"] != "admin" else None
    try:
        jobs.request_cancel(_db(), job_id, owner_id=owner, audit_entry=_entry(action, job_id))
        job = jobs.get_job(_db(), job_id)
    except jobs.JobNotFound:
        raise ApiError(404, f"No training job {job_id}.", "job_not_found") from None
    except jobs.JobNotCancellable as exc:
        raise ApiError(409, f"The job already ended ({exc}); there is nothing to cancel.",
                       "job_not_cancellable") from None
    if job["status"] == "cancelled" and job["task_id"]:
        # The cancel in PostgreSQL is what holds; the revoke only spares a worker the delivery.
        try:
            current_app.extensions["clara_celery"].control.revoke(job["task_id"])
        except Exception as exc:
            logger.warning("Could not revoke the task of cancelled job %s: %s", job_id, exc)
    logger.info("User %s cancelled training job %s.", current_user["username"], job_id)
    return job


@blp.route("/<uuid:job_id>/cancel", methods=["POST"])
@roles_required("admin", "trainer")
@blp.response(200, JobSchema, example=CANCELLED_JOB_EXAMPLE)
@blp.alt_response(403, **TRAINERS_ONLY)
@blp.alt_response(409, **ENDED)
def cancel(job_id: uuid.UUID) -> dict:
    """Cancel a job: a queued job never starts, a running one stops at its next step."""
    return _cancel(job_id, "training_job.cancel")


@blp.route("/<uuid:job_id>", methods=["DELETE"])
@roles_required("admin", "trainer")
@blp.response(200, JobSchema, example=CANCELLED_JOB_EXAMPLE)
@blp.alt_response(403, **TRAINERS_ONLY)
@blp.alt_response(409, **ENDED)
def delete(job_id: uuid.UUID) -> dict:
    """Cancel a job (the same as POST .../cancel); its record stays."""
    return _cancel(job_id, "training_job.delete")


@blp.route("/<uuid:job_id>/adapter", methods=["GET"])
@jwt_required()
@blp.response(200, {"format": "binary", "type": "string"}, content_type="application/gzip")
@blp.alt_response(409, schema=ErrorSchema, description="The job has no adapter (yet).",
                  example=error_example("adapter_not_ready", f"Job {JOB_ID} has no adapter: its status is running."))
@blp.alt_response(429, schema=ErrorSchema, description="too_many_downloads: max_downloads_per_user of your "
                  "downloads are in progress; Retry-After says when to try again.", example=TOO_MANY_DOWNLOADS_EXAMPLE)
def adapter(job_id: uuid.UUID) -> Response:
    """Download the trained adapter directory as a .tar.gz, streamed as it is read."""
    job = _load_visible(job_id)
    if job["status"] != "completed":
        raise ApiError(409, f"Job {job_id} has no adapter: its status is {job['status']}.", "adapter_not_ready")
    if not job["adapter_path"]:
        raise ApiError(409, f"Job {job_id} has no adapter: it was deleted.", "adapter_not_ready")
    directory = Path(job["adapter_path"]).resolve()
    if not directory.is_relative_to(_settings().output_dir) or not directory.is_dir():
        raise ApiError(404, f"The adapter of job {job_id} is no longer on disk.", "adapter_missing")
    slot = acquire_download(current_app.extensions["clara_redis"], _settings(), current_user["id"])
    try:
        response = Response(
            stream_with_context(_tar_gz(directory, arcname=f"{job_id}", on_chunk=slot.refresh)),
            mimetype="application/gzip",
            headers={"Content-Disposition": f'attachment; filename="adapter-{job_id}.tar.gz"'},
        )
    except BaseException:
        slot.release()
        raise
    # The server closes the response once it is sent or the client went away; either frees the slot.
    response.call_on_close(slot.release)
    return response


@blp.route("/<uuid:job_id>/adapter", methods=["DELETE"])
@roles_required("admin", "trainer")
@blp.response(204)
@blp.alt_response(403, **TRAINERS_ONLY)
@blp.alt_response(409, schema=ErrorSchema, description="adapter_not_ready: the job has no adapter (it has not "
                  "completed, or its adapter was deleted); adapter_in_use: a continuous job that has not ended "
                  "trains on it.", example=error_example(
                      "adapter_in_use", f"A continuous job that has not ended trains on the adapter of job {JOB_ID}; "
                                        "cancel it or wait."))
def delete_adapter(job_id: uuid.UUID) -> None:
    """Delete a completed job's adapter and checkpoints to free storage; the job's record, events and metrics stay."""
    owner = current_user["id"] if current_user["role"] != "admin" else None
    try:
        path = storage.delete_adapter(_db(), job_id, owner, audit_entry=_entry("training_job.adapter_delete", job_id))
    except jobs.JobNotFound:
        raise ApiError(404, f"No training job {job_id}.", "job_not_found") from None
    except storage.AdapterNotDeletable as exc:
        raise ApiError(409, f"Job {job_id} has no adapter to delete: its status is {exc}, or its adapter was "
                            "deleted already.", "adapter_not_ready") from None
    except storage.AdapterInUse as exc:
        raise ApiError(409, f"Continuous job {exc} has not ended and trains on the adapter of job {job_id}; "
                            "cancel it or wait.", "adapter_in_use") from None
    settings = _settings()
    # The record no longer names these files; each goes only when it lies inside Clara's own directory for it.
    for directory, root in ((Path(path), settings.output_dir),
                            (settings.checkpoints_dir / str(job_id), settings.checkpoints_dir)):
        if directory.resolve().is_relative_to(root):
            storage.remove_tree(directory)
    logger.info("User %s deleted the adapter of training job %s.", current_user["username"], job_id)


# Files are read, archived and compressed this much at a time, so a download holds no whole file in memory.
CHUNK_BYTES = 256 * 1024
# Adapter weights are float tensors that hardly compress; the fastest level keeps the .tar.gz clients expect
# while costing the API little CPU.
GZIP_LEVEL = 1


def _tar_gz(directory: Path, arcname: str, on_chunk: Callable[[], None] | None = None) -> Iterator[bytes]:
    """Stream a directory as tar.gz in pieces of about CHUNK_BYTES; symlinks are never followed."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: a gzip header
    pending = bytearray()
    for block in _tar_blocks(directory, arcname):
        pending += compressor.compress(block)
        if len(pending) >= CHUNK_BYTES:
            yield bytes(pending)
            pending.clear()
            if on_chunk is not None:
                on_chunk()
    pending += compressor.flush()
    yield bytes(pending)


def _tar_blocks(directory: Path, arcname: str) -> Iterator[bytes]:
    """The tar stream of a directory's regular files and subdirectories, one header or file chunk at a time."""
    written = 0
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            continue
        stat = path.lstat()
        info = tarfile.TarInfo(f"{arcname}/{path.relative_to(directory)}")
        info.mtime = int(stat.st_mtime)
        info.mode = stat.st_mode & 0o7777
        if path.is_dir():
            info.type = tarfile.DIRTYPE
        else:
            info.size = stat.st_size
        header = info.tobuf(tarfile.PAX_FORMAT)
        written += len(header)
        yield header
        if info.isfile():
            yield from _file_chunks(path, info.size)
            padding = -info.size % tarfile.BLOCKSIZE
            written += info.size + padding
            yield bytes(padding)
    # Two zero blocks end the archive, which is padded to whole records as tarfile writes it.
    end = written + 2 * tarfile.BLOCKSIZE
    yield bytes(2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE))


def _file_chunks(path: Path, size: int) -> Iterator[bytes]:
    """Exactly size bytes of a file, CHUNK_BYTES at a time; O_NOFOLLOW refuses a file swapped for a symlink."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb", buffering=0) as handle:
        left = size
        while left > 0:
            chunk = handle.read(min(CHUNK_BYTES, left))
            if not chunk:
                raise OSError(f"{path} shrank while it was being sent")
            left -= len(chunk)
            yield chunk
