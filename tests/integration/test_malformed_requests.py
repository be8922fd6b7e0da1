"""Bodies and headers that used to answer 500: each must answer 4xx, on every route that takes JSON."""

from __future__ import annotations

import uuid

import pytest

DEEP_ARRAYS = "[" * 100_000
LONG_INTEGER = "9" * 5000


def _json_routes(client) -> list[tuple[str, str]]:
    """(method, path) of every documented operation with a JSON request body, path ids filled in."""
    routes = []
    for path, item in client.get("/api/openapi.json").get_json()["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {}) if isinstance(operation, dict) else {}
            if method in ("post", "put", "patch", "delete") and "application/json" in content:
                filled = path.replace("{job_id}", str(uuid.uuid4())).replace("{dataset_id}", str(uuid.uuid4()))
                routes.append((method.upper(), filled.replace("{user_id}", "1")))
    return routes


@pytest.mark.parametrize("body,problem", [
    (DEEP_ARRAYS, "nested"),  # RecursionError in the JSON parser.
    ('{"job_name": ' + "[" * 950 + "]" * 950 + "}", "nested"),  # parses, but would exhaust the stack later.
    ('{"metadata": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}", "nested"),
    ('{"job_name": ' + LONG_INTEGER + "}", "4300"),  # ValueError: int() refuses more than 4,300 digits.
])
def test_every_json_route_answers_400_to_bodies_the_parser_chokes_on(client, admin, body, problem):
    routes = _json_routes(client)
    assert len(routes) >= 5
    for method, path in routes:
        response = client.open(path, method=method, data=body, headers={**admin, "Content-Type": "application/json"})
        assert response.status_code == 400, (method, path, response.status_code, response.get_data(as_text=True))
        error = response.get_json()["error"]
        assert error["code"] == "invalid_json" and problem in error["message"], (method, path, error)


def test_a_body_nested_within_the_limit_is_still_accepted(client, trainer):
    body = {"job_name": "nested", "base_model": "tiny-llama", "dataset_path": "demo-train.jsonl",
            "hyperparameters": {"max_steps": 1}, "metadata": {"a": {"b": {"c": {"d": [[1, 2], {"e": None}]}}}}}
    response = client.post("/api/training/jobs", json=body, headers=trainer)
    assert response.status_code == 202, response.get_json()


@pytest.mark.parametrize("query,headers", [
    ("?after=" + LONG_INTEGER, {}),
    ("", {"Last-Event-ID": LONG_INTEGER}),
])
def test_an_over_long_event_cursor_answers_422(client, admin, query, headers):
    for path in (f"/api/training/jobs/{uuid.uuid4()}/events/stream", f"/api/datasets/{uuid.uuid4()}/events/stream"):
        response = client.get(path + query, headers={**admin, **headers})
        assert response.status_code == 422, response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/api/training/jobs/{id}/events?after=", "/api/training/jobs?limit=",
                                  "/api/users?after=", "/api/audit?after="])
def test_over_long_integers_in_queries_answer_422(client, admin, path):
    response = client.get(path.replace("{id}", str(uuid.uuid4())) + LONG_INTEGER, headers=admin)
    assert response.status_code == 422, response.get_data(as_text=True)
