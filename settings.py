"""Clara's settings: one object of defaults, overridden by CLARA_* environment variables.

Every field below can be set as CLARA_<FIELD NAME IN CAPITALS>, for example
CLARA_DATABASE_URL or CLARA_GPU_IDS. Tests and tools pass overrides as a mapping.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structured_logs
from structured_logs import LOG_FORMATS

ENVIRONMENTS = ("development", "production", "testing")
# A default that is published in the source code is no secret: production refuses it.
DEVELOPMENT_SECRET = "clara-development-secret-do-not-use-in-production"
MIN_SECRET_LENGTH = 32
# Passwords the API stores (user creation, changes, resets, the bootstrap admin) are at least this long.
MIN_PASSWORD_LENGTH = 12
PREFIX = "CLARA_"


class SettingsError(ValueError):
    """Raised when settings are invalid; lists every problem at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("Invalid Clara settings: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    """Every setting Clara reads, with its default."""

    env: str = "development"
    """development, production or testing; production refuses insecure defaults."""
    secret_key: str = DEVELOPMENT_SECRET
    """Signs JWTs (HS256); only the API needs it. At least 32 characters and not the default in production."""
    database_url: str = "postgresql://postgres@127.0.0.1:5432/clara"
    """PostgreSQL, the system of record for users, jobs and events."""
    database_pool_size: int = 8
    """PostgreSQL connections per API process; under gunicorn at least --threads, as each worker has its own pool."""
    database_pool_timeout: float = 10.0
    """Seconds a request waits for a free pooled connection before it answers 503 database_busy."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis: Celery broker, result backend and failed-login counters (revocations live in PostgreSQL)."""
    api_host: str = "127.0.0.1"
    """Address `python -m api` listens on."""
    api_port: int = 45680
    """Port `python -m api` listens on."""
    data_dir: Path = Path("var/data")
    """Training datasets; dataset_path in a request is relative to it. Shared storage across hosts."""
    models_dir: Path = Path("var/models")
    """Local base models; base_model may name a directory in it. Shared storage across hosts."""
    output_dir: Path = Path("var/outputs")
    """Adapters are written to <output_dir>/<job id>/. Shared storage across hosts."""
    checkpoints_dir: Path = Path("var/checkpoints")
    """Checkpoints of running jobs, in <checkpoints_dir>/<job id>/. Shared storage, so any host can resume."""
    cache_dir: Path = Path("var/cache")
    """Encoded datasets, reused while data, tokenizer and settings match. Local to each host is fine."""
    token_cache_max_bytes: int = 20 * 2**30
    """Size the token cache (<cache_dir>/tokens) is pruned to after each training job, least recently used first."""
    allow_hub_models: bool = False
    """Accept a hub id from hub_model_allowlist as base_model when no local directory has that name; off by default."""
    hub_model_allowlist: tuple[str, ...] = ()
    """Hub ids (owner/name) jobs may train on when allow_hub_models is on; empty: none."""
    max_evaluations_per_run: int = 200
    """Evaluations one training run makes at most; a smaller eval_steps is raised to ceil(steps / this)."""
    max_checkpoints_per_run: int = 100
    """Checkpoints one training run saves at most; a smaller save_steps is raised to ceil(steps / this)."""
    bootstrap_admin_password: str = ""
    """When set and no user exists, the first start creates user admin with this password."""
    access_token_minutes: int = 15
    """Lifetime of access tokens."""
    refresh_token_days: int = 30
    """Lifetime of refresh tokens."""
    job_time_limit: int = 24 * 3600
    """Longest a training attempt may run, in seconds; then it saves a checkpoint and ends failed (time_limit)."""
    max_attempts: int = 3
    """Deliveries of one job before it ends failed."""
    lease_seconds: int = 60
    """Lease of a running attempt on its job, renewed every third of it; a lapsed lease frees the job."""
    reconcile_seconds: int = 60
    """How often each worker host re-enqueues jobs the broker lost; also how long a job is left alone first."""
    visibility_timeout: int = 0
    """Seconds before Redis hands an unacknowledged task to another worker; 0: job_time_limit + 3600."""
    max_concurrent_jobs: int = 1
    """Training jobs the GPU workers can run at once as deployed; /health reports it."""
    gpu_ids: tuple[str, ...] = ()
    """GPUs of this worker host; worker child i trains on gpu_ids[i % len]. Empty: CUDA_VISIBLE_DEVICES or CPU."""
    max_request_bytes: int = 1024 * 1024
    """Largest accepted request body."""
    max_dataset_bytes: int = 2 * 1024**3
    """Largest training file a job may name."""
    broker_timeout: float = 5.0
    """Seconds the API waits for the broker when it enqueues a job."""
    ready_timeout: float = 1.0
    """Seconds /ready waits for workers to answer."""
    log_level: str = "INFO"
    """Level of Clara's logs."""
    log_format: str = "text"
    """text, or json for one JSON object per line; either way lines about a job carry its id and user."""
    datasets_dir: Path = Path("var/datasets")
    """Built and uploaded datasets, one directory per dataset. Shared storage across hosts."""
    max_upload_bytes: int = 512 * 1024**2
    """Largest file POST /api/datasets/upload accepts."""
    source_database_url: str = ""
    """PostgreSQL holding the documents table that dataset builds read; empty means database_url."""
    documents_table: str = "documents"
    """The documents table: documents(id, title, content, metadata, created_at)."""
    documents_columns: str = ""
    """Other column names for an existing schema, as id=doc_id,title=name,content=body,... (empty: the defaults)."""
    chroma_path: Path = Path("var/chroma")
    """Directory of the embedded ChromaDB that dataset builds query."""
    chroma_url: str = ""
    """A ChromaDB server (http://host:port) to use instead of the embedded one."""
    neo4j_uri: str = ""
    """Neo4j (bolt:// or neo4j://) for neo4j dataset sources; empty means not configured."""
    neo4j_user: str = "neo4j"
    """Neo4j user."""
    neo4j_password: str = ""
    """Neo4j password."""
    dataset_batch_size: int = 1000
    """Documents a dataset build handles at a time; bounds its memory."""
    max_record_bytes: int = 1024**2
    """Largest single record (an upload's line or row, or a build's rendered record), in bytes of UTF-8 text."""
    max_upload_decompressed_bytes: int = 2 * 1024**3
    """Most bytes an uploaded Parquet file's column chunks may decode to, by its footer; more answer 422."""
    dataset_time_limit: float = 6 * 3600
    """Longest a dataset build or upload job may run, in seconds; then it ends failed (time_limit)."""
    csv_escape_formulas: bool = True
    """Prefix CSV export cells starting with =, +, -, @, tab or CR with a quote, so spreadsheets show them as text."""
    source_allowlist: tuple[str, ...] = ()
    """What builds may read, as postgres:<table>,chroma:<collection>,neo4j:<label>; empty: no restriction."""
    flower_basic_auth: str = ""
    """user:password for Flower; `make flower` refuses to start without it."""
    max_active_jobs_per_user: int = 10
    """Training jobs one user (admins too) may have pending, queued or running; more answer 409 quota_exceeded."""
    max_active_datasets_per_user: int = 5
    """Dataset builds and uploads one user (admins too) may have pending, queued or running; more answer 409."""
    storage_quota_bytes_per_user: int = 200 * 2**30
    """Bytes one user's datasets, uploads and adapters may take; at or over it new ones answer 409 quota_exceeded."""
    max_downloads_per_user: int = 2
    """Adapter downloads one user may have in progress at once; more answer 429 too_many_downloads."""
    checkpoint_retention_hours: int = 168
    """Hours a finished job's checkpoints are kept before the reconciler deletes them; the adapter is kept."""
    max_plot_points: int = 1000
    """Training-loss points /metrics and loss.png read at most, evenly spaced by step; the last is always kept."""
    submit_sample_records: int = 1000
    """Records of a dataset checked when a job is submitted; the worker checks the whole file before training."""
    login_max_failures_per_user: int = 10
    """Failed logins for one username within the window before its logins answer 429."""
    login_max_failures_per_address: int = 50
    """Failed logins from one client address within the window before its logins answer 429."""
    login_failure_window_seconds: int = 900
    """How long failed logins are counted, from the first failure."""
    trusted_proxies: int = 0
    """Reverse proxies in front of the API whose X-Forwarded-For and -Proto are believed; 0 believes none."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser (exact, e.g. https://clara.example.org); empty: no CORS."""
    hsts_seconds: int = 0
    """max-age of Strict-Transport-Security; 0 sends none. Set it only when clients reach the API over HTTPS."""
    stream_max_seconds: int = 300
    """Longest one Server-Sent Events stream stays open; clients reconnect with Last-Event-ID and lose nothing."""
    max_streams_per_process: int = 2
    """Event streams one API process serves at once, each holding a thread; more answer 503 streams_busy."""
    max_streams_per_user: int = 2
    """Event streams one user may hold open at once across all API processes (counted in Redis); more answer 429."""
    ready_cache_seconds: float = 5.0
    """How long an API process reuses its last /ready result, so probes cannot make it broadcast to the workers."""
    metrics_token: str = ""
    """Bearer token GET /metrics requires; empty: /metrics answers only requests from loopback addresses."""
    worker_metrics_port: int = 0
    """Port a worker's main process serves its own /metrics on; 0: none. Each worker on one host needs its own."""
    worker_metrics_address: str = "127.0.0.1"
    """Address a worker's /metrics listens on; any other than loopback needs CLARA_METRICS_TOKEN in production."""

    @property
    def is_production(self) -> bool:
        """Whether this is a production deployment."""
        return self.env == "production"

    def problems(self) -> list[str]:
        """Return every problem with these settings, empty when they are sound."""
        problems = []
        if self.env not in ENVIRONMENTS:
            problems.append(f"CLARA_ENV must be one of {', '.join(ENVIRONMENTS)}, not {self.env!r}")
        if self.log_format not in LOG_FORMATS:
            problems.append(f"CLARA_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}")
        if self.is_production:
            if self.bootstrap_admin_password and len(self.bootstrap_admin_password) < MIN_PASSWORD_LENGTH:
                problems.append(f"CLARA_BOOTSTRAP_ADMIN_PASSWORD must be at least {MIN_PASSWORD_LENGTH} characters"
                                " in production")
            if self.flower_basic_auth and ":" not in self.flower_basic_auth:
                problems.append("CLARA_FLOWER_BASIC_AUTH must look like user:password")
            if "*" in self.cors_origins:
                problems.append("CLARA_CORS_ORIGINS must name origins in production, not '*'")
            if self.worker_metrics_port and not self.metrics_token and not is_loopback(self.worker_metrics_address):
                # Without the token only loopback clients are answered, so such a bind is a mistake, or an opening.
                problems.append("CLARA_WORKER_METRICS_ADDRESS other than loopback needs CLARA_METRICS_TOKEN"
                                " in production")
        for name in ("api_port", "access_token_minutes", "refresh_token_days", "job_time_limit",
                     "max_attempts", "lease_seconds", "max_concurrent_jobs", "max_request_bytes",
                     "max_dataset_bytes", "max_upload_bytes", "dataset_batch_size", "max_active_jobs_per_user",
                     "max_active_datasets_per_user", "login_max_failures_per_user",
                     "login_max_failures_per_address", "login_failure_window_seconds", "token_cache_max_bytes",
                     "max_streams_per_process", "storage_quota_bytes_per_user", "max_downloads_per_user",
                     "checkpoint_retention_hours", "max_plot_points", "submit_sample_records",
                     "max_evaluations_per_run", "max_checkpoints_per_run"):
            if getattr(self, name) <= 0:
                problems.append(f"CLARA_{name.upper()} must be positive")
        for origin in self.cors_origins:
            scheme, _, rest = origin.partition("://")
            if origin != "*" and (scheme not in ("http", "https") or not rest or "/" in rest):
                problems.append(f"CLARA_CORS_ORIGINS entries must look like https://host[:port], not {origin!r}")
        if not 0 <= self.worker_metrics_port <= 65535:
            problems.append("CLARA_WORKER_METRICS_PORT must be a port number, or 0 for none")
        for name in ("max_record_bytes", "max_upload_decompressed_bytes", "dataset_time_limit"):
            if getattr(self, name) <= 0:
                problems.append(f"CLARA_{name.upper()} must be positive")
        for entry in self.source_allowlist:
            kind, _, name = entry.partition(":")
            if kind not in ("postgres", "chroma", "neo4j") or not name.strip():
                problems.append(f"CLARA_SOURCE_ALLOWLIST entries must look like postgres:<table>, "
                                f"chroma:<collection> or neo4j:<label>, not {entry!r}")
        if self.stream_max_seconds <= 0:
            problems.append("CLARA_STREAM_MAX_SECONDS must be positive")
        if not 0 <= self.trusted_proxies <= 10:
            problems.append("CLARA_TRUSTED_PROXIES must be the number of proxies in front of the API, 0 to 10")
        if self.hsts_seconds < 0:
            problems.append("CLARA_HSTS_SECONDS must not be negative")
        if self.checkpoints_dir == self.output_dir:
            # Checkpoint retention deletes <checkpoints_dir>/<job id>/, which must never be the adapter.
            problems.append("CLARA_CHECKPOINTS_DIR must differ from CLARA_OUTPUT_DIR")
        if self.reconcile_seconds <= 0:
            problems.append("CLARA_RECONCILE_SECONDS must be positive")
        if self.visibility_timeout < 0:
            problems.append("CLARA_VISIBILITY_TIMEOUT must not be negative")
        elif 0 < self.visibility_timeout <= 2 * self.lease_seconds:
            # A delivery that finds a live lease waits up to a lease in the broker; past the visibility timeout
            # Redis would hand that waiting task out again and again (kombu#337).
            problems.append("CLARA_VISIBILITY_TIMEOUT must be more than twice CLARA_LEASE_SECONDS")
        for name in ("broker_timeout", "ready_timeout", "database_pool_timeout", "database_pool_size",
                     "max_streams_per_user"):
            if getattr(self, name) <= 0:
                problems.append(f"CLARA_{name.upper()} must be positive")
        if self.ready_cache_seconds < 0:
            problems.append("CLARA_READY_CACHE_SECONDS must not be negative")
        return problems


    def api_problems(self) -> list[str]:
        """Problems only the API has, as it signs tokens and listens on api_host; workers and Flower never do."""
        problems = []
        if self.is_production:
            if not self.secret_key or self.secret_key == DEVELOPMENT_SECRET:
                problems.append("CLARA_SECRET_KEY must be set to a secret of your own in production")
            elif len(self.secret_key) < MIN_SECRET_LENGTH:
                problems.append(f"CLARA_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters in production")
        elif not self.secret_key:
            problems.append("CLARA_SECRET_KEY must not be empty")
        elif self.env == "development" and self.secret_key == DEVELOPMENT_SECRET and not is_loopback(self.api_host):
            # Anyone who can reach the API could sign themselves an admin token with the published secret.
            problems.append("CLARA_API_HOST other than loopback needs a CLARA_SECRET_KEY of your own, even in"
                            " development: the default one is published")
        return problems


def is_loopback(address: str) -> bool:
    """Whether a listening address is localhost, 127.0.0.0/8 or ::1."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    """Turn an environment string (or a test's value) into the field's type."""
    if not isinstance(raw, str):
        return tuple(raw) if kind == tuple[str, ...] else raw
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"CLARA_{name.upper()} must be true or false, not {raw!r}")
    if kind is int or kind is float:
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"CLARA_{name.upper()} must be a number, not {raw!r}") from None
    if kind is Path:
        return Path(raw)
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def load(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from defaults, CLARA_* variables, then overrides; raise SettingsError if unsound."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    hints = typing.get_type_hints(Settings)
    known = {f.name for f in dataclasses.fields(Settings)}
    problems = [f"unknown setting {key!r}" for key in overrides if key not in known]
    values: dict[str, Any] = {}
    for name in known:
        raw = overrides.get(name, environ.get(PREFIX + name.upper()))
        if raw is None:
            continue
        try:
            values[name] = _coerce(name, raw, hints[name])
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError(problems)
    settings = Settings(**values)
    settings = dataclasses.replace(
        settings,
        data_dir=settings.data_dir.resolve(),
        models_dir=settings.models_dir.resolve(),
        output_dir=settings.output_dir.resolve(),
        checkpoints_dir=settings.checkpoints_dir.resolve(),
        cache_dir=settings.cache_dir.resolve(),
        datasets_dir=settings.datasets_dir.resolve(),
        chroma_path=settings.chroma_path.resolve(),
        source_database_url=settings.source_database_url or settings.database_url,
        log_level=settings.log_level.upper(),
    )
    problems = settings.problems()
    if problems:
        raise SettingsError(problems)
    return settings


def configure_logging(settings: Settings) -> None:
    """Send Clara's logs to standard error at the configured level and format, once per process."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(structured_logs.handler(settings.log_format))
    root.setLevel(settings.log_level)
