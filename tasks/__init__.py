"""Clara's Celery app. Workers start with `celery -A tasks worker -Q gpu` (training) or `-Q cpu`."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

import celeryconfig
import settings as clara_settings
from settings import Settings
from tasks import worker_metrics

logger = logging.getLogger(__name__)


def make_celery(settings: Settings, set_as_current: bool = True) -> Celery:
    """Build a Celery app from Clara's settings; the settings ride along as `app.clara_settings`."""
    app = Celery("clara", set_as_current=set_as_current, include=["tasks.training", "tasks.datasets"])
    app.config_from_object(celeryconfig.build(settings))
    app.clara_settings = settings
    return app


app = make_celery(clara_settings.load())


@worker_init.connect
def _prepare_worker(**_: Any) -> None:
    """Bring the schema up to date, so a worker host may start before any API."""
    from records import migrations
    from records.db import Database, DatabaseUnavailable

    clara_settings.configure_logging(app.clara_settings)
    db = Database(app.clara_settings.database_url, max_connections=1)
    try:
        migrations.apply(db)
    except DatabaseUnavailable as exc:
        logger.warning("Could not apply migrations at worker start (%s); jobs wait for PostgreSQL.", exc)
    finally:
        db.reset()


@worker_process_init.connect
def _prepare_child(**_: Any) -> None:
    """In each worker child: take this child's GPU before torch touches CUDA, and drop inherited connections."""
    from billiard.process import current_process

    from tasks.training import reset_database
    from trainers.devices import pin_gpu

    clara_settings.configure_logging(app.clara_settings)
    index = getattr(current_process(), "index", 0) or 0
    gpu = pin_gpu(index)
    logger.info("Worker child %s trains on %s.", index, f"GPU {gpu}" if gpu is not None else "its default device")
    worker_metrics.child_started(gpu)
    reset_database()


_reconciler = None


@worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    """Re-enqueue jobs the broker lost, now and every CLARA_RECONCILE_SECONDS, from this worker's main process."""
    from tasks.reconcile import Reconciler

    global _reconciler
    _reconciler = Reconciler(app, app.clara_settings)
    _reconciler.start()


@worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    """Stop the reconciler with the worker."""
    if _reconciler is not None:
        _reconciler.stop()
