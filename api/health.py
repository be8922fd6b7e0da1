"""Liveness and readiness: /health and /ready."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import redis
from flask import current_app, request
from flask_jwt_extended import current_user, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException
from flask_smorest import Blueprint
from jwt import PyJWTError

from api.schemas import HealthSchema, ReadySchema
from records import jobs
from records.db import DatabaseBusy, DatabaseUnavailable

logger = logging.getLogger(__name__)

blp = Blueprint("health", __name__, description="Liveness and readiness probes.")

TRAINING_QUEUE = "gpu"
# A database check that found every pooled connection in use: the process is loaded, PostgreSQL is not down.
BUSY = "busy"
_CACHE_LOCK = threading.Lock()
READY_DESCRIPTION = """Each check is ok, busy (database only: every pooled connection of this process is in use,
which is load, not an outage) or unavailable. With an admin's bearer token the checks and the error name the
problem in full (driver errors name hosts and ports); without one, only which component is down. The workers
check asks every worker over the broker and is reused for CLARA_READY_CACHE_SECONDS."""


@blp.route("/health", methods=["GET"])
@blp.doc(security=[])
@blp.response(200, HealthSchema)
def health() -> dict:
    """Liveness: the API process answers. Never fails because a dependency is down."""
    settings = current_app.extensions["clara_settings"]
    try:
        # A liveness probe must answer quickly however busy the pool is.
        active = jobs.count_active(current_app.extensions["clara_db"], wait=settings.ready_timeout)
    except DatabaseUnavailable:  # or DatabaseBusy: either way the count is unknown, the process alive.
        active = None
    return {
        "status": "healthy",
        "service": "clara-api",
        "port": settings.api_port,
        "active_jobs": active,
        "max_concurrent_jobs": settings.max_concurrent_jobs,
        "timestamp": datetime.now(UTC).isoformat(),
    }


def _check_database() -> str | None:
    db = current_app.extensions["clara_db"]
    try:
        # A short wait: a probe must not queue behind requests for the whole pool timeout.
        db.ping(wait=current_app.extensions["clara_settings"].ready_timeout)
    except DatabaseBusy:
        return BUSY
    except DatabaseUnavailable as exc:
        return str(exc)
    return None


def _check_redis() -> str | None:
    try:
        current_app.extensions["clara_redis"].ping()
    except Exception as exc:  # any redis-py error means Redis cannot serve us now.
        return f"Redis is unavailable: {exc}"
    return None


def _check_workers() -> str | None:
    """Ask the workers over the broker which queues they consume; one on the training queue must answer."""
    settings = current_app.extensions["clara_settings"]
    try:
        replies = current_app.extensions["clara_celery"].control.inspect(timeout=settings.ready_timeout).active_queues()
    except Exception as exc:  # the broker itself is down.
        return f"the broker is unavailable: {exc}"
    for queues in (replies or {}).values():
        if any(queue.get("name") == TRAINING_QUEUE for queue in queues):
            return None
    return f"no worker consumes the {TRAINING_QUEUE!r} queue"


class _WorkersCheck:
    """The workers check of one app, reused for ready_cache_seconds: it broadcasts and waits up to ready_timeout.

    One thread refreshes it at a time; the others answer with the last result meanwhile, or wait for the first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._result: tuple[float, str | None] | None = None

    def get(self, max_age: float) -> str | None:
        """The workers' problem, or None when a worker consumes the training queue."""
        cached = self._result
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        if cached is not None and not self._lock.acquire(blocking=False):
            return cached[1]
        if cached is None:
            self._lock.acquire()
        try:
            cached = self._result
            if cached is None or time.monotonic() - cached[0] >= max_age:
                problem = _check_workers()
                cached = self._result = (time.monotonic(), problem)
            return cached[1]
        finally:
            self._lock.release()


def _workers_check() -> _WorkersCheck:
    with _CACHE_LOCK:
        return current_app.extensions.setdefault("clara_ready_workers", _WorkersCheck())


def _is_admin() -> bool:
    """Whether the request carries a valid admin token; any problem with it just means no details."""
    if "Authorization" not in request.headers:
        return False
    try:
        verify_jwt_in_request(optional=True)
        return bool(current_user) and current_user["role"] == "admin"
    except (JWTExtendedException, PyJWTError, DatabaseUnavailable, redis.RedisError):
        return False


@blp.route("/ready", methods=["GET"])
@blp.doc(security=[], description=READY_DESCRIPTION)
@blp.response(200, ReadySchema)
@blp.alt_response(503, schema=ReadySchema, description="A dependency is down; the body names it.", example={
    "status": "not_ready", "checks": {"database": "ok", "redis": "ok", "workers": "unavailable"},
    "error": {"code": "not_ready", "message": "Not ready: workers unavailable.", "details": {"down": ["workers"]}}})
def ready():
    """Readiness: PostgreSQL, Redis and at least one training worker answer."""
    settings = current_app.extensions["clara_settings"]
    checks = {"database": _check_database(), "redis": _check_redis()}
    checks["workers"] = (_workers_check().get(settings.ready_cache_seconds) if checks["redis"] is None
                         else "the broker (Redis) is unavailable")
    down = {name: problem for name, problem in checks.items() if problem and problem != BUSY}
    # Driver errors name hosts, ports and database users: only admins see them.
    detailed = _is_admin()
    body = {
        "status": "ready" if not down else "not_ready",
        "checks": {name: _shown(problem, detailed) for name, problem in checks.items()},
    }
    if down:
        shown = down.values() if detailed else (f"{name} unavailable" for name in down)
        body["error"] = {"code": "not_ready", "message": "Not ready: " + "; ".join(shown) + ".",
                         "details": {"down": sorted(down)}}
        return body, 503
    return body


def _shown(problem: str | None, detailed: bool) -> str:
    """A check's result as the caller may see it: ok, busy, or the problem (admins) or unavailable (others)."""
    if problem is None:
        return "ok"
    if problem == BUSY:
        return BUSY
    return problem if detailed else "unavailable"
