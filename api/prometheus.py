"""GET /metrics for Prometheus: jobs, queues and throughput read at scrape time, and the API's own requests.

Job figures are read from PostgreSQL and queue depths from Redis when Prometheus scrapes, so every API
process reports the same numbers; request counts and latencies are this process's own.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, current_app, g, request
from flask.blueprints import BlueprintSetupState
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.utils import floatToGoString

from api.errors import ApiError
from celeryconfig import TASK_ROUTES
from records.db import Database, DatabaseBusy, DatabaseUnavailable

logger = logging.getLogger(__name__)

blp = Blueprint("prometheus", __name__)

QUEUES = tuple(sorted({route["queue"] for route in TASK_ROUTES.values()}))
DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
# Methods outside this set are counted as OTHER, so odd requests cannot grow the label set.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A scrape waits this long for a pooled connection, well inside Prometheus' default 10 s scrape timeout.
SCRAPE_POOL_WAIT = 2.0
_KINDS = (("training", "training_jobs", "trainer_type"), ("dataset", "dataset_jobs", "kind"))


@blp.record_once
def _setup(state: BlueprintSetupState) -> None:
    """Give each app its own registry, so several apps in one process (tests) never share counters."""
    app = state.app
    registry = CollectorRegistry()
    registry.register(JobCollector(app.extensions["clara_db"], app.extensions["clara_redis"]))
    registry.register(PoolCollector(app.extensions["clara_db"]))
    requests = Counter("clara_http_requests", "HTTP requests answered, by method, route and status.",
                       ["method", "route", "status"], registry=registry)
    latency = Histogram("clara_http_request_duration_seconds",
                        "Time to answer an HTTP request (to the first byte of a streamed body), by method and route.",
                        ["method", "route"], registry=registry)
    app.extensions["clara_prometheus"] = {"registry": registry, "requests": requests, "latency": latency}


@blp.before_app_request
def _start_timer() -> None:
    """Note when the request came in, for its latency."""
    g.clara_request_started = time.perf_counter()


@blp.after_app_request
def _count_request(response: Response) -> Response:
    """Count the request by its route's rule (not its path, so ids do not become labels) and time it."""
    started = g.pop("clara_request_started", None)
    metrics = current_app.extensions["clara_prometheus"]
    method = request.method if request.method in METHODS else "OTHER"
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics["requests"].labels(method, route, str(response.status_code)).inc()
    if started is not None:
        metrics["latency"].labels(method, route).observe(time.perf_counter() - started)
    return response


@blp.route("/metrics", methods=["GET"])
def scrape() -> Response:
    """The metrics in Prometheus' text format, for the holder of metrics_token or, without one, loopback only."""
    _authorize()
    registry = current_app.extensions["clara_prometheus"]["registry"]
    return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _authorize() -> None:
    """Demand the configured bearer token; with none configured, refuse every address but loopback."""
    token = current_app.extensions["clara_settings"].metrics_token
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "GET /metrics needs the metrics token as a bearer token.", "unauthorized")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(403, "The metrics token is wrong.", "forbidden")
        return
    if not _is_loopback(request.remote_addr):
        raise ApiError(403, "GET /metrics answers only loopback addresses unless CLARA_METRICS_TOKEN is set.",
                       "forbidden")


def _is_loopback(address: str | None) -> bool:
    """Whether the client's address is 127.0.0.0/8 or ::1."""
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class JobCollector:
    """Reads jobs from PostgreSQL and queue depths from Redis each time Prometheus scrapes."""

    def __init__(self, db: Database, store: redis.Redis) -> None:
        self.db = db
        self.store = store

    def collect(self) -> Iterator[Metric]:
        """Yield every job and queue metric; a source that is down yields clara_source_up 0 instead of its figures."""
        up = GaugeMetricFamily("clara_source_up", "Whether the scrape could read this source.", labels=["source"])
        try:
            families = self._from_database()
            up.add_metric(["postgresql"], 1)
        except DatabaseBusy as exc:
            # Load, not an outage: no job figures this time, and no "down" either (see the pool metrics).
            logger.warning("Metrics scrape skipped PostgreSQL: %s.", exc)
            families = []
        except DatabaseUnavailable as exc:
            logger.warning("Metrics scrape could not read PostgreSQL: %s", exc)
            families = []
            up.add_metric(["postgresql"], 0)
        yield from families
        try:
            yield self._queues()
            up.add_metric(["redis"], 1)
        except redis.exceptions.RedisError as exc:
            logger.warning("Metrics scrape could not read Redis: %s", exc)
            up.add_metric(["redis"], 0)
        yield up

    def _queues(self) -> Metric:
        depth = GaugeMetricFamily("clara_queue_depth", "Tasks waiting on the broker, per Celery queue.",
                                  labels=["queue"])
        for queue in QUEUES:
            depth.add_metric([queue], self.store.llen(queue))
        return depth

    def _from_database(self) -> list[Metric]:
        counts = GaugeMetricFamily("clara_jobs", "Jobs by kind (training or dataset), status and type.",
                                   labels=["kind", "status", "type"])
        durations = HistogramMetricFamily(
            "clara_job_duration_seconds", "From start to end of ended jobs, by kind and final status.",
            labels=["kind", "status"])
        tokens = CounterMetricFamily("clara_trained_tokens", "Tokens trained on by all training jobs.")
        speed = GaugeMetricFamily("clara_job_tokens_per_second", "Latest training throughput of running jobs.",
                                  labels=["job_id"])
        with self.db.transaction(wait=SCRAPE_POOL_WAIT) as cur:
            # Table and column names come from _KINDS, never from a request.
            for kind, table, type_column in _KINDS:
                cur.execute(f"SELECT status, {type_column} AS type, count(*) AS n FROM {table} GROUP BY 1, 2")
                for row in cur.fetchall():
                    counts.add_metric([kind, row["status"], row["type"]], row["n"])
                for row in _durations(cur, table):
                    buckets = [(floatToGoString(le), row[f"le_{le}"]) for le in DURATION_BUCKETS] + [("+Inf", row["n"])]
                    durations.add_metric([kind, row["status"]], buckets, float(row["total"]))
            cur.execute("SELECT coalesce(sum(CASE WHEN jsonb_typeof(metrics->'trained_tokens') = 'number'"
                        " THEN (metrics->>'trained_tokens')::double precision END), 0) AS n FROM training_jobs")
            tokens.add_metric([], cur.fetchone()["n"])
            cur.execute("SELECT id, (metrics->>'tokens_per_second')::double precision AS speed FROM training_jobs"
                        " WHERE status = 'running' AND jsonb_typeof(metrics->'tokens_per_second') = 'number'")
            for row in cur.fetchall():
                speed.add_metric([str(row["id"])], row["speed"])
        return [counts, durations, tokens, speed]


class PoolCollector:
    """This process's database connection pool: its size, connections in use, waits and timeouts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        """Yield the pool's figures as they are now."""
        stats = self.db.stats
        yield GaugeMetricFamily("clara_database_pool_size", "PostgreSQL connections this API process may open.",
                                value=self.db.max_connections)
        yield GaugeMetricFamily("clara_database_pool_in_use", "Pooled connections checked out now.",
                                value=stats.in_use)
        yield CounterMetricFamily("clara_database_pool_waits", "Checkouts that found every connection in use "
                                  "and waited for one.", value=stats.waits)
        yield CounterMetricFamily("clara_database_pool_timeouts", "Checkouts that waited CLARA_DATABASE_POOL_TIMEOUT "
                                  "in vain and answered 503 database_busy.", value=stats.timeouts)


def _durations(cur: Any, table: str) -> list[dict[str, Any]]:
    """Cumulative bucket counts, count and sum of ended jobs' run times, computed in PostgreSQL."""
    buckets = ", ".join(f"count(*) FILTER (WHERE seconds <= {le}) AS le_{le}" for le in DURATION_BUCKETS)
    cur.execute(
        f"SELECT status, count(*) AS n, coalesce(sum(seconds), 0) AS total, {buckets} FROM"
        f" (SELECT status, extract(epoch FROM finished_at - started_at) AS seconds FROM {table}"
        "  WHERE finished_at IS NOT NULL AND started_at IS NOT NULL) ended GROUP BY status")
    return [dict(row) for row in cur.fetchall()]

