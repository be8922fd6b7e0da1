"""Who may do what: every route of the OpenAPI document x every role x their own and another user's object.

The route list comes from /api/openapi.json, so a new route without a row in MATRIX fails
test_every_documented_route_has_a_matrix_row. A cell is the exact status expected: 401 without a token,
403 when the role may not do this at all, 404 when the object is someone else's and the role may not even
see it, and otherwise the status of the action itself (409 where a fresh, pending object has nothing to
download yet: the caller got past the authorisation check).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from auth.tokens import issue_tokens
from auth.users import create_user
from records import datasets, jobs
from records.jobs import DATASETS, TRAINING
from tests.integration.conftest import PASSWORD

ROLES = ("admin", "trainer", "analyst")
JOB = {"job_name": "faq", "base_model": "tiny-llama", "dataset_path": "demo-train.jsonl",
       "hyperparameters": {"max_steps": 5}}
BUILD = {"name": "all", "sources": [{"type": "postgres"}]}


def _same(status: int | tuple[int, ...]) -> dict[str, Any]:
    """Every role gets this status, on its own object and on another's."""
    return {role: status for role in ROLES}


def _upload_body(_: str) -> dict[str, Any]:
    data = {"file": (io.BytesIO(b'{"text": "Wohnsitz anmelden."}\n{"text": "Ausweis beantragen."}\n'), "a.jsonl")}
    return {"data": data, "content_type": "multipart/form-data"}


# (method, path): (object kind, request body builder, {role: status or {"own": status, "other": status}})
MATRIX: dict[tuple[str, str], tuple[str | None, Callable[[str], dict[str, Any]] | None, dict[str, Any]]] = {
    ("POST", "/api/auth/login"): (None, None, _same(200)),
    ("POST", "/api/auth/refresh"): (None, None, _same(200)),
    ("POST", "/api/auth/logout"): (None, None, _same(204)),
    ("GET", "/api/auth/me"): (None, None, _same(200)),
    # Everyone changes their own password (each role once: the World's users all have PASSWORD).
    ("POST", "/api/auth/password"): (None, lambda _: {"json": {"current_password": PASSWORD,
                                                               "new_password": "a-new-long-password-1"}},
                                     _same(200)),
    ("POST", "/api/users"): (None, lambda role: {"json": {"username": f"new-{role}-{uuid.uuid4().hex[:6]}",
                                                           "password": PASSWORD, "role": "analyst"}},
                             {"admin": 201, "trainer": 403, "analyst": 403}),
    ("GET", "/api/users"): (None, None, {"admin": 200, "trainer": 403, "analyst": 403}),
    # An admin's "own" user is themselves, and disabling oneself is refused.
    ("PATCH", "/api/users/{user_id}"): ("user", lambda _: {"json": {"disabled": True}},
                                        {"admin": {"own": 409, "other": 200}, "trainer": 403, "analyst": 403}),
    # Admins reset others' passwords; their own they change with POST /api/auth/password.
    ("POST", "/api/users/{user_id}/password"): ("user", lambda _: {"json": {"password": "a-new-long-password-1"}},
                                                {"admin": {"own": 409, "other": 204}, "trainer": 403,
                                                 "analyst": 403}),
    ("POST", "/api/training/jobs"): (None, lambda _: {"json": JOB}, {"admin": 202, "trainer": 202, "analyst": 403}),
    ("GET", "/api/training/jobs"): (None, None, _same(200)),
    ("GET", "/api/training/jobs/{job_id}"): (
        "job", None, {"admin": 200, "trainer": {"own": 200, "other": 404}, "analyst": 200}),
    ("DELETE", "/api/training/jobs/{job_id}"): (
        "job", None, {"admin": 200, "trainer": {"own": 200, "other": 404}, "analyst": 403}),
    ("GET", "/api/training/jobs/{job_id}/events"): (
        "job", None, {"admin": 200, "trainer": {"own": 200, "other": 404}, "analyst": 200}),
    # A stream of a job that has ended sends its events and closes at once.
    ("GET", "/api/training/jobs/{job_id}/events/stream"): (
        "ended_job", None, {"admin": 200, "trainer": {"own": 200, "other": 404}, "analyst": 200}),
    ("GET", "/api/training/jobs/{job_id}/checkpoints"): (
        "job", None, {"admin": 200, "trainer": {"own": 200, "other": 404}, "analyst": 200}),
    ("POST", "/api/training/jobs/{job_id}/cancel"): (
        "job", None, {"admin": 200, "trainer": {"own": 200, "other": 404}, "analyst": 403}),
    ("GET", "/api/training/jobs/{job_id}/adapter"): (
        "job", None, {"admin": 409, "trainer": {"own": 409, "other": 404}, "analyst": 409}),
    # A fresh job has no adapter to delete yet: past the authorisation check, 409.
    ("DELETE", "/api/training/jobs/{job_id}/adapter"): (
        "job", None, {"admin": 409, "trainer": {"own": 409, "other": 404}, "analyst": 403}),
    ("GET", "/api/training/jobs/{job_id}/metrics"): (
        "job", None, {"admin": 200, "trainer": {"own": 200, "other": 404}, "analyst": 200}),
    # A pending job has no loss to draw yet: 409 metrics_not_ready once the caller may see the job.
    ("GET", "/api/training/jobs/{job_id}/loss.png"): (
        "job", None, {"admin": 409, "trainer": {"own": 409, "other": 404}, "analyst": 409}),
    ("POST", "/api/datasets"): (None, lambda _: {"json": BUILD}, _same(202)),
    ("GET", "/api/datasets"): (None, None, _same(200)),
    ("GET", "/api/datasets/{dataset_id}"): ("dataset", None, _same(200)),
    ("DELETE", "/api/datasets/{dataset_id}"): (
        "dataset", None, {"admin": 204, "trainer": {"own": 204, "other": 403}, "analyst": {"own": 204, "other": 403}}),
    ("GET", "/api/datasets/{dataset_id}/events"): ("dataset", None, _same(200)),
    ("GET", "/api/datasets/{dataset_id}/events/stream"): ("ended_dataset", None, _same(200)),
    ("GET", "/api/datasets/{dataset_id}/preview"): ("dataset", None, _same(409)),
    ("GET", "/api/datasets/{dataset_id}/files/{file_format}"): ("dataset", None, _same(409)),
    ("POST", "/api/datasets/{dataset_id}/cancel"): (
        "dataset", None, {"admin": 200, "trainer": {"own": 200, "other": 403}, "analyst": {"own": 200, "other": 403}}),
    ("POST", "/api/datasets/upload"): (None, _upload_body, _same(202)),
    ("GET", "/api/audit"): (None, None, {"admin": 200, "trainer": 403, "analyst": 403}),
    ("GET", "/health"): (None, None, _same(200)),
    # No worker runs in these tests, so readiness answers 503; what matters is that no token is needed.
    ("GET", "/ready"): (None, None, _same(503)),
}
PUBLIC = {("POST", "/api/auth/login"), ("GET", "/health"), ("GET", "/ready")}


def test_every_documented_route_has_a_matrix_row(client):
    spec = client.get("/api/openapi.json").get_json()
    documented = {(method.upper(), path) for path, operations in spec["paths"].items()
                  for method in operations if method != "parameters"}
    assert documented - set(MATRIX) == set(), "routes without an authorisation matrix row"
    assert set(MATRIX) - documented == set(), "matrix rows for routes that no longer exist"


def test_routes_without_security_in_the_document_are_exactly_the_public_ones(client):
    spec = client.get("/api/openapi.json").get_json()
    public = {(method.upper(), path) for path, operations in spec["paths"].items()
              for method, op in operations.items() if method != "parameters" and op.get("security") == []}
    assert public == PUBLIC


def test_every_status_of_the_matrix_is_documented(client):
    spec = client.get("/api/openapi.json").get_json()
    undocumented = []
    for (method, path), (_kind, _body, expected) in MATRIX.items():
        listed = set(spec["paths"][path][method.lower()]["responses"])
        statuses = {status for cell in expected.values() for status in (cell.values() if isinstance(cell, dict)
                                                                         else [cell])}
        undocumented += [f"{method} {path} {status}" for status in sorted(statuses) if str(status) not in listed]
    assert not undocumented, f"statuses the matrix expects but the document does not list: {undocumented}"


class World:
    """Users of each role plus another trainer, and fresh objects owned by any of them."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.db = app.extensions["clara_db"]
        self.users = {role: create_user(self.db, f"{role}-user", PASSWORD, role) for role in ROLES}
        self.users["other"] = create_user(self.db, "other-trainer", PASSWORD, "trainer")

    def tokens(self, who: str) -> dict[str, Any]:
        """A fresh token pair, so that a logout in one cell cannot affect the next."""
        with self.app.test_request_context():
            return issue_tokens(self.users[who])

    def make(self, kind: str, who: str) -> str:
        """A new object of this kind owned by `who`: a pending (or ended) job or dataset, or the user itself."""
        owner = self.users[who]["id"]
        if kind.startswith("ended_"):
            object_id = self.make(kind.removeprefix("ended_"), who)
            table = TRAINING if kind == "ended_job" else DATASETS
            with self.db.transaction() as cur:
                cur.execute(table.query("UPDATE {table} SET status = 'cancelled', finished_at = now() WHERE id = %s"),
                            (object_id,))
            return object_id
        if kind == "job":
            return str(jobs.create_job(self.db, job_name="m", trainer_type="lora", base_model="m",
                                       dataset_path="d.jsonl", hyperparameters={}, metadata={}, owner_id=owner)["id"])
        if kind == "dataset":
            return str(datasets.create_dataset(self.db, name="d", description="", kind="build", spec={},
                                               owner_id=owner)["id"])
        return str(owner)


def _path(template: str, kind: str | None, object_id: str | None) -> str:
    names = {"job": "{job_id}", "dataset": "{dataset_id}", "user": "{user_id}"}
    path = template.replace("{file_format}", "jsonl")
    return path.replace(names[kind.removeprefix("ended_")], object_id) if kind else path


def _cells(expected: dict[str, Any], kind: str | None) -> list[tuple[str, str, int]]:
    cells = []
    for role in ROLES:
        status = expected[role]
        for whose in (("own", "other") if kind else ("own",)):
            cells.append((role, whose, status[whose] if isinstance(status, dict) else status))
    return cells


@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda route: f"{route[0]} {route[1]}")
def test_authorization_matrix(app, route):
    method, template = route
    kind, body, expected = MATRIX[route]
    world = World(app)
    client = app.test_client()
    failures = []
    for role, whose, status in _cells(expected, kind):
        object_id = world.make(kind, role if whose == "own" else "other") if kind else None
        tokens = world.tokens(role)
        token = tokens["refresh_token"] if template == "/api/auth/refresh" else tokens["access_token"]
        kwargs = body(role) if body else {}
        if template == "/api/auth/login":
            kwargs = {"json": {"username": world.users[role]["username"], "password": PASSWORD}}
        response = client.open(_path(template, kind, object_id), method=method,
                               headers={"Authorization": f"Bearer {token}"}, **kwargs)
        if response.status_code != status:
            failures.append(f"{role} on {whose}: {response.status_code}, expected {status} "
                            f"({(response.get_json(silent=True) or {}).get('error')})")
    # Without a token: 401 everywhere but the public routes.
    object_id = world.make(kind, "other") if kind else None
    kwargs = body("anonymous") if body else {}
    if template == "/api/auth/login":
        kwargs = {"json": {"username": "nobody", "password": PASSWORD}}
    response = client.open(_path(template, kind, object_id), method=method, **kwargs)
    anonymous = expected["admin"] if route in PUBLIC and route != ("POST", "/api/auth/login") else 401
    if response.status_code != anonymous:
        failures.append(f"anonymous: {response.status_code}, expected {anonymous}")
    assert not failures, "\n".join(failures)
