"""Keeping a running attempt's lease on its job alive while it works."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

from records import attempts
from records.db import Database, DatabaseUnavailable
from records.jobs import TRAINING, JobTable

logger = logging.getLogger(__name__)

RETRY_WHILE_DOWN_SECONDS = 1.0


class LeaseKeeper:
    """Renews the attempt's lease on its job from a background thread while training runs."""

    def __init__(self, db: Database, job_id: uuid.UUID, attempt_id: str, lease_seconds: int,
                 on_lost: Callable[[], None], kind: JobTable = TRAINING) -> None:
        self.db = db
        self.kind = kind
        self.job_id = job_id
        self.attempt_id = attempt_id
        self.lease_seconds = lease_seconds
        self.on_lost = on_lost
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def start(self) -> None:
        """Begin renewing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and wait for the thread."""
        self._stopped.set()
        self._thread.join(timeout=self.lease_seconds)

    def _run(self) -> None:
        # Renew well inside the lease so one slow renewal never lets it lapse.
        interval = self.lease_seconds / 3
        wait = interval
        while not self._stopped.wait(wait):
            try:
                if not attempts.renew_lease(self.db, self.job_id, self.attempt_id, self.lease_seconds, self.kind):
                    logger.warning("Attempt %s lost its lease on job %s.", self.attempt_id, self.job_id)
                    self.on_lost()
                    return
                wait = interval
            except DatabaseUnavailable as exc:
                # Training goes on: while PostgreSQL is down nobody can claim the job either. The renewal
                # does not require an unexpired lease, so retrying soon after the database returns keeps
                # the job unless another delivery claimed the lapsed lease first, which renew then reports.
                wait = min(interval, RETRY_WHILE_DOWN_SECONDS)
                logger.warning("Could not renew the lease on job %s (%s); trying again in %.0f seconds.",
                               self.job_id, exc, wait)
