"""The reconciler: puts jobs the broker lost back on it, from PostgreSQL, on every worker host.

Each pass also deletes the checkpoints of jobs that ended more than CLARA_CHECKPOINT_RETENTION_HOURS ago.

Redis may restart empty, be flushed, or lose a running task with a dead worker host for a whole visibility
timeout; PostgreSQL still knows every job. Each worker runs a pass when it starts and every
CLARA_RECONCILE_SECONDS after; a PostgreSQL advisory lock lets only one host's pass run at a time, and a
duplicate delivery is harmless anyway, since the claim skips ended jobs and waits out live leases.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from pathlib import Path

import redis
from celery import Celery
from kombu.transport.redis import Channel

from records import checkpoints, storage
from records import reconcile as queries
from records.db import Database, DatabaseUnavailable
from records.jobs import DATASETS, TRAINING, JobTable
from settings import Settings

logger = logging.getLogger(__name__)

# Each kind of job, the task that runs it, and the queue celeryconfig.TASK_ROUTES sends that task to.
TASKS: tuple[tuple[JobTable, str, str], ...] = (
    (TRAINING, "clara.train_job", "gpu"),
    (DATASETS, "clara.build_dataset", "cpu"),
)
# The API publishes for up to about 3.25 broker timeouts (api/enqueue.py); a pending job younger than this
# may still be on its way to the broker.
PUBLISH_TIMEOUTS = 4
# Ended jobs whose checkpoints one pass deletes; the rest wait for the next pass, so a pass stays short.
RETENTION_BATCH = 50


def broker_task_ids(client: redis.Redis, queues: Iterable[str]) -> tuple[set[str], set[str]]:
    """Task ids waiting in the queues, and those plus every delivered but unacknowledged one."""
    # A message moves from a queue list to the unacked hash when delivered, and back when Redis restores
    # it; reading the hash before and after the lists catches a message that moves while we read.
    unacked = _unacked_ids(client)
    waiting = set()
    for queue in queues:
        for step in Channel.priority_steps:
            key = f"{queue}{Channel.sep}{step}" if step else queue
            waiting.update(_task_id(raw) for raw in client.lrange(key, 0, -1))
    unacked |= _unacked_ids(client)
    waiting.discard(None)
    unacked.discard(None)
    return waiting, waiting | unacked


def _unacked_ids(client: redis.Redis) -> set[str | None]:
    """Task ids of the messages kombu holds as delivered but not yet acknowledged."""
    ids = set()
    for raw in client.hvals(Channel.unacked_key):
        try:
            message = json.loads(raw)[0]
        except (ValueError, TypeError, IndexError):
            continue
        ids.add(_task_id(message))
    return ids


def _task_id(message: bytes | dict) -> str | None:
    """The Celery task id in a raw kombu message, or None when it has none."""
    try:
        if not isinstance(message, dict):
            message = json.loads(message)
        return message["headers"]["id"]
    except (ValueError, TypeError, KeyError):
        return None


def reconcile(db: Database, app: Celery, settings: Settings, client: redis.Redis) -> int:
    """Run one pass unless another host is running one; return how many jobs went back on the broker."""
    wait = float(settings.reconcile_seconds)
    pending = max(wait, PUBLISH_TIMEOUTS * settings.broker_timeout)
    requeued = 0
    with db.transaction() as cur:
        if not queries.try_lock(cur):
            logger.info("Another host is reconciling jobs; skipping this pass.")
            return 0
        # Read the broker while holding the lock: a pass that started earlier has published everything
        # it re-queued, so this one sees those messages and does not publish them twice.
        waiting, on_broker = broker_task_ids(client, [queue for _, _, queue in TASKS])
        for kind, task_name, _ in TASKS:
            strays = queries.lock_strays(cur, kind, wait_seconds=wait, pending_seconds=pending,
                                         on_broker=on_broker, waiting=waiting)
            for stray in strays:
                try:
                    # The job id is the task id, as when the API publishes: a later pass finds it by that id.
                    app.send_task(task_name, args=[str(stray.job_id)], task_id=str(stray.job_id), retry=True,
                                  retry_policy={"max_retries": 2, "interval_start": 0,
                                                "interval_step": settings.broker_timeout / 4,
                                                "interval_max": settings.broker_timeout / 2})
                except Exception as exc:  # kombu raises several types for a broker that is down.
                    logger.warning("Could not re-queue job %s; the next pass tries again: %s", stray.job_id, exc)
                    return requeued
                queries.note_requeued(cur, kind, stray, str(stray.job_id))
                logger.warning("Re-queued %s %s: %s.", kind.table, stray.job_id, stray.reason)
                requeued += 1
    return requeued


def remove_expired_checkpoints(db: Database, settings: Settings) -> int:
    """Delete the checkpoints of jobs that ended checkpoint_retention_hours ago, unless another host is at it.

    Returns how many jobs' checkpoints went. The published adapter, in output_dir, is never touched.
    """
    removed = 0
    with db.transaction() as cur:
        if not queries.try_lock(cur):
            return 0
        for job in queries.lock_expired_checkpoints(cur, retention_hours=settings.checkpoint_retention_hours,
                                                    limit=RETENTION_BATCH):
            directory = settings.checkpoints_dir / str(job["id"])
            if job["adapter_path"] and directory.resolve() == Path(job["adapter_path"]).resolve():
                logger.error("Not removing checkpoints of job %s: %s is its adapter.", job["id"], directory)
                continue
            try:
                storage.remove_tree(directory)
            except OSError as exc:
                logger.warning("Could not remove the checkpoints of job %s; the next pass tries again: %s",
                               job["id"], exc)
                continue
            checkpoints.forget_removed(cur, job["id"], settings.checkpoint_retention_hours)
            removed += 1
    if removed:
        logger.info("Removed the checkpoints of %s ended jobs past their retention.", removed)
    return removed


class Reconciler:
    """Runs a reconcile pass at once and then every reconcile_seconds, in a background thread."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.db = Database(settings.database_url, max_connections=1)
        self.client = redis.Redis.from_url(settings.redis_url, socket_timeout=settings.broker_timeout,
                                           socket_connect_timeout=settings.broker_timeout)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clara-reconciler", daemon=True)

    def start(self) -> None:
        """Begin reconciling."""
        logger.info("Reconciling jobs with the broker every %s seconds.", self.settings.reconcile_seconds)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current pass."""
        self._stopped.set()
        self._thread.join(timeout=self.settings.broker_timeout * 4)
        self.client.close()
        self.db.reset()

    def run_once(self) -> int:
        """One pass; failures are logged, since the next pass tries again."""
        try:
            remove_expired_checkpoints(self.db, self.settings)
        except DatabaseUnavailable as exc:
            logger.warning("Could not remove expired checkpoints; trying again in %s seconds: %s",
                           self.settings.reconcile_seconds, exc)
        except Exception:  # Retention failing must not keep jobs off the broker.
            logger.exception("Removing expired checkpoints failed; trying again in %s seconds.",
                             self.settings.reconcile_seconds)
        try:
            return reconcile(self.db, self.app, self.settings, self.client)
        except (DatabaseUnavailable, redis.RedisError) as exc:
            logger.warning("Could not reconcile jobs with the broker; trying again in %s seconds: %s",
                           self.settings.reconcile_seconds, exc)
            return 0
        except Exception:  # A bug must not end the thread: the next pass may still succeed.
            logger.exception("Reconciling jobs with the broker failed; trying again in %s seconds.",
                             self.settings.reconcile_seconds)
            return 0

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.run_once()
            self._stopped.wait(self.settings.reconcile_seconds)
