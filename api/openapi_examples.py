"""Examples in /api/openapi.json: each schema's own (its Meta.example), copied to the routes that use it, and
error bodies in Clara's shape for the routes' documented errors."""

from __future__ import annotations

import copy
from typing import Any

from apispec import BasePlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
from flask_smorest.pagination import PaginationMetadataSchema

# Ids the examples share, so that a job, its events and its errors tell one story.
JOB_ID = "3f6d2a9e-8b1c-4e57-9a0d-2c7b5e4f1a86"
PARENT_JOB_ID = "c1a7e3b2-5d94-4f08-b6e1-7a2d9c3f5e40"
DATASET_ID = "9b2e4c71-0f3a-4d8e-a5b6-1c9d7e2f4a03"
CREATED_AT = "2025-03-14T09:26:53.589793+00:00"
STARTED_AT = "2025-03-14T09:27:02.114210+00:00"
FINISHED_AT = "2025-03-14T09:41:37.902381+00:00"
TOKEN = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI3IiwidHlwZSI6ImFjY2VzcyJ9.4pVb0mG1V6cQ9xq2c8yJ3tH5wK7dL0sN"

# flask-smorest registers this schema of its own; Clara paginates with cursors and never answers it.
LIBRARY_EXAMPLES: dict[type, dict[str, Any]] = {
    PaginationMetadataSchema: {"total": 42, "total_pages": 3, "first_page": 1, "last_page": 3, "page": 2,
                               "previous_page": 1, "next_page": 3},
}
NOT_FOUND = {
    "job_id": ("job_not_found", f"No training job {JOB_ID}."),
    "dataset_id": ("dataset_not_found", f"No dataset {DATASET_ID}."),
    "user_id": ("user_not_found", "No user 7."),
}


def error_example(code: str, message: str, **details: Any) -> dict[str, Any]:
    """An error body as Clara answers it."""
    return {"error": {"code": code, "message": message, "details": details}}


def field_error(field: str, problem: str) -> dict[str, Any]:
    """A validation_error naming one field, worded as the API words it."""
    return error_example("validation_error", f"Invalid request. {field}: {problem}", fields={field: [problem]})


def forbidden(*roles: str) -> dict[str, Any]:
    """The 403 of a route that needs one of these roles."""
    return error_example("forbidden", f"This action needs one of the roles: {', '.join(roles)}.")


def not_found(path: str) -> dict[str, Any]:
    """The 404 of a route, for the first id its path names."""
    for name, (code, message) in NOT_FOUND.items():
        if "{" + name + "}" in path:
            return error_example(code, message)
    return error_example("not_found", "No such record.")


def schema_example(schema: Any) -> Any:
    """The example a marshmallow schema declares in its own Meta (not an inherited one), or None."""
    if schema is None:
        return None
    cls = resolve_schema_cls(schema)
    if cls in LIBRARY_EXAMPLES:
        return LIBRARY_EXAMPLES[cls]
    meta = vars(cls).get("Meta")
    return copy.deepcopy(getattr(meta, "example", None))


class SchemaExamplesPlugin(BasePlugin):
    """Put each schema's Meta.example into its component, and into the bodies that refer to it without one."""

    def init_spec(self, spec: Any) -> None:
        """Keep the spec, to read the components the routes refer to."""
        self.spec = spec

    def schema_helper(self, name: str, definition: dict, schema: Any = None, **kwargs: Any) -> dict | None:
        """The component's example, from the schema's Meta."""
        example = schema_example(schema)
        return None if example is None else {"example": example}

    def operation_helper(self, path: str | None = None, operations: dict | None = None, **kwargs: Any) -> None:
        """A request or success body that refers to a schema shows its example; each error needs its own."""
        for operation in (operations or {}).values():
            successes = [response for status, response in operation.get("responses", {}).items()
                         if str(status).isdigit() and int(status) < 400]
            for part in [operation.get("requestBody") or {}, *successes]:
                for media in part.get("content", {}).values() if isinstance(part, dict) else ():
                    self._copy_example(media)

    def _copy_example(self, media: dict[str, Any]) -> None:
        schema = media.get("schema")
        ref = schema.get("$ref", "") if isinstance(schema, dict) else ""
        target = self.spec.components.schemas.get(ref.rsplit("/", 1)[-1]) if ref else None
        if target and "example" in target and "example" not in media and "examples" not in media:
            media["example"] = copy.deepcopy(target["example"])
