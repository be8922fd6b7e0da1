"""Live progress as Server-Sent Events: /api/training/jobs/<id>/events/stream and /api/datasets/<id>/events/stream.

The stream polls PostgreSQL for events after the last one sent, so any API process can serve any job and a
client that reconnects with Last-Event-ID (or ?after=) picks up exactly where it left off.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import redis
from flask import Flask, Response, current_app, request
from flask_jwt_extended import current_user, jwt_required
from flask_smorest import Blueprint

from api.errors import ApiError, ErrorSchema
from api.openapi_examples import error_example, field_error
from api.schemas import BIGINT_MAX, EVENT_EXAMPLE, EventSchema
from records import datasets, jobs
from records.db import Database, DatabaseUnavailable
from records.jobs import DATASETS, TERMINAL_STATUSES, TRAINING, JobTable

logger = logging.getLogger(__name__)

# An open stream of a job that has not ended lasts up to CLARA_STREAM_MAX_SECONDS; the fuzzing test sets it short.
blp = Blueprint("streams", __name__, description="Follow a training or dataset job's events as Server-Sent Events.")

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
RETRY_MILLISECONDS = 2000
BATCH = 200
BUSY_RETRY_SECONDS = 5
# Event ids are PostgreSQL bigints: at most 19 digits.
MAX_CURSOR_DIGITS = 19
_SLOTS_LOCK = threading.Lock()
USER_STREAMS_KEY = "clara:streams:user:"
# A user's place lapses this long after the stream's own time limit, should its process die holding it.
USER_SLOT_GRACE_SECONDS = 30
# Drop the user's lapsed places, then add one unless they hold `limit` already; atomic, so two processes
# cannot both see room for the last place.
_TAKE_USER_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
_EVENT = EventSchema()

_EXAMPLE_DATA = json.dumps(EVENT_EXAMPLE, separators=(",", ":"))
_FINAL = {**EVENT_EXAMPLE, "id": 43, "type": "status", "message": "Job completed.", "data": {"status": "completed"}}
STREAM_DESCRIPTION = f"""Server-Sent Events, one per event of the job, oldest first; the schema and example show one.

The stream opens with `retry: {RETRY_MILLISECONDS}`, the reconnection delay in milliseconds. Each event is a
block of three lines and a blank line: `id:` the event's id, `event:` its type (status, progress, log, ...) and
`data:` the event as JSON, an Event as in GET .../events. A `: keep-alive` comment comes after
{KEEPALIVE_SECONDS:.0f} s without events. The stream closes once the job has ended and its last event is sent,
or after CLARA_STREAM_MAX_SECONDS; reconnect with the last id received as the Last-Event-ID header (an
EventSource does so itself) or as `after`, and no event is lost or repeated. A job's last two events:

```
id: 42
event: progress
data: {_EXAMPLE_DATA}

id: 43
event: status
data: {json.dumps(_FINAL, separators=(",", ":"))}
```"""
# As OpenAPI 3.2's itemSchema (and schemathesis for earlier versions) reads it: the schema of one event.
EVENT_FRAME = {
    "type": "object", "required": ["id", "event", "data"], "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The event's id, for Last-Event-ID."},
        "event": {"type": "string", "description": "The event's type: status, progress, log, ..."},
        "data": {"type": "string", "description": "The event as JSON (an Event)."},
        "retry": {"type": "integer", "description": "The reconnection delay in milliseconds."},
    },
}
_CURSOR = {"type": "integer", "minimum": 0}
CURSOR_PARAMETERS = [
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": _CURSOR, "example": 42,
     "description": "The id of the last event received; sent by an EventSource when it reconnects. Wins over "
                    "`after`."},
    {"name": "after", "in": "query", "required": False, "schema": _CURSOR, "example": 42,
     "description": "Send only the events after this id; by default every event of the job."},
]
BUSY = {"description": "streams_busy: this API process serves CLARA_MAX_STREAMS_PER_PROCESS streams already "
                       "(Retry-After says when to try again; GET .../events polls instead), or the database is down.",
        "example": error_example("streams_busy", "This API process already serves 2 event streams; poll GET "
                                                 ".../events instead, or retry in 5 seconds."),
        "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}}
TOO_MANY = {"description": "too_many_streams: you already hold CLARA_MAX_STREAMS_PER_USER streams, across every API "
                           "process; close one, or poll GET .../events instead (Retry-After says when to try again).",
            "example": error_example("too_many_streams", "You already have 2 event streams open, and "
                                                         "max_streams_per_user allows 2; close one, or poll GET "
                                                         ".../events instead."),
            "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}}
BAD_CURSOR = {"description": "Last-Event-ID or `after` is not an event id, or the query has an unknown field.",
              "example": field_error("after", "Not a valid event id.")}


def _documented(view: Callable) -> Callable:
    """Document a stream route: cursor, event stream, 422 and 429; 401, 404 and 503 come with every path."""
    view = blp.alt_response(422, schema=ErrorSchema, **BAD_CURSOR)(view)
    view = blp.alt_response(503, schema=ErrorSchema, **BUSY)(view)
    view = blp.alt_response(429, schema=ErrorSchema, **TOO_MANY)(view)
    view = blp.response(200, EVENT_FRAME, content_type="text/event-stream", description=STREAM_DESCRIPTION,
                        example={"id": "42", "event": "progress", "data": _EXAMPLE_DATA})(view)
    return blp.doc(parameters=CURSOR_PARAMETERS)(view)


@blp.route("/api/training/jobs/<uuid:job_id>/events/stream", methods=["GET"])
@jwt_required()
@_documented
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
@_documented
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
        # isdecimal, not isdigit: int() refuses digits such as "²", which isdigit takes. The length check
        # comes first: int() refuses more than 4,300 digits with a ValueError, and ids are bigints anyway.
        value = raw.strip()
        if len(value) > MAX_CURSOR_DIGITS or not value.isdecimal() or int(value) > BIGINT_MAX:
            raise ApiError(422, f"Invalid request. {name}: Not a valid event id.", "validation_error",
                           {"fields": {name: ["Not a valid event id."]}})
        return int(value)
    return 0


def _stream_response(job_id: uuid.UUID, kind: JobTable, after: int) -> Response:
    """The streamed response; the generator gets what it needs as arguments, not from the request context."""
    settings = current_app.extensions["clara_settings"]
    slot = _StreamSlot(_stream_slots(current_app, settings.max_streams_per_process),
                       current_app.extensions["clara_redis"], current_user["id"])
    # Each open stream holds a server thread for minutes: one user may hold only a few, across every process.
    if not slot.take_user(settings.max_streams_per_user, settings.stream_max_seconds + USER_SLOT_GRACE_SECONDS):
        limit = settings.max_streams_per_user
        raise ApiError(429, f"You already have {limit} event stream{'s' if limit != 1 else ''} open, and "
                            f"max_streams_per_user allows {limit}; close one, or poll GET .../events instead.",
                       "too_many_streams", headers={"Retry-After": str(BUSY_RETRY_SECONDS)})
    # Past the process's limit the threads stay free for requests.
    if not slot.take():
        slot.give_back()
        raise ApiError(503, f"This API process already serves {settings.max_streams_per_process} event streams; "
                            f"poll GET .../events instead, or retry in {BUSY_RETRY_SECONDS} seconds.",
                       "streams_busy", headers={"Retry-After": str(BUSY_RETRY_SECONDS)})
    events = event_stream(_db(), job_id, kind, after=after, max_seconds=settings.stream_max_seconds)
    response = Response(
        slot.held_while(events),
        mimetype="text/event-stream",
        # Proxies such as nginx would otherwise hold events back until their buffer fills.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # A client that goes away never exhausts the stream; the server closes the response then.
    response.call_on_close(slot.give_back)
    return response


def _stream_slots(app: Flask, limit: int) -> threading.BoundedSemaphore:
    """This app's count of streams it may still open."""
    with _SLOTS_LOCK:
        return app.extensions.setdefault("clara_stream_slots", threading.BoundedSemaphore(limit))


class _StreamSlot:
    """One stream's place among the app's streams and among its user's, given back exactly once however it ends.

    A user's streams are members of a Redis sorted set scored by when they lapse, so that a process that dies
    with streams open frees them after stream_max_seconds instead of never.
    """

    def __init__(self, slots: threading.BoundedSemaphore, store: redis.Redis, user_id: int) -> None:
        self._slots = slots
        self._store = store
        self._key = f"{USER_STREAMS_KEY}{user_id}"
        self._member = uuid.uuid4().hex
        self._held = False
        self._user_held = False
        self._lock = threading.Lock()

    def take_user(self, limit: int, lifetime: float) -> bool:
        """Take one of the user's places if they hold fewer than limit streams (unlapsed ones) now."""
        now = time.time()
        taken = self._store.eval(_TAKE_USER_SLOT, 1, self._key, now, now + lifetime, limit, self._member,
                                 int(lifetime) + 1)
        self._user_held = bool(taken)
        return self._user_held

    def take(self) -> bool:
        """Take a place of this process if one is free."""
        self._held = self._slots.acquire(blocking=False)
        return self._held

    def give_back(self) -> None:
        """Free the places; later calls do nothing."""
        with self._lock:
            if self._held:
                self._held = False
                self._slots.release()
            if self._user_held:
                self._user_held = False
                try:
                    self._store.zrem(self._key, self._member)
                except redis.RedisError as exc:
                    logger.warning("Could not free a stream place of %s (%s); it lapses by itself.", self._key, exc)

    def held_while(self, frames: Iterator[str]) -> Iterator[str]:
        """Yield the frames, and free the places once they are all sent."""
        try:
            yield from frames
        finally:
            self.give_back()


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
