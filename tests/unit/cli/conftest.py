"""A stand-in Clara API on a loopback port, for the CLI's client behaviour without PostgreSQL or Redis."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

JOB_ID = "11111111-2222-3333-4444-555555555555"


def _error(status: int, code: str, message: str):
    return jsonify(error={"code": code, "message": message, "details": {}}), status


class StubApi:
    """What the stub answers and what it was asked."""

    def __init__(self) -> None:
        self.valid_tokens = {"access-1"}
        self.refreshes = 0
        self.requests: list[tuple[str, str, str | None]] = []
        self.job_snapshots: list[dict[str, Any]] = []


def _job(status: str, step: int, loss: float | None = None) -> dict[str, Any]:
    return {"object": "training.job", "id": JOB_ID, "job_name": "stub", "status": status,
            "is_terminal": status in ("completed", "failed", "cancelled"), "cancel_requested": False,
            "progress": {"step": step, "total_steps": 10, "percent": step * 10.0, "eta_seconds": 10 - step},
            "metrics": {"train_loss": loss, "tokens_per_second": 1234.0 if loss else None},
            "error": {"code": "out_of_memory", "message": "Lower batch_size."} if status == "failed" else None}


def build_stub(state: StubApi) -> Flask:
    """A Flask app answering a few Clara routes in Clara's error shape."""
    app = Flask("stub")

    @app.before_request
    def _record():
        state.requests.append((request.method, request.path, request.headers.get("Authorization")))
        if request.path.startswith("/api/") and request.path not in ("/api/auth/login", "/api/auth/refresh"):
            token = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
            if token not in state.valid_tokens:
                return _error(401, "token_expired", "The token has expired; refresh it or log in again.")
        return None

    @app.post("/api/auth/refresh")
    def refresh():
        if request.headers.get("Authorization") != "Bearer refresh-1":
            return _error(401, "token_revoked", "The token has been revoked; log in again.")
        state.refreshes += 1
        state.valid_tokens = {"access-2"}
        return {"access_token": "access-2", "refresh_token": "refresh-2", "token_type": "Bearer", "expires_in": 900}

    @app.get("/api/auth/me")
    def me():
        return {"object": "user", "id": 1, "username": "ada", "role": "admin", "disabled": False,
                "created_at": "2026-01-01T00:00:00"}

    @app.get("/api/users")
    def users():
        return {"object": "list", "data": [me()], "has_more": False}

    @app.get(f"/api/training/jobs/{JOB_ID}")
    def job():
        return state.job_snapshots.pop(0) if len(state.job_snapshots) > 1 else state.job_snapshots[0]

    @app.get(f"/api/training/jobs/{JOB_ID}/adapter")
    def adapter():
        return Response(b"x" * 3_000_000, mimetype="application/gzip")

    @app.get("/api/proxy-trouble")
    def proxy_trouble():
        return Response("<html><body><h1>502 Bad Gateway</h1></body></html>", status=502, mimetype="text/html")

    @app.errorhandler(404)
    def _not_found(_error_):
        return _error(404, "not_found", "The requested URL was not found on the server.")

    @app.errorhandler(405)
    def _not_allowed(_error_):
        return _error(405, "method_not_allowed", "The method is not allowed for the requested URL.")

    return app


@pytest.fixture
def stub() -> StubApi:
    return StubApi()


@pytest.fixture
def stub_url(stub: StubApi) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, build_stub(stub), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def token_file(tmp_path: Path, stub_url: str) -> Path:
    """A stored session for the stub, as `clara login` would leave it."""
    path = tmp_path / "config" / "clara" / "tokens.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({stub_url: {"access_token": "access-1", "refresh_token": "refresh-1",
                                           "expires_at": 4102444800, "username": "ada"}}))
    return path


@pytest.fixture
def run_stub(tmp_path: Path, stub_url: str, token_file: Path, monkeypatch: pytest.MonkeyPatch
             ) -> Callable[..., Result]:
    """Invoke `clara` against the stub with its stored session."""
    from cli.main import cli

    monkeypatch.chdir(tmp_path)
    env = {"CLARA_URL": stub_url, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    return lambda *args, input=None: CliRunner().invoke(cli, list(args), input=input, env=env)


@pytest.fixture
def make_job() -> Callable[..., dict[str, Any]]:
    """A job body as GET /api/training/jobs/<id> answers it: make_job(status, step, loss)."""
    return _job
