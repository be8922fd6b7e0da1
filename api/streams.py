"""Live progress as Server-Sent Events: /api/training/jobs/<id>/events/stream and /api/datasets/<id>/events/stream.

The stream polls PostgreSQL for events after the last one sent, so any API process can serve any job and a
client that reconnects with Last-Event-ID (or ?after=) picks up exactly where it left off.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator

from flask import Blueprint, Response, current_app, request
from flask_jwt_extended import current_user, jwt_required

from api.errors import ApiError
from api.schemas import EventSchema
from records import datasets, jobs
from records.db import Database, DatabaseUnavailable
from records.jobs import DATASETS, TERMINAL_STATUSES, TRAINING, JobTable

logger = logging.getLogger(__name__)

# Not a flask-smorest blueprint on purpose: an open stream never ends for a job that is still queued, which
# generated requests against /api/openapi.json could not wait for. README.md documents both routes.
blp = Blueprint("streams", __name__)

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
RETRY_MILLISECONDS = 2000
BATCH = 200
_EVENT = EventSchema()


@blp.route("/api/training/jobs/<uuid:job_id>/events/stream", methods=["GET"])
@jwt_required()
def training_stream(job_id: uuid.UUID) -> Response:
    """A training job's events as Server-Sent Events, until the job has ended."""
    after = _cursor()
    # The same rule as GET /api/training/jobs/<id>: trainers see only their own jobs, others' answer 404.
    owner = current_user["id"] if current_user["role"] == "trainer" else None
    try:
        jobs.get_job(_db(), job_id, owner_id=owner)
    except jobs.JobNotFound:
        raise ApiError(404, f"No training job {job_id}.", "job_not_found") from None
    return _stream_response(job_id, TRAINING, after)


@blp.route("/api/datasets/<uuid:dataset_id>/events/stream", methods=["GET"])
@jwt_required()
def dataset_stream(dataset_id: uuid.UUID) -> Response:
    """A dataset job's events as Server-Sent Events, until the build or upload has ended."""
    after = _cursor()
    # As GET /api/datasets/<id>: every signed-in user reads every dataset.
    try:
        datasets.get_dataset(_db(), dataset_id)
    except jobs.JobNotFound:
        raise ApiError(404, f"No dataset {dataset_id}.", "dataset_not_found") from None
    return _stream_response(dataset_id, DATASETS, after)


def _db() -> Database:
    return current_app.extensions["clara_db"]


def _cursor() -> int:
    """The last event id the client has: the Last-Event-ID header of a reconnect, else ?after=, else 0."""
    unknown = sorted(set(request.args) - {"after"})
    if unknown:
        raise ApiError(422, f"Invalid request. {unknown[0]}: Unknown field.", "validation_error",
                       {"fields": {name: ["Unknown field."] for name in unknown}})
    for name, raw in (("Last-Event-ID", request.headers.get("Last-Event-ID")), ("after", request.args.get("after"))):
        if raw is None or raw.strip() == "":
            continue
        if not raw.strip().isdigit():
            raise ApiError(422, f"Invalid request. {name}: Not a valid event id.", "validation_error",
                           {"fields": {name: ["Not a valid event id."]}})
        return int(raw)
    return 0


def _stream_response(job_id: uuid.UUID, kind: JobTable, after: int) -> Response:
    """The streamed response; the generator gets what it needs as arguments, not from the request context."""
    max_seconds = current_app.extensions["clara_settings"].stream_max_seconds
    return Response(
        event_stream(_db(), job_id, kind, after=after, max_seconds=max_seconds),
        mimetype="text/event-stream",
        # Proxies such as nginx would otherwise hold events back until their buffer fills.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def event_stream(db: Database, job_id: uuid.UUID, kind: JobTable, *, after: int, max_seconds: float,
                 poll_seconds: float = POLL_SECONDS, keepalive_seconds: float = KEEPALIVE_SECONDS) -> Iterator[str]:
    """Yield the job's events after `after` as SSE frames; end once the job has ended and all are sent."""
    yield f"retry: {RETRY_MILLISECONDS}\n\n"
    started = last_frame = time.monotonic()
    cursor = after
    while True:
        try:
            # Read the status before the events: a job's terminal status is committed together with its
            # event, so once the status says ended, the events read next include the last one.
            status = _status(db, job_id, kind)
            rows, has_more = jobs.list_events(db, job_id, after=cursor, limit=BATCH, kind=kind)
        except DatabaseUnavailable as exc:
            # The client reconnects with Last-Event-ID after the retry delay and loses nothing.
            logger.warning("Ending the event stream of job %s: %s", job_id, exc)
            return
        for row in rows:
            cursor = row["id"]
            yield _frame(row)
        now = time.monotonic()
        if rows:
            last_frame = now
        if has_more:
            continue
        if status is None or status in TERMINAL_STATUSES:
            return
        if now - started >= max_seconds:
            logger.debug("Event stream of job %s reached its %s s limit at event %s.", job_id, max_seconds, cursor)
            return
        if now - last_frame >= keepalive_seconds:
            # A comment line: clients ignore it, and idle connections are not cut by proxies.
            yield ": keep-alive\n\n"
            last_frame = now
        time.sleep(poll_seconds)


def _frame(row: dict) -> str:
    """One event as an SSE frame: its row id, its type as the event name, the event as JSON."""
    data = json.dumps(_EVENT.dump(row), separators=(",", ":"))
    return f"id: {row['id']}\nevent: {row['type']}\ndata: {data}\n\n"


def _status(db: Database, job_id: uuid.UUID, kind: JobTable) -> str | None:
    """The job's status now; None when it no longer exists."""
    with db.transaction() as cur:
        cur.execute(kind.query("SELECT status FROM {table} WHERE id = %s"), (job_id,))
        row = cur.fetchone()
    return row["status"] if row else None
