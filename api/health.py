"""Liveness and readiness: /health and /ready."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from flask import current_app
from flask_smorest import Blueprint

from api.schemas import HealthSchema, ReadySchema
from records import jobs
from records.db import DatabaseUnavailable

logger = logging.getLogger(__name__)

blp = Blueprint("health", __name__, description="Liveness and readiness probes.")

TRAINING_QUEUE = "gpu"


@blp.route("/health", methods=["GET"])
@blp.doc(security=[])
@blp.response(200, HealthSchema)
def health() -> dict:
    """Liveness: the API process answers. Never fails because a dependency is down."""
    settings = current_app.extensions["clara_settings"]
    try:
        active = jobs.count_active(current_app.extensions["clara_db"])
    except DatabaseUnavailable:
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
    try:
        current_app.extensions["clara_db"].ping()
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


@blp.route("/ready", methods=["GET"])
@blp.doc(security=[])
@blp.response(200, ReadySchema)
@blp.alt_response(503, schema=ReadySchema, description="A dependency is down; the body names it.", example={
    "status": "not_ready", "checks": {"database": "ok", "redis": "ok", "workers": "no worker consumes the 'gpu' queue"},
    "error": {"code": "not_ready", "message": "Not ready: no worker consumes the 'gpu' queue",
              "details": {"down": ["workers"]}}})
def ready():
    """Readiness: PostgreSQL, Redis and at least one training worker answer."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    checks["workers"] = _check_workers() if checks["redis"] is None else "the broker (Redis) is unavailable"
    down = {name: problem for name, problem in checks.items() if problem}
    body = {
        "status": "ready" if not down else "not_ready",
        "checks": {name: ("ok" if problem is None else problem) for name, problem in checks.items()},
    }
    if down:
        body["error"] = {"code": "not_ready", "message": "Not ready: " + "; ".join(down.values()),
                         "details": {"down": sorted(down)}}
        return body, 503
    return body
