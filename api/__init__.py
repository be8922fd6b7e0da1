"""Clara's HTTP API: the app factory."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import redis
from flask import Flask, Response, current_app, request
from werkzeug.middleware.proxy_fix import ProxyFix

import structured_logs
from api import audit, datasets, docs, health, plots, prometheus, sessions, streams, training, users
from api.errors import ApiError, ClaraApi, register_error_handlers
from auth.tokens import configure_jwt
from auth.users import bootstrap_admin
from records import migrations
from records.db import Database, DatabaseUnavailable
from settings import Settings, configure_logging, load
from tasks import make_celery

logger = logging.getLogger(__name__)

_BODY_METHODS = ("POST", "PUT", "PATCH")
# These answer without the schema: the docs, liveness, and /metrics, which reports PostgreSQL as down itself.
_NO_DATABASE_PATHS = ("/health", "/ready", "/api/openapi.json", "/metrics")
_NO_DATABASE_PREFIX = "/api/docs"
UPLOAD_PATH = "/api/datasets/upload"
# No request schema nests deeper than a few levels; metadata is free-form, so leave it room.
MAX_JSON_DEPTH = 32
# Every response is JSON or a download: nothing may run, be framed or leak where it came from.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
CORS_METHODS = "GET, POST, PATCH, DELETE"
CORS_HEADERS = "Authorization, Content-Type"
CORS_EXPOSED = "Retry-After, Content-Disposition"
CORS_MAX_AGE = "600"


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    """Build the API from settings: CLARA_* variables, overridden by `config` (a mapping or Settings)."""
    settings = config if isinstance(config, Settings) else load(config)
    configure_logging(settings)
    app = Flask("clara", static_folder=None)
    if settings.trusted_proxies:
        # Login limits and the loopback rule of /metrics go by the client's address, which behind a proxy is
        # the proxy's unless its X-Forwarded-For is believed; only as many hops as there are proxies.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        API_TITLE="Clara",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        # Every route needs a bearer token unless its own documentation says otherwise.
        API_SPEC_OPTIONS={"security": [{"bearerAuth": []}]},
        # Swagger UI at /api/docs, with its files served by the API itself: Clara often runs offline.
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=docs.ASSETS_URL,
    )
    app.extensions["clara_settings"] = settings
    app.extensions["clara_db"] = Database(settings.database_url, max_connections=settings.database_pool_size,
                                          pool_timeout=settings.database_pool_timeout)
    app.extensions["clara_redis"] = redis.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30)
    app.extensions["clara_celery"] = make_celery(settings, set_as_current=False)

    api = ClaraApi(app)
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    configure_jwt(app, settings)
    register_error_handlers(app)
    for module in (sessions, users, training, datasets, audit, health):
        api.register_blueprint(module.blp)
    api.register_blueprint(plots.blp)
    api.register_blueprint(streams.blp)
    # Not in the OpenAPI document: Swagger UI's files and Prometheus' /metrics.
    for module in (docs, prometheus):
        app.register_blueprint(module.blp)

    app.extensions["clara_schema_ready"] = _prepare_database(app)
    app.before_request(_before_request)
    # A request's job and user must not tag what the thread logs after it.
    app.teardown_request(lambda _error: structured_logs.clear())
    app.after_request(_security_headers)
    app.after_request(_cors_headers)
    return app


def _security_headers(response: Response) -> Response:
    """Add the headers every API response carries; tokens and private data are never cached."""
    response.headers.update(SECURITY_HEADERS)
    if "Authorization" in request.headers or request.path.startswith("/api/auth/"):
        response.headers["Cache-Control"] = "no-store"
        response.headers.pop("Expires", None)
    hsts = current_app.extensions["clara_settings"].hsts_seconds
    if hsts:
        response.headers["Strict-Transport-Security"] = f"max-age={hsts}; includeSubDomains"
    return response


def _cors_headers(response: Response) -> Response:
    """Let the configured browser origins call the API; any other origin gets no CORS header at all."""
    allowed = current_app.extensions["clara_settings"].cors_origins
    if not allowed:
        return response
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if not origin or (origin not in allowed and "*" not in allowed):
        return response
    # Tokens travel in the Authorization header, never in cookies, so credentials are not allowed.
    response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
    response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
    return response


def json_body_problem(body: bytes) -> str | None:
    """Why a JSON body cannot be taken, or None; checked before any view, as the parser raises more than it says.

    json.loads raises RecursionError on deeply nested arrays and ValueError on integers of more than 4,300
    digits, neither of which webargs turns into a 400; a body nested just under the parser's limit would
    still exhaust the stack in the schemas, so nesting is capped well below it.
    """
    try:
        value = json.loads(body)
    except RecursionError:
        return f"nested more than {MAX_JSON_DEPTH} levels deep"
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, or an over-long integer.
        return str(exc).split("\n", 1)[0][:200]
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            return f"nested more than {MAX_JSON_DEPTH} levels deep"
        if isinstance(item, dict):
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
    return None


def _prepare_database(app: Flask) -> bool:
    """Apply migrations and create the first admin; False when PostgreSQL is not reachable yet."""
    db = app.extensions["clara_db"]
    settings = app.extensions["clara_settings"]
    try:
        migrations.apply(db)
        if settings.bootstrap_admin_password:
            bootstrap_admin(db, settings.bootstrap_admin_password)
    except DatabaseUnavailable as exc:
        logger.warning("Database not ready at start (%s); will retry on the next request.", exc)
        return False
    return True


def _before_request() -> None:
    """Tag log lines with the job, require JSON bodies, and finish database set-up once PostgreSQL is back."""
    structured_logs.clear()
    view_args = request.view_args or {}
    structured_logs.set_job(view_args.get("job_id") or view_args.get("dataset_id"))
    if request.path == UPLOAD_PATH:
        # Only this route takes files, and larger bodies than any JSON request.
        request.max_content_length = current_app.extensions["clara_settings"].max_upload_bytes
    elif request.method in _BODY_METHODS and request.content_length and not request.is_json:
        raise ApiError(415, "The request body must be JSON (Content-Type: application/json).",
                       "unsupported_media_type")
    elif request.method in _BODY_METHODS and request.content_length:
        problem = json_body_problem(request.get_data(cache=True))
        if problem:
            raise ApiError(400, f"The request body is not valid JSON: {problem}.", "invalid_json")
    needs_database = request.path not in _NO_DATABASE_PATHS and not request.path.startswith(_NO_DATABASE_PREFIX)
    if not current_app.extensions["clara_schema_ready"] and needs_database:
        if not _prepare_database(current_app):
            raise DatabaseUnavailable("PostgreSQL is unavailable")
        current_app.extensions["clara_schema_ready"] = True
