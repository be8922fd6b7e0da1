"""Celery's configuration, built from Clara's settings so the API and every worker agree."""

from __future__ import annotations

from typing import Any

from settings import Settings

# Extra time past the longest allowed job before Redis hands an unacknowledged task to another worker.
VISIBILITY_MARGIN_SECONDS = 3600
# The trainer stops itself at the job time limit after a checkpoint; Celery's soft limit is the backstop
# for a step that never ends, and the hard limit kills a child that ignores even that.
SOFT_LIMIT_MARGIN_SECONDS = 120
HARD_LIMIT_MARGIN_SECONDS = 300

TASK_ROUTES = {
    "clara.train_*": {"queue": "gpu"},
    "clara.build_*": {"queue": "cpu"},
}


def _time_limits(limit: float) -> dict[str, float]:
    """Celery's soft and hard time limits for a task that stops itself at `limit` seconds."""
    return {"soft_time_limit": limit + SOFT_LIMIT_MARGIN_SECONDS,
            "time_limit": limit + SOFT_LIMIT_MARGIN_SECONDS + HARD_LIMIT_MARGIN_SECONDS}


def build(settings: Settings) -> dict[str, Any]:
    """Return the Celery configuration for these settings."""
    # Redis redelivers an unacknowledged task after the visibility timeout; it must outlast every job,
    # and it must be set for both the broker and the result backend (celery#7651).
    longest = max(settings.job_time_limit, settings.dataset_time_limit)
    transport: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout or int(longest) + VISIBILITY_MARGIN_SECONDS}
    if settings.visibility_timeout:
        # A shortened timeout (tests) is only seen if workers look for overdue tasks well within it;
        # kombu's default sweep runs every 100 seconds.
        transport.update(unacked_restore_interval=max(1, settings.visibility_timeout // 4),
                         unacked_restore_throttle=1)
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": dict(transport),
        "result_backend_transport_options": dict(transport),
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.broker_timeout,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_routes": TASK_ROUTES,
        "task_annotations": {
            "clara.train_job": _time_limits(settings.job_time_limit),
            # A build checks its own deadline between batches; these catch a batch that never ends.
            "clara.build_dataset": _time_limits(settings.dataset_time_limit),
        },
        "task_default_queue": "cpu",
        # A training task is acknowledged only when it ends, and goes back to the queue if its
        # worker process dies; PostgreSQL counts the attempts, since Redis does not.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # One training child per worker unless the command line says otherwise (one per GPU).
        "worker_concurrency": max(1, len(settings.gpu_ids)),
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_expires": 7 * 24 * 3600,
        "result_extended": True,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
    }
