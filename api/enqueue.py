"""Publishing a job's task to the broker, or ending the job failed when the broker cannot take it."""

from __future__ import annotations

import logging
import uuid

from flask import current_app

from api.errors import ApiError
from records import jobs
from records.jobs import JobTable

logger = logging.getLogger(__name__)


def enqueue(task_name: str, job_id: uuid.UUID, kind: JobTable, name: str = "") -> None:
    """Publish the task with the job id as its task id; on a broker failure, end the job and answer 503."""
    db = current_app.extensions["clara_db"]
    timeout = current_app.extensions["clara_settings"].broker_timeout
    try:
        current_app.extensions["clara_celery"].send_task(
            task_name, args=[str(job_id)], task_id=str(job_id), retry=True,
            # What Flower and worker logs show as the arguments: the job id and the job's name.
            argsrepr=f"({str(job_id)!r},) {name}".rstrip(),
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": timeout / 4,
                          "interval_max": timeout / 2},
        )
    except Exception as exc:  # kombu raises several types for a broker that is down or refusing.
        logger.error("Could not queue job %s: %s", job_id, exc)
        jobs.mark_enqueue_failed(db, job_id, "the job queue was unavailable", kind=kind)
        raise ApiError(503, "The job queue is unavailable; nothing was queued. Try again shortly.",
                       "broker_unavailable", {"job_id": str(job_id)}) from None
    jobs.mark_queued(db, job_id, str(job_id), kind=kind)
