"""One JSON error shape for every failure: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
import marshmallow as ma
import redis.exceptions
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from records.db import DatabaseUnavailable

logger = logging.getLogger(__name__)

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error a view raises to answer with a given status, code and message."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.details = details or {}


class ErrorBodySchema(ma.Schema):
    """The inside of every error response."""

    code = ma.fields.String(metadata={"example": "validation_error"})
    message = ma.fields.String(metadata={"example": "Invalid field hyperparameters.lora_rank: Must be at least 1."})
    details = ma.fields.Dict(metadata={"example": {"fields": {"hyperparameters.lora_rank": ["Must be at least 1."]}}})


class ErrorSchema(ma.Schema):
    """Every error Clara answers with."""

    error = ma.fields.Nested(ErrorBodySchema)


def error_response(status: int, message: str, code: str | None = None,
                   details: dict[str, Any] | None = None) -> ResponseReturnValue:
    """Build the JSON error response."""
    body = {"code": code or CODES.get(status, "error"), "message": message, "details": details or {}}
    return jsonify(error=body), status


def flatten_messages(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested messages into {"a.b": [...]} so each field is named in full."""
    if isinstance(messages, dict):
        flat: dict[str, list[str]] = {}
        for key, value in messages.items():
            name = str(key) if key != "_schema" else ""
            path = f"{prefix}.{name}" if prefix and name else (prefix or name or "body")
            flat.update(flatten_messages(value, path))
        return flat
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return {prefix or "body": list(messages)}
    if isinstance(messages, list):
        flat = {}
        for index, value in enumerate(messages):
            flat.update(flatten_messages(value, f"{prefix}[{index}]"))
        return flat
    return {prefix or "body": [str(messages)]}


def _validation_response(status: int, messages: dict[str, Any]) -> ResponseReturnValue:
    """Answer a request whose body or query failed validation, naming every bad field."""
    if status == 400 and messages.get("json") == ["Invalid JSON body."]:
        return error_response(400, "The request body is not valid JSON.", "invalid_json")
    fields: dict[str, list[str]] = {}
    for location_messages in messages.values():
        for name, problems in flatten_messages(location_messages).items():
            fields[name] = problems
    summary = " ".join(f"{name}: {' '.join(problems)}" for name, problems in fields.items())
    return error_response(status, f"Invalid request. {summary}", "validation_error", {"fields": fields})


class ClaraApi(Api):
    """flask-smorest's Api answering every HTTP error in Clara's shape."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException) -> ResponseReturnValue:
        """Answer an HTTP error, including webargs' validation errors, as Clara's JSON error."""
        data = getattr(error, "data", None) or {}
        messages = data.get("messages") or data.get("errors")
        status = error.code or 500
        if isinstance(messages, dict) and status in (400, 422):
            return _validation_response(status, messages)
        if status >= 500:
            logger.error("Request failed with HTTP %s: %s", status, error.description)
            return error_response(status, "The server could not complete the request.")
        return error_response(status, data.get("message") or error.description or error.name)


def register_error_handlers(app: Flask) -> None:
    """Answer Clara's own errors and unavailable services in the JSON shape, never as HTML."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> ResponseReturnValue:
        return error_response(error.status, error.message, error.code, error.details)

    @app.errorhandler(DatabaseUnavailable)
    def _database_down(error: DatabaseUnavailable) -> ResponseReturnValue:
        logger.warning("Answering 503: %s", error)
        return error_response(503, "The database is unavailable; try again shortly.", "database_unavailable")

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _redis_down(error: Exception) -> ResponseReturnValue:
        logger.warning("Answering 503: Redis is unavailable (%s).", error)
        return error_response(503, "Redis is unavailable; try again shortly.", "redis_unavailable")

    @app.errorhandler(kombu.exceptions.OperationalError)
    def _broker_down(error: Exception) -> ResponseReturnValue:
        logger.warning("Answering 503: the broker is unavailable (%s).", error)
        return error_response(503, "The job queue is unavailable; try again shortly.", "broker_unavailable")

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> ResponseReturnValue:
        if isinstance(error, HTTPException):
            return app.extensions["clara_api"].handle_http_exception(error)
        logger.exception("Unexpected error while answering a request.")
        return error_response(500, "The server could not complete the request.")
