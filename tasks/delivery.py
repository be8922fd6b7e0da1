"""What every job task shares about its delivery: the name of the worker running it, and Flower's progress."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from celery import Task

logger = logging.getLogger(__name__)


def worker_name(task: Task) -> str:
    """host/pid of the process running this delivery, as job rows and events show it."""
    return f"{task.request.hostname or socket.gethostname()}/{os.getpid()}"


def progress_publisher(task: Task, job_id: str) -> Callable[[dict[str, Any]], None]:
    """Publish progress to the result backend, where Flower shows it; never fail the job for it."""

    def publish(meta: dict[str, Any]) -> None:
        # PostgreSQL remains the truth, so a Redis outage must not end the job.
        try:
            task.update_state(state="PROGRESS", meta=meta)
        except Exception as exc:  # redis-py and kombu raise several types for a backend that is down.
            logger.warning("Could not publish progress of job %s to the result backend: %s", job_id, exc)

    return publish
