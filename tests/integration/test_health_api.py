"""Liveness and readiness, and JSON 503s while a dependency is down."""

from __future__ import annotations

from api import create_app


def test_health_reports_the_service(client):
    body = client.get("/health").get_json()
    assert body["status"] == "healthy" and body["service"] == "clara-api"
    assert body["port"] == 45680 and body["active_jobs"] == 0 and body["max_concurrent_jobs"] == 1
    assert body["timestamp"]


def test_ready_is_503_naming_the_missing_worker(client):
    response = client.get("/ready")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["database"] == "ok" and body["checks"]["redis"] == "ok"
    assert body["error"]["details"]["down"] == ["workers"]
    assert "gpu" in body["error"]["message"]


def test_database_down_gives_json_503_and_health_stays_up(settings_overrides):
    down = {**settings_overrides, "database_url": "postgresql://postgres@127.0.0.1:1/clara"}
    client = create_app(down).test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/health").get_json()["active_jobs"] is None
    ready = client.get("/ready")
    assert ready.status_code == 503 and "database" in ready.get_json()["error"]["details"]["down"]
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
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert me.status_code == 503 and me.get_json()["error"]["code"] == "redis_unavailable"


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
