"""Fuzzing every route of /api/openapi.json with schemathesis: no 5xx, and every response as documented."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from auth.tokens import issue_tokens
from auth.users import create_user
from records.db import Database
from tests.integration.conftest import PASSWORD
from tests.integration.dataset_jobs import finish_upload

# Two generation modes times this many examples per operation: 25 operations give well over 1,000 requests.
EXAMPLES_PER_MODE = 24
MIN_REQUESTS = 1000
# Deletions and cancellations go last, so the known records are still there for the reads before them.
METHOD_ORDER = {"GET": 0, "POST": 1, "DELETE": 2}


@schemathesis.check
def status_code_listed(ctx: Any, response: Any, case: Any) -> bool | None:
    """The status code is listed for the operation, not only covered by the catch-all `default`."""
    listed = {str(code) for code in case.operation.definition.raw.get("responses", {})} - {"default"}
    if str(response.status_code) not in listed:
        raise AssertionError(f"{case.operation.label} answered {response.status_code}, which its documentation "
                             f"does not list (listed: {', '.join(sorted(listed))})")
    return None


CHECKS = [not_a_server_error, status_code_conformance, status_code_listed, content_type_conformance,
          response_schema_conformance]


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    """The event stream of the queued job closes after a second, as it would after CLARA_STREAM_MAX_SECONDS."""
    return {**settings_overrides, "stream_max_seconds": 1}


@pytest.fixture
def known_ids(app: Flask, db: Database, client, admin: dict[str, str],
              storage: dict[str, Path]) -> dict[str, list[str]]:
    """A queued job, a completed job with an adapter on disk and an uploaded dataset, for path parameters."""
    body = {"job_name": "fuzz", "base_model": "tiny-llama", "dataset_path": "demo-train.jsonl",
            "hyperparameters": {"max_steps": 1}}
    queued = client.post("/api/training/jobs", json=body, headers=admin)
    assert queued.status_code == 202, queued.get_json()
    done = client.post("/api/training/jobs", json=body, headers=admin).get_json()["id"]
    adapter = storage["outputs"] / done
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = 'completed', started_at = now(), finished_at = now(), "
                    "adapter_path = %s WHERE id = %s", (str(adapter), done))
    with (storage["data"] / "demo-train.jsonl").open("rb") as handle:
        uploaded = client.post("/api/datasets/upload", headers=admin, content_type="multipart/form-data",
                               data={"file": (handle, "demo-train.jsonl"), "name": "fuzz"})
    # A CPU worker stores the upload; here the test process plays it, so previews and files exist.
    stored = finish_upload(app, client, admin, uploaded)
    assert stored["status"] == "completed", stored
    return {"job_id": [queued.get_json()["id"], done], "dataset_id": [stored["id"]]}


@pytest.fixture
def tokens(app: Flask, db: Database) -> Callable[[], dict[str, Any]]:
    """Issue a fresh token pair for the fuzzing admin without a password hash per request."""
    user = create_user(db, "fuzz-admin", PASSWORD, "admin")

    def _issue() -> dict[str, Any]:
        with app.app_context():
            return issue_tokens(user)

    return _issue


def _auth_headers(operation: Any, tokens: Callable[[], dict[str, Any]], admin_token: str) -> dict[str, str]:
    """The bearer token an operation needs: a refresh token, a throwaway login for logout, else the admin's."""
    if operation.path == "/api/auth/refresh":
        return {"Authorization": f"Bearer {tokens()['refresh_token']}"}
    if operation.path == "/api/auth/logout":
        return {"Authorization": f"Bearer {tokens()['access_token']}"}
    return {"Authorization": f"Bearer {admin_token}"}


def _strategy(operation: Any, mode: GenerationMode, known_ids: dict[str, list[str]]) -> st.SearchStrategy:
    """Generated cases, half of them (where the path has ids) aimed at records that exist."""
    names = [parameter.name for parameter in operation.path_parameters]
    generated = operation.as_strategy(generation_mode=mode)
    fixed = {name: known_ids[name] for name in names if name in known_ids}
    if not fixed or mode is GenerationMode.NEGATIVE:
        return generated
    aimed = [operation.as_strategy(generation_mode=mode, path_parameters={name: value for name in fixed})
             for value in {value for values in fixed.values() for value in values}]
    return st.one_of(generated, *aimed)


def _operations(app: Flask) -> Iterator[Any]:
    """Every operation of the document, reads first."""
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    yield from sorted(operations, key=lambda op: (METHOD_ORDER.get(op.method.upper(), 1), op.path))


def _fuzz(operation: Any, mode: GenerationMode, known_ids: dict[str, list[str]], headers: Callable[[], dict],
          statuses: Counter[tuple[str, str, int]]) -> None:
    """Send one operation's generated cases and check each response; raises on the first failing case."""

    @given(case=_strategy(operation, mode, known_ids))
    @settings(max_examples=EXAMPLES_PER_MODE, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink],
              print_blob=False)
    def _check(case: Any) -> None:
        sent_headers = headers()
        response = case.call(headers=sent_headers)
        statuses[(operation.method.upper(), operation.path, response.status_code)] += 1
        # No worker runs here, so /ready answers its documented 503; the other checks still hold it to the document.
        checks = [check for check in CHECKS if operation.path != "/ready" or check is not not_a_server_error]
        case.validate_response(response, checks=checks, headers=sent_headers)

    _check()


def test_every_route_answers_as_documented(app: Flask, tokens, known_ids: dict[str, list[str]],
                                           caplog: pytest.LogCaptureFixture) -> None:
    """At least 1,000 generated requests over every documented route: no 5xx, every response documented."""
    caplog.set_level(logging.ERROR)  # the tracebacks of 5xx, not the expected 4xx, go into the report.
    admin_token = tokens()["access_token"]
    documented = {(method.upper(), path) for path, item in app.test_client().get("/api/openapi.json")
                  .get_json()["paths"].items() for method in item if method in ("get", "post", "put", "patch",
                                                                                "delete")}
    statuses: Counter[tuple[str, str, int]] = Counter()
    failures: dict[str, str] = {}
    for operation in _operations(app):
        key = (operation.method.upper(), operation.path)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, known_ids, lambda op=operation: _auth_headers(op, tokens, admin_token),
                      statuses)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, f"no case could be generated for {key}"
            except (Exception, BaseExceptionGroup) as exc:  # report every route's failure at once.
                failures[f"{key[0]} {key[1]} ({mode.value})"] = str(exc)[:3000]

    sent: Counter[tuple[str, str]] = Counter()
    for (method, path, _status), count in statuses.items():
        sent[(method, path)] += count
    summary = "\n".join(f"{method} {path}: {count}" for (method, path), count in sorted(sent.items()))
    print(f"Requests per route ({sum(sent.values())} in all):\n{summary}")
    print("Statuses:", dict(sorted(statuses.items())))
    assert not failures, "\n\n".join(f"{name}:\n{message}" for name, message in failures.items())
    assert set(sent) == documented, f"routes never fuzzed: {sorted(documented - set(sent))}"
    assert sum(sent.values()) >= MIN_REQUESTS, f"only {sum(sent.values())} requests were sent"


# Requests that once answered 500, kept as a corpus so they stay fixed: a dataset name with a newline (every
# download of the dataset then failed on its Content-Disposition header) and a Parquet timestamp that Python's
# datetime cannot hold (OverflowError while the upload was checked).
def _timestamp_parquet() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array([2**55], pa.timestamp("ms")), "text": ["x"]}), sink)
    return sink.getvalue()


def test_the_corpus_of_former_500s(app: Flask, client, admin: dict[str, str]) -> None:
    import io

    build = client.post("/api/datasets", headers=admin, json={"name": "zwei\nzeilen", "sources": [
        {"type": "postgres"}]})
    assert build.status_code == 422 and "name" in build.get_json()["error"]["details"]["fields"]
    named = client.post("/api/datasets/upload", headers=admin, content_type="multipart/form-data",
                        data={"file": (io.BytesIO(b'{"text": "x"}\n'), "a.jsonl"), "name": "a\r\nb"})
    assert named.status_code == 422 and "name" in named.get_json()["error"]["details"]["fields"]
    dates = client.post("/api/datasets/upload", headers=admin, content_type="multipart/form-data",
                        data={"file": (io.BytesIO(_timestamp_parquet()), "dates.parquet")})
    ended = finish_upload(app, client, admin, dates)
    assert ended["status"] == "failed" and ended["error"]["code"] == "invalid_records"
    assert "row 1: field 'id' cannot be read" in ended["error"]["message"]
