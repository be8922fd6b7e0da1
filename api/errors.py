"""One JSON error shape for every failure: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import http
import logging
from typing import Any

import kombu.exceptions
import marshmallow as ma
import redis.exceptions
from apispec import BasePlugin
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from flask_smorest import Api
from flask_smorest.utils import prepare_response
from werkzeug.exceptions import HTTPException

from api.openapi_examples import SchemaExamplesPlugin, error_example, field_error, not_found
from records.db import DatabaseBusy, DatabaseUnavailable

logger = logging.getLogger(__name__)

# What a client is told to wait when this process has no free database connection.
BUSY_RETRY_SECONDS = 2

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
                 details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


class ErrorBodySchema(ma.Schema):
    """The inside of every error response."""

    class Meta:
        example = field_error("hyperparameters.lora_rank",
                              "Must be greater than or equal to 1 and less than or equal to 1024.")["error"]

    code = ma.fields.String(metadata={"example": "validation_error"})
    message = ma.fields.String(metadata={"example": "Invalid request. hyperparameters.lora_rank: Must be greater "
                                                    "than or equal to 1 and less than or equal to 1024."})
    details = ma.fields.Dict(metadata={"description": "fields names each bad field of a validation_error.",
                                       "example": {"fields": {"hyperparameters.lora_rank": [
                                           "Must be greater than or equal to 1 and less than or equal to 1024."]}}})


class ErrorSchema(ma.Schema):
    """Every error Clara answers with."""

    class Meta:
        example = field_error("hyperparameters.lora_rank",
                              "Must be greater than or equal to 1 and less than or equal to 1024.")

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


def _error_doc(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}, "example": example}}}


INTERNAL_ERROR = error_example("internal_error", "The server could not complete the request.")
# What the common errors answer; a 404's own example comes from the path.
COMMON_EXAMPLES = {
    "400": error_example("invalid_json", "The request body is not valid JSON."),
    "401": error_example("unauthorized", "Authentication required: Missing Authorization Header."),
    "415": error_example("unsupported_media_type", "The request body must be JSON (Content-Type: application/json)."),
    "503": error_example("database_unavailable", "The database is unavailable; try again shortly."),
}


class CommonErrorsPlugin(BasePlugin):
    """Document the errors every route of a kind can answer, and merge form fields into multipart bodies."""

    def init_spec(self, spec: Any) -> None:
        """Keep the spec, to read the schemas already registered in it."""
        self.spec = spec

    def operation_helper(self, path: str | None = None, operations: dict | None = None, **kwargs: Any) -> None:
        """Add 400, 401, 404, 415 and 503 where they apply, and move OpenAPI 2 style formData into the requestBody."""
        for operation in (operations or {}).values():
            responses = operation.setdefault("responses", {})
            content = operation.get("requestBody", {}).get("content", {})
            common = {
                "400": "application/json" in content and "The request body is not valid JSON.",
                "401": operation.get("security") != [] and ("The bearer token is missing, invalid, expired or "
                                                           "revoked, or its user is disabled."),
                "404": bool(path and "{" in path) and "No such record, or the caller may not see it.",
                "415": "application/json" in content and "The request body is not JSON.",
                "503": path != "/health" and ("PostgreSQL, Redis or the queue is unavailable, or every database "
                                              "connection of the API process is in use (database_busy, with "
                                              "Retry-After)."),
            }
            documented = {str(code) for code in responses}
            for code, description in common.items():
                if description and code not in documented:
                    example = not_found(path or "") if code == "404" else COMMON_EXAMPLES[code]
                    responses[code] = _error_doc(description, example)
            _merge_form_fields(operation, content, self.spec.components.schemas)


def _merge_form_fields(operation: dict, content: dict, schemas: dict[str, Any]) -> None:
    """flask-smorest documents form fields beside a file as `in: formData` parameters, which OpenAPI 3 lacks."""
    form = [p for p in operation.get("parameters", []) if isinstance(p, dict) and p.get("in") == "formData"]
    multipart = content.get("multipart/form-data")
    if not form or multipart is None:
        return
    operation["parameters"] = [p for p in operation["parameters"] if p not in form]
    if not operation["parameters"]:
        del operation["parameters"]
    files = multipart["schema"]
    if "$ref" in files:
        files = schemas[files["$ref"].rsplit("/", 1)[-1]]
    properties = {p["name"]: {**p["schema"], **({"description": p["description"]} if "description" in p else {})}
                  for p in form}
    multipart["schema"] = {"type": "object", "additionalProperties": False,
                           "properties": {**files.get("properties", {}), **properties},
                           "required": files.get("required", []) + [p["name"] for p in form if p.get("required")]}


class ClaraApi(Api):
    """flask-smorest's Api answering every HTTP error in Clara's shape."""

    ERROR_SCHEMA = ErrorSchema

    def _init_spec(self, **kwargs: Any) -> None:
        """Build the spec with the plugins that document the common errors and the schemas' examples."""
        plugins = [*kwargs.get("extra_plugins", ()), CommonErrorsPlugin(), SchemaExamplesPlugin()]
        super()._init_spec(**{**kwargs, "extra_plugins": plugins})

    def _register_responses(self) -> None:
        """flask-smorest's shared error responses, as it registers them but each with an example."""
        for status in http.HTTPStatus:
            if status >= 400:
                example = INTERNAL_ERROR if status >= 500 else error_example(
                    CODES.get(status, status.name.lower()), status.phrase + ".")
                self._register_error_response(status.name, status.phrase, example)
        self._register_error_response("DEFAULT_ERROR", "Default error response", INTERNAL_ERROR)

    def _register_error_response(self, name: str, description: str, example: dict[str, Any]) -> None:
        response = {"description": description, "schema": self.ERROR_SCHEMA, "example": example}
        prepare_response(response, self.spec, self.DEFAULT_RESPONSE_CONTENT_TYPE)
        self.spec.components.response(name, response, lazy=True)

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
        body, status = error_response(error.status, error.message, error.code, error.details)
        return body, status, error.headers

    @app.errorhandler(DatabaseUnavailable)
    def _database_down(error: DatabaseUnavailable) -> ResponseReturnValue:
        logger.warning("Answering 503: %s", error)
        return error_response(503, "The database is unavailable; try again shortly.", "database_unavailable")

    @app.errorhandler(DatabaseBusy)
    def _database_busy(error: DatabaseBusy) -> ResponseReturnValue:
        # This process is overloaded, PostgreSQL is not down: say so, and when to come back.
        logger.warning("Answering 503: %s.", error)
        body, status = error_response(503, "The server is busy: every database connection of this API process is "
                                           f"in use. Retry in {BUSY_RETRY_SECONDS} seconds.", "database_busy")
        return body, status, {"Retry-After": str(BUSY_RETRY_SECONDS)}

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
