"""Liveness and readiness, and JSON 503s while a dependency is down."""

from __future__ import annotations

import dataclasses

from api import create_app


def test_health_reports_the_service(client):
    body = client.get("/health").get_json()
    assert body["status"] == "healthy" and body["service"] == "clara-api"
    assert body["port"] == 45680 and body["active_jobs"] == 0 and body["max_concurrent_jobs"] == 1
    assert body["timestamp"]


def test_ready_is_503_naming_the_missing_worker(client, admin, trainer):
    for headers in ({}, trainer, {"Authorization": "Bearer not-a-token"}):
        response = client.get("/ready", headers=headers)
        assert response.status_code == 503
        body = response.get_json()
        assert body["checks"] == {"database": "ok", "redis": "ok", "workers": "unavailable"}
        assert body["error"]["details"]["down"] == ["workers"]
        assert body["error"]["message"] == "Not ready: workers unavailable."
    # Only an admin's token shows what exactly is wrong.
    detailed = client.get("/ready", headers=admin).get_json()
    assert "gpu" in detailed["checks"]["workers"] and "gpu" in detailed["error"]["message"]


def test_ready_reuses_the_workers_check_for_a_few_seconds(app, client):
    """Asking every worker blocks for up to ready_timeout; probes within ready_cache_seconds reuse the answer."""
    client.get("/ready")
    first = app.extensions["clara_ready_workers"]._result
    for _ in range(3):
        client.get("/ready")
    assert app.extensions["clara_ready_workers"]._result is first
    app.extensions["clara_settings"] = dataclasses.replace(app.extensions["clara_settings"], ready_cache_seconds=0)
    client.get("/ready")
    assert app.extensions["clara_ready_workers"]._result is not first


def test_database_down_gives_json_503_and_health_stays_up(settings_overrides):
    down = {**settings_overrides, "database_url": "postgresql://postgres@127.0.0.1:1/clara"}
    client = create_app(down).test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/health").get_json()["active_jobs"] is None
    ready = client.get("/ready")
    assert ready.status_code == 503 and "database" in ready.get_json()["error"]["details"]["down"]
    assert ready.get_json()["checks"]["database"] == "unavailable"
    # The driver's error names the host, port and user; an anonymous probe sees none of it.
    for secret in ("127.0.0.1", "port 1", "postgres", "connection"):
        assert secret not in ready.get_data(as_text=True)
    login = client.post("/api/auth/login", json={"username": "a", "password": "b"})
    assert login.status_code == 503 and login.get_json()["error"]["code"] == "database_unavailable"


def test_redis_down_gives_json_503(settings_overrides, db):
    from auth.users import create_user

    create_user(db, "tom", "tom-password-long", "trainer")
    down = {**settings_overrides, "redis_url": "redis://127.0.0.1:1/0"}
    client = create_app(down).test_client()
    ready = client.get("/ready")
    assert ready.status_code == 503 and {"redis", "workers"} <= set(ready.get_json()["error"]["details"]["down"])
    # Failed-login counters live in Redis: without them a login is refused rather than left unthrottled.
    login = client.post("/api/auth/login", json={"username": "tom", "password": "tom-password-long"})
    assert login.status_code == 503 and login.get_json()["error"]["code"] == "redis_unavailable"
    token = create_app(settings_overrides).test_client().post(
        "/api/auth/login", json={"username": "tom", "password": "tom-password-long"}).get_json()
    # Checking a token needs PostgreSQL only, so signed-in reads go on while Redis is down.
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert me.status_code == 200, me.get_json()


def test_api_started_before_its_database_sets_it_up_once_it_answers(settings_overrides):
    import uuid

    from psycopg2 import sql

    from tests.conftest import _admin_execute

    name = f"clara_test_late_{uuid.uuid4().hex[:8]}"
    url = settings_overrides["database_url"].rsplit("/", 1)[0] + "/" + name
    app = create_app({**settings_overrides, "database_url": url, "bootstrap_admin_password": "late-admin-password"})
    client = app.test_client()
    assert client.post("/api/auth/login", json={"username": "admin", "password": "x"}).status_code == 503
    _admin_execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        login = client.post("/api/auth/login", json={"username": "admin", "password": "late-admin-password"})
        assert login.status_code == 200
    finally:
        app.extensions["clara_db"].reset()
        _admin_execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
