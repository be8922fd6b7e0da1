"""Each worker's own Prometheus metrics, served by its main process on CLARA_WORKER_METRICS_PORT.

Tasks run in prefork pool children, so every process of a worker writes its figures to files in a directory
of that worker's own (prometheus_client's multiprocess mode) and the main process adds them up when scraped.
What only the main process knows, the worker's identity and the tasks it is running, it reports itself.
"""

from __future__ import annotations

import functools
import glob
import hmac
import logging
import os
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery import states
from celery.signals import (
    celeryd_init,
    task_postrun,
    task_prerun,
    task_received,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, values
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from settings import Settings, is_loopback

logger = logging.getLogger(__name__)

KINDS = {"clara.train_job": "training", "clara.build_dataset": "dataset"}
OUTCOMES = {states.SUCCESS: "succeeded", states.FAILURE: "failed", states.RETRY: "retried",
            states.REJECTED: "rejected", states.IGNORED: "ignored"}
# From a dataset build of seconds to a training run of a day.
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class Meters:
    """What every process of a worker counts; with no registry the files of multiprocess mode collect it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        def counter(name: str, text: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, text, list(labels), registry=registry)

        def gauge(name: str, text: str, labels: Iterable[str] = (), mode: str = "livesum") -> Gauge:
            return Gauge(name, text, list(labels), multiprocess_mode=mode, registry=registry)

        self.received = counter("clara_worker_tasks_received", "Tasks this worker took from the broker.", ["task"])
        self.finished = counter("clara_worker_tasks_finished", "Task runs that ended, by task and outcome"
                                " (succeeded, failed, retried, rejected, ignored).", ["task", "outcome"])
        self.duration = Histogram("clara_worker_task_duration_seconds", "Run time of ended task runs, by task.",
                                  ["task"], buckets=DURATION_BUCKETS, registry=registry)
        self.jobs = counter("clara_worker_jobs", "Job deliveries this worker ran to an end, by kind and what"
                            " became of the job (completed, failed, cancelled, or why it was not run).",
                            ["kind", "outcome"])
        self.steps = counter("clara_worker_training_steps", "Optimizer steps trained on this worker.")
        self.tokens = counter("clara_worker_trained_tokens", "Tokens trained on by this worker.")
        self.speed = gauge("clara_worker_training_tokens_per_second",
                           "Throughput of the training running on each GPU (or cpu); 0 while none runs.", ["gpu"])
        self.documents = counter("clara_worker_dataset_documents_read", "Documents this worker's builds read.")
        self.records = counter("clara_worker_dataset_records_written", "Records this worker's builds wrote.")
        self.gpu_allocated = gauge("clara_worker_gpu_memory_allocated_bytes",
                                   "GPU memory held by this worker's tensors, per GPU.", ["gpu"])
        self.gpu_reserved = gauge("clara_worker_gpu_memory_reserved_bytes",
                                  "GPU memory PyTorch's allocator holds for this worker, per GPU.", ["gpu"])
        self.rss = gauge("clara_worker_process_resident_memory_bytes",
                         "Resident memory of each process of this worker (main and pool children), by pid.",
                         mode="liveall")


_meters: Meters | None = None
_directory: str | None = None
_server: WSGIServer | None = None
# Per process: this pool child's GPU, the last cumulative figures of its runs, and when its tasks started.
_gpu = ""
_last: dict[str, dict[str, int | None]] = {}
_started: dict[str, float] = {}


def _harmless(hook: Callable[..., None]) -> Callable[..., None]:
    """A hook the task calls directly: its metrics must never fail the job, so an error is only logged once."""
    failed: list[bool] = []

    @functools.wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:
            if not failed:
                failed.append(True)
                logger.warning("Worker metrics hook %s failed; the job goes on.", hook.__name__, exc_info=True)

    return guarded


def enable(directory: str) -> Meters:
    """Have this process, and the pool children it forks from now on, write their metrics to files there."""
    global _meters, _directory
    os.environ[MULTIPROC_VARIABLE] = directory
    # prometheus_client picks its value class when first imported, which in a worker is before settings
    # are read; metrics made from here on write to the directory instead of this process's memory.
    values.ValueClass = values.get_value_class()
    _directory = directory
    _meters = Meters()
    return _meters


@_harmless
def child_started(gpu: str | None) -> None:
    """In a pool child: note the GPU it trains on, and show that GPU idle until a training starts."""
    global _gpu
    _gpu = gpu or ""
    if _meters is not None:
        _meters.speed.labels(_device_label()).set(0)


@_harmless
def training_resumes(job_id: str, step: int) -> None:
    """A resumed run counts its steps from the checkpoint; its tokens from its first report on."""
    _last[job_id] = {"steps": step, "tokens": None}


@_harmless
def record_training(job_id: str, progress: Any) -> None:
    """Count the steps and tokens trained since the run's last report, and note its throughput."""
    if _meters is None:
        return
    _grow(job_id, {"steps": progress.step, "tokens": progress.trained_tokens},
          {"steps": _meters.steps, "tokens": _meters.tokens})
    _meters.speed.labels(_device_label()).set(progress.tokens_per_second or 0.0)
    _sample_memory(_meters)


@_harmless
def record_dataset(dataset_id: str, progress: dict[str, Any]) -> None:
    """Count the documents read and records written since the build's last report."""
    if _meters is None:
        return
    _grow(dataset_id, {"documents": int(progress.get("documents_read", 0)),
                       "records": int(progress.get("records_written", 0))},
          {"documents": _meters.documents, "records": _meters.records})


def _grow(run_id: str, figures: dict[str, int], counters: dict[str, Counter]) -> None:
    """Add to each counter what its cumulative figure grew by since this run's last report."""
    last = _last.setdefault(run_id, {})
    for name, value in figures.items():
        before = last.get(name, 0)
        if before is not None and value > before:
            counters[name].inc(value - before)
        last[name] = value


def _device_label() -> str:
    """The gpu label of this process: its pinned GPU, else its CUDA device, else cpu."""
    if _gpu:
        return _gpu
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return str(torch.cuda.current_device())
    return "cpu"


def _sample_memory(meters: Meters) -> None:
    """Note this process's resident memory and, if it uses CUDA, its GPU memory."""
    meters.rss.set(_rss_bytes())
    # Only a process that trains has torch loaded; importing it here would cost seconds.
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    device = torch.cuda.current_device()
    meters.gpu_allocated.labels(_device_label()).set(torch.cuda.memory_allocated(device))
    meters.gpu_reserved.labels(_device_label()).set(torch.cuda.memory_reserved(device))


def _rss_bytes() -> float:
    """Resident memory of this process now (Linux), or its peak elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return float(int(statm.read().split()[1]) * resource.getpagesize())
    except OSError:
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


@task_received.connect
def _count_received(request: Any = None, **_: Any) -> None:
    """In the main process: count a task taken from the broker."""
    if _meters is not None and request is not None:
        _meters.received.labels(request.task_name).inc()
        _meters.rss.set(_rss_bytes())


@task_prerun.connect
def _note_start(task_id: str = "", **_: Any) -> None:
    """In the process running the task: start its clock."""
    if _meters is not None:
        _started[task_id] = time.monotonic()
        _sample_memory(_meters)


@task_postrun.connect
def _count_finished(task_id: str = "", task: Any = None, args: Any = (), retval: Any = None, state: str = "",
                    **_: Any) -> None:
    """In the process running the task: count how it ended and what became of its job, and time it."""
    if _meters is None or task is None:
        return
    _meters.finished.labels(task.name, OUTCOMES.get(state, "other")).inc()
    started = _started.pop(task_id, None)
    if started is not None:
        _meters.duration.labels(task.name).observe(time.monotonic() - started)
    kind = KINDS.get(task.name)
    if kind is not None and state == states.SUCCESS and isinstance(retval, dict):
        _meters.jobs.labels(kind, str(retval.get("outcome", "unknown"))).inc()
    if args:
        _last.pop(str(args[0]), None)
    if kind == "training":
        _meters.speed.labels(_device_label()).set(0)
    _sample_memory(_meters)


@worker_process_shutdown.connect
def _child_ends(**_: Any) -> None:
    """A pool child that ends in order takes its live gauges with it."""
    if _directory is not None:
        mark_process_dead(os.getpid(), _directory)


@celeryd_init.connect
def _prepare(instance: Any = None, **_: Any) -> None:
    """In the main process, before the pool forks: a fresh metrics directory of this worker's own."""
    settings: Settings = instance.app.clara_settings
    if settings.worker_metrics_port:
        enable(tempfile.mkdtemp(prefix="clara-worker-metrics-"))


@worker_ready.connect
def _start_serving(sender: Any = None, **_: Any) -> None:
    """Once the pool is up, serve /metrics from the main process (children forked later inherit no thread)."""
    global _server
    if _meters is None or _directory is None or sender is None:
        return
    settings: Settings = sender.app.clara_settings
    # The main process notes its memory from its main thread only: a scrape thread holding prometheus_client's
    # lock while the pool forks a new child would leave that child's copy of the lock locked for good.
    _meters.rss.set(_rss_bytes())
    registry = CollectorRegistry()
    registry.register(WorkerCollector(_directory, worker_info(sender, settings)))
    address, port = settings.worker_metrics_address, settings.worker_metrics_port
    try:
        _server = serve(metrics_app(registry, settings.metrics_token), address, port)
    except OSError as exc:
        # Training matters more than its metrics; Prometheus shows the target down.
        logger.error("Could not serve worker metrics on %s port %s: %s", address, port, exc)
        return
    logger.info("Worker metrics at http://%s:%s/metrics.", address, port)


@worker_shutdown.connect
def _stop_serving(**_: Any) -> None:
    """Stop serving and remove this worker's metrics directory."""
    if _server is not None:
        _server.shutdown()
        _server.server_close()
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)


def worker_info(consumer: Any, settings: Settings) -> dict[str, str]:
    """Who this worker is: Celery node name, host, queues, GPUs and pool size."""
    from trainers.devices import gpu_ids

    queues = getattr(consumer.app.amqp.queues, "consume_from", None) or {}
    return {"hostname": str(consumer.hostname), "host": socket.gethostname(),
            "queues": ",".join(sorted(queues)), "gpu_ids": ",".join(settings.gpu_ids or gpu_ids(os.environ)),
            "concurrency": str(getattr(consumer.controller, "concurrency", "")), "pid": str(os.getpid())}


def _active_requests() -> list[Any]:
    """The tasks this worker's pool runs now, as Celery's main process tracks them."""
    from celery.worker import state

    for _ in range(3):
        try:
            return list(state.active_requests)
        except RuntimeError:  # the set changed while it was copied
            continue
    return []


class WorkerCollector:
    """At scrape time: every process's files added up, and what only the main process knows."""

    def __init__(self, directory: str, info: dict[str, str],
                 active: Callable[[], list[Any]] = _active_requests) -> None:
        self.directory = directory
        self.info = info
        self.active = active
        self.files = MultiProcessCollector(None, path=directory)

    def collect(self) -> Iterator[Metric]:
        """Yield the worker's info, its running tasks, and the figures of its live and past processes."""
        sweep_dead(self.directory)
        info = InfoMetricFamily("clara_worker", "This worker: Celery node name, host, queues, GPUs, pool size.")
        info.add_metric([], self.info)
        yield info
        yield from self._running()
        yield from self.files.collect()

    def _running(self) -> Iterator[Metric]:
        count = GaugeMetricFamily("clara_worker_running_tasks", "Tasks running now, by task.", labels=["task"])
        running = GaugeMetricFamily("clara_worker_running_task_info",
                                    "1 for each task running now, with its job id and pool process.",
                                    labels=["task", "job_id", "pid"])
        by_task = dict.fromkeys(KINDS, 0)
        for request in self.active():
            name = str(request.task_name)
            by_task[name] = by_task.get(name, 0) + 1
            args = request.args or ()
            running.add_metric([name, str(args[0]) if args else "", str(request.worker_pid or "")], 1)
        for name, n in sorted(by_task.items()):
            count.add_metric([name], n)
        yield count
        yield running


def sweep_dead(directory: str) -> None:
    """Drop the live gauges of pool children that died without ending in order (killed, out of memory)."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        try:
            pid = int(os.path.basename(path).rsplit("_", 1)[1].removesuffix(".db"))
        except ValueError:
            continue
        if not _alive(pid):
            mark_process_dead(pid, directory)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metrics_app(registry: CollectorRegistry, token: str) -> Callable[..., Iterable[bytes]]:
    """The registry as a WSGI app for the holder of the metrics token or, without one, loopback clients only."""
    inner = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        refusal = _refusal(environ, token)
        if refusal is None:
            return inner(environ, start_response)
        status, message = refusal
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if status.startswith("401"):
            headers.append(("WWW-Authenticate", "Bearer"))
        start_response(status, headers)
        return [message.encode()]

    return app


def _refusal(environ: dict[str, Any], token: str) -> tuple[str, str] | None:
    """Why this request may not read the metrics, as the API's /metrics decides it; None when it may."""
    if token:
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return "401 Unauthorized", "The worker's /metrics needs the metrics token as a bearer token.\n"
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return "403 Forbidden", "The metrics token is wrong.\n"
        return None
    if not is_loopback(environ.get("REMOTE_ADDR", "")):
        return "403 Forbidden", "The worker's /metrics answers only loopback unless CLARA_METRICS_TOKEN is set.\n"
    return None


class _QuietHandler(WSGIRequestHandler):
    """Serves without a log line per request; scrapes come every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing."""


def serve(app: Callable[..., Iterable[bytes]], address: str, port: int) -> WSGIServer:
    """Serve a WSGI app on address and port from a daemon thread; IPv6 addresses work too."""
    family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    server = make_server(address, port, app, server_class, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="clara-worker-metrics", daemon=True).start()
    return server
