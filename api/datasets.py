"""Datasets over HTTP: /api/datasets — builds from the document stores, uploads, previews and files."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import marshmallow as ma
from flask import current_app, send_file
from flask_jwt_extended import current_user, jwt_required
from flask_smorest import Blueprint

from api.dataset_schemas import (
    QUEUED_DATASET_EXAMPLE,
    QUEUED_UPLOAD_EXAMPLE,
    RECORD_EXAMPLE,
    DatasetCreateSchema,
    DatasetListQuerySchema,
    DatasetListSchema,
    DatasetSchema,
    FileQuerySchema,
    PreviewQuerySchema,
    PreviewSchema,
    UploadFileSchema,
    UploadFormSchema,
    download_stem,
    printable,
)
from api.enqueue import enqueue
from api.errors import ApiError, ErrorSchema
from api.openapi_examples import DATASET_ID, error_example, field_error
from api.quotas import STORAGE_QUOTA_EXAMPLE, require_storage
from api.schemas import EventListQuerySchema, EventListSchema
from api.training import quota_error
from auth.tokens import roles_required
from dataset_builder.sources.upload_spec import incoming_path
from records import audit, datasets, jobs
from records.jobs import DATASETS

logger = logging.getLogger(__name__)

blp = Blueprint("datasets", __name__, url_prefix="/api/datasets",
                description="Build datasets from the document stores or uploads; preview and download them.")

BUILD_TASK = "clara.build_dataset"
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet", "csv": "text/csv"}
OWNER_ONLY = {"schema": ErrorSchema, "description": "Only the dataset's owner or an admin may do this.",
              "example": error_example("forbidden", "Only the dataset's owner or an admin may do this.")}
NOT_READY = {"schema": ErrorSchema, "description": "The dataset has no files: it is not built (yet).",
             "example": error_example("dataset_not_ready", f"Dataset {DATASET_ID} has no files: its status is "
                                                           "running.")}
FILE_CONTENT = {
    "application/x-ndjson": {"schema": {"type": "string"},
                             "example": json.dumps(RECORD_EXAMPLE, ensure_ascii=False) + "\n"},
    "text/csv": {"schema": {"type": "string"}, "example": 'text\r\n"' + RECORD_EXAMPLE["text"] + '"\r\n'},
    "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
}


def _db():
    return current_app.extensions["clara_db"]


def _settings():
    return current_app.extensions["clara_settings"]


def _load(dataset_id: uuid.UUID) -> dict:
    """Every signed-in user reads every dataset: the team builds them for one another."""
    try:
        return datasets.get_dataset(_db(), dataset_id)
    except jobs.JobNotFound:
        raise ApiError(404, f"No dataset {dataset_id}.", "dataset_not_found") from None


def _owner_scope(dataset: dict) -> int | None:
    """Only the owner or an admin changes a dataset."""
    if current_user["role"] == "admin":
        return None
    if dataset["owner_id"] != current_user["id"]:
        raise ApiError(403, "Only the dataset's owner or an admin may do this.", "forbidden")
    return current_user["id"]


def _entry(action: str, dataset_id: uuid.UUID | None = None, **details) -> audit.Entry:
    """An audit entry for what the signed-in user does to a dataset."""
    return audit.Entry(current_user["id"], current_user["username"], action, "dataset",
                       None if dataset_id is None else str(dataset_id), details)


def spec_error(problems: list[str]) -> ApiError:
    """A 422 naming each bad field of a build request."""
    fields: dict[str, list[str]] = {}
    for problem in problems:
        name, _, message = problem.partition(": ")
        fields.setdefault(name if message else "body", []).append(message or problem)
    summary = " ".join(f"{name}: {' '.join(messages)}" for name, messages in fields.items())
    return ApiError(422, f"Invalid request. {summary}", "validation_error", {"fields": fields})


@blp.route("", methods=["POST"])
@roles_required("admin", "trainer", "analyst")
@blp.arguments(DatasetCreateSchema)
@blp.response(202, DatasetSchema, example=QUEUED_DATASET_EXAMPLE)
@blp.alt_response(409, schema=ErrorSchema, description="quota_exceeded: too many of your builds have not ended, or "
                  "your datasets and adapters fill your storage quota (quota storage_quota_bytes_per_user).",
                  example=error_example(
                      "quota_exceeded", "Quota exceeded: you already have 2 dataset builds not yet ended, and "
                                        "max_active_datasets_per_user allows 2 per user; wait for one to end or "
                                        "cancel one.", quota="max_active_datasets_per_user", limit=2, active=2))
@blp.alt_response(422, schema=ErrorSchema, description="A field is invalid; the response names it.",
                  example=field_error("sources[0].type", "must be one of postgres, chroma, neo4j, upload"))
def create(body: dict) -> dict:
    """Build a dataset; a CPU worker runs the build, and the dataset is answered at once."""
    from dataset_builder.build_spec import BuildSpecError, parse_spec
    from tasks.datasets import source_context

    require_storage(_db(), _settings(), current_user["id"])
    try:
        # The stores are asked in the worker, before it builds: their client libraries stay out of the API.
        parse_spec(body, source_context(_db(), _settings()), reach_stores=False)
    except BuildSpecError as exc:
        raise spec_error(exc.problems) from None
    try:
        dataset = datasets.create_dataset(
            _db(), name=body["name"], description=body["description"], kind="build", spec=body,
            owner_id=current_user["id"], max_active=_settings().max_active_datasets_per_user,
            audit_entry=_entry("dataset.build", name=body["name"]))
    except jobs.QuotaExceeded as exc:
        raise quota_error("dataset builds", "max_active_datasets_per_user", exc) from None
    enqueue(BUILD_TASK, dataset["id"], DATASETS, name=dataset["name"])
    logger.info("User %s started building dataset %s.", current_user["username"], dataset["id"])
    return datasets.get_dataset(_db(), dataset["id"])


@blp.route("", methods=["GET"])
@jwt_required()
@blp.arguments(DatasetListQuerySchema, location="query", unknown=ma.RAISE)
@blp.response(200, DatasetListSchema)
@blp.alt_response(422, schema=ErrorSchema, description="A query parameter is invalid, or after names no dataset.",
                  example=field_error("limit", "Must be greater than or equal to 1 and less than or equal to 100."))
def index(query: dict) -> dict:
    """List datasets, newest first; pass the last id of a page as `after` for the next."""
    try:
        rows, has_more = datasets.list_datasets(_db(), owner_id=None, status=query.get("status"),
                                                limit=query["limit"], after=query.get("after"))
    except jobs.UnknownCursor:
        raise ApiError(422, "Invalid request. after: No dataset with this id.", "validation_error",
                       {"fields": {"after": ["No dataset with this id."]}}) from None
    return {"data": rows, "has_more": has_more}


@blp.route("/<uuid:dataset_id>", methods=["GET"])
@jwt_required()
@blp.response(200, DatasetSchema)
def show(dataset_id: uuid.UUID) -> dict:
    """One dataset: status, progress and, once built, its manifest."""
    return _load(dataset_id)


@blp.route("/<uuid:dataset_id>/events", methods=["GET"])
@jwt_required()
@blp.arguments(EventListQuerySchema, location="query", unknown=ma.RAISE)
@blp.response(200, EventListSchema)
@blp.alt_response(422, schema=ErrorSchema, description="A query parameter is invalid; the response names it.",
                  example=field_error("after", "Must be greater than or equal to 0."))
def events(query: dict, dataset_id: uuid.UUID) -> dict:
    """A dataset job's events in order; pass the last event id as `after` to poll for new ones."""
    _load(dataset_id)
    rows, has_more = jobs.list_events(_db(), dataset_id, after=query.get("after"), limit=query["limit"],
                                      kind=DATASETS)
    return {"data": rows, "has_more": has_more}


def _storage(dataset: dict) -> Path:
    """The completed dataset's directory, checked to lie inside the datasets directory."""
    if dataset["status"] != "completed" or not dataset["storage_path"]:
        raise ApiError(409, f"Dataset {dataset['id']} has no files: its status is {dataset['status']}.",
                       "dataset_not_ready")
    directory = Path(dataset["storage_path"]).resolve()
    if not directory.is_relative_to(_settings().datasets_dir) or not directory.is_dir():
        raise ApiError(404, f"The files of dataset {dataset['id']} are no longer on disk.", "dataset_missing")
    return directory


@blp.route("/<uuid:dataset_id>/preview", methods=["GET"])
@jwt_required()
@blp.arguments(PreviewQuerySchema, location="query", unknown=ma.RAISE)
@blp.response(200, PreviewSchema)
@blp.alt_response(409, **NOT_READY)
@blp.alt_response(422, schema=ErrorSchema, description="A query parameter is invalid; the response names it.",
                  example=field_error("split", "Must be one of: train, validation."))
def preview(query: dict, dataset_id: uuid.UUID) -> dict:
    """The first records of a split, as the trainers will read them."""
    from dataset_builder.export import read_preview

    dataset = _load(dataset_id)
    directory = _storage(dataset)
    records = read_preview(directory, dataset["manifest"]["files"], query["split"], query["limit"])
    return {"split": query["split"], "data": records}


@blp.route("/<uuid:dataset_id>/files/<string:file_format>", methods=["GET"])
@jwt_required()
@blp.arguments(FileQuerySchema, location="query", unknown=ma.RAISE)
@blp.response(200)
@blp.doc(responses={"200": {"description": "The file, as an attachment.", "content": FILE_CONTENT}})
@blp.alt_response(404, schema=ErrorSchema, description="No such dataset, format or file.",
                  example=error_example("file_not_found", f"Dataset {DATASET_ID} has no parquet file for split "
                                                          "validation."))
@blp.alt_response(409, **NOT_READY)
@blp.alt_response(422, schema=ErrorSchema, description="A query parameter is invalid; the response names it.",
                  example=field_error("split", "Must be one of: train, validation."))
def download(query: dict, dataset_id: uuid.UUID, file_format: str):
    """Download one split in one format: jsonl, parquet or csv."""
    dataset = _load(dataset_id)
    directory = _storage(dataset)
    entry = (dataset["manifest"].get("files") or {}).get(file_format, {}).get(query["split"])
    if file_format not in MEDIA_TYPES or entry is None:
        raise ApiError(404, f"Dataset {dataset_id} has no {file_format} file for split {query['split']}.",
                       "file_not_found")
    path = (directory / entry["path"]).resolve()
    if not path.is_relative_to(directory) or not path.is_file():
        raise ApiError(404, f"The {file_format} file of dataset {dataset_id} is no longer on disk.",
                       "dataset_missing")
    # Names stored before control characters were refused must not break the Content-Disposition header.
    return send_file(path, mimetype=MEDIA_TYPES[file_format], as_attachment=True,
                     download_name=f"{download_stem(dataset['name'])}-{query['split']}.{file_format}")


@blp.route("/<uuid:dataset_id>/cancel", methods=["POST"])
@roles_required("admin", "trainer", "analyst")
@blp.response(200, DatasetSchema)
@blp.alt_response(403, **OWNER_ONLY)
@blp.alt_response(409, schema=ErrorSchema, description="The build already ended.",
                  example=error_example("job_not_cancellable", "The dataset job already ended (its status is "
                                                               "completed); there is nothing to cancel."))
def cancel(dataset_id: uuid.UUID) -> dict:
    """Cancel a build: a queued one never starts, a running one stops after its current batch."""
    owner = _owner_scope(_load(dataset_id))
    try:
        jobs.request_cancel(_db(), dataset_id, owner_id=owner, kind=DATASETS,
                            audit_entry=_entry("dataset.cancel", dataset_id))
    except jobs.JobNotCancellable as exc:
        raise ApiError(409, f"The dataset job already ended ({exc}); there is nothing to cancel.",
                       "job_not_cancellable") from None
    return _load(dataset_id)


@blp.route("/<uuid:dataset_id>", methods=["DELETE"])
@roles_required("admin", "trainer", "analyst")
@blp.response(204)
@blp.alt_response(403, **OWNER_ONLY)
@blp.alt_response(409, schema=ErrorSchema, description="A training job that is not over uses the dataset.",
                  example=error_example("dataset_in_use", f"A training job that has not ended uses dataset "
                                                          f"{DATASET_ID}; cancel it or wait."))
def delete(dataset_id: uuid.UUID) -> None:
    """Delete a dataset and its files; a build still running is cancelled."""
    owner = _owner_scope(_load(dataset_id))
    try:
        row = datasets.mark_deleted(_db(), dataset_id, owner, audit_entry=_entry("dataset.delete", dataset_id))
    except datasets.DatasetInUse:
        raise ApiError(409, f"A training job that has not ended uses dataset {dataset_id}; cancel it or wait.",
                       "dataset_in_use") from None
    if row["storage_path"]:
        directory = Path(row["storage_path"]).resolve()
        if directory.is_relative_to(_settings().datasets_dir):
            shutil.rmtree(directory, ignore_errors=True)
    # An upload deleted before a worker stored it.
    incoming_path(_settings().datasets_dir, dataset_id).unlink(missing_ok=True)
    logger.info("User %s deleted dataset %s.", current_user["username"], dataset_id)


@blp.route("/upload", methods=["POST"])
@roles_required("admin", "trainer", "analyst")
@blp.arguments(UploadFormSchema, location="form")
@blp.arguments(UploadFileSchema, location="files", example={
    "file": UploadFileSchema.Meta.example["file"], "name": "buergerservice-faq", "format": "jsonl"})
@blp.response(202, DatasetSchema, example=QUEUED_UPLOAD_EXAMPLE)
@blp.alt_response(409, schema=ErrorSchema, description="quota_exceeded: too many of your datasets have not ended, "
                  "or your datasets and adapters fill your storage quota.", example=STORAGE_QUOTA_EXAMPLE)
@blp.alt_response(413, schema=ErrorSchema, description="The file is larger than CLARA_MAX_UPLOAD_BYTES.",
                  example=error_example("payload_too_large", "The data value transmitted exceeds the capacity limit."))
@blp.alt_response(422, schema=ErrorSchema, description="The format is unknown, the file is empty, or a Parquet "
                  "file's footer is unreadable or promises more than the limits allow.",
                  example=error_example("invalid_records", "The file has bad records: file: decompresses to "
                                                           "4294967296 bytes, more than 2147483648 "
                                                           "(max_upload_decompressed_bytes)", fields={"file": [
                                                               "file: decompresses to 4294967296 bytes, more than "
                                                               "2147483648 (max_upload_decompressed_bytes)"]}))
def upload(form: dict, files: dict) -> dict:
    """Upload a JSONL, CSV or Parquet file of training records; a CPU worker checks every record and stores them.

    The answer is the queued dataset; poll GET /api/datasets/<id> as for builds. Bad records fail the
    dataset with code invalid_records, its message naming each by line or row and field.
    """
    settings = _settings()
    require_storage(_db(), settings, current_user["id"])
    storage = files["file"]
    filename = printable(Path(storage.filename or "upload").name) or "upload"
    file_format = form.get("format") or filename.rsplit(".", 1)[-1].lower()
    if file_format not in MEDIA_TYPES:
        raise ApiError(422, "Invalid request. format: give a .jsonl, .csv or .parquet file, or the format field.",
                       "validation_error", {"fields": {"format": ["Must be one of jsonl, parquet, csv."]}})
    name = form.get("name") or filename
    dataset_id = uuid.uuid4()
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    incoming = incoming_path(settings.datasets_dir, dataset_id)
    try:
        storage.save(incoming)
        problems = _cheap_problems(incoming, file_format)
        if problems:
            raise ApiError(422, f"The file has bad records: {'; '.join(problems)}", "invalid_records",
                           {"fields": {"file": problems}})
        datasets.create_dataset(
            _db(), name=name, description=form["description"], kind="upload",
            spec={"type": "upload", "filename": filename, "format": file_format}, owner_id=current_user["id"],
            dataset_id=dataset_id, max_active=settings.max_active_datasets_per_user,
            audit_entry=_entry("dataset.upload", name=name, filename=filename))
    except jobs.QuotaExceeded as exc:
        incoming.unlink(missing_ok=True)
        raise quota_error("datasets", "max_active_datasets_per_user", exc) from None
    except BaseException:
        incoming.unlink(missing_ok=True)
        raise
    try:
        enqueue(BUILD_TASK, dataset_id, DATASETS, name=name)
    except ApiError:
        incoming.unlink(missing_ok=True)
        raise
    logger.info("User %s uploaded %s as dataset %s; a worker checks it.", current_user["username"], filename,
                dataset_id)
    return datasets.get_dataset(_db(), dataset_id)


def _cheap_problems(path: Path, file_format: str) -> list[str]:
    """What the request itself checks: an empty file, and a Parquet file's footer; workers check the records."""
    from dataset_builder.sources.uploads import UploadLimits, parquet_problems

    if path.stat().st_size == 0:
        return ["the file holds no records"]
    if file_format == "parquet":
        return parquet_problems(path, UploadLimits.from_settings(_settings()))
    return []
