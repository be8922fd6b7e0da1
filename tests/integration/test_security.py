"""Security: JWT settings, password hashes, login rate limits, headers, CORS, quotas and secrets kept out of logs."""

from __future__ import annotations

import base64
import json
import logging
import threading

import pytest

from api import create_app
from auth.users import create_user
from records import jobs
from tests.conftest import TEST_SECRET
from tests.integration.conftest import PASSWORD

JOB = {"job_name": "faq", "base_model": "tiny-llama", "dataset_path": "demo-train.jsonl",
       "hyperparameters": {"max_steps": 5}}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _login(client, username: str, password: str = PASSWORD, address: str = "10.0.0.1"):
    return client.post("/api/auth/login", json={"username": username, "password": password},
                       environ_base={"REMOTE_ADDR": address})


# --- JWT and passwords -------------------------------------------------------------------------------------------

def test_jwt_algorithm_and_secret_are_pinned(app):
    assert app.config["JWT_SECRET_KEY"] == TEST_SECRET
    assert app.config["JWT_ALGORITHM"] == "HS256" and app.config["JWT_DECODE_ALGORITHMS"] == ["HS256"]
    # flask-jwt-extended would fall back to Flask's SECRET_KEY; Clara never relies on that.
    assert not app.config.get("SECRET_KEY")


def test_access_tokens_are_short_lived_and_refresh_tokens_expire(client, db, login):
    create_user(db, "tom", PASSWORD, "trainer")
    tokens = login("tom")
    access, refresh = _claims(tokens["access_token"]), _claims(tokens["refresh_token"])
    assert access["exp"] - access["iat"] == 15 * 60
    assert refresh["exp"] - refresh["iat"] == 30 * 24 * 3600
    assert access["type"] == "access" and refresh["type"] == "refresh"


def test_logout_with_refresh_token_revokes_it_in_a_new_app_instance(settings_overrides, db):
    create_user(db, "tom", PASSWORD, "trainer")
    first = create_app(settings_overrides).test_client()
    tokens = _login(first, "tom").get_json()
    refreshed = first.post("/api/auth/refresh", headers=_bearer(tokens["refresh_token"])).get_json()
    assert first.post("/api/auth/logout", headers=_bearer(refreshed["access_token"]),
                      json={"refresh_token": refreshed["refresh_token"]}).status_code == 204
    second = create_app(settings_overrides).test_client()
    for token in (tokens["access_token"], refreshed["access_token"]):
        assert second.get("/api/auth/me", headers=_bearer(token)).status_code == 401
    for token in (tokens["refresh_token"], refreshed["refresh_token"]):
        assert second.post("/api/auth/refresh", headers=_bearer(token)).status_code == 401


def test_passwords_are_stored_as_scrypt_hashes(db):
    create_user(db, "tom", PASSWORD, "trainer")
    with db.transaction() as cur:
        cur.execute("SELECT password_hash FROM users WHERE username = 'tom'")
        stored = cur.fetchone()["password_hash"]
    method, salt, digest = stored.split("$")
    assert method == "scrypt:32768:8:1" and len(salt) >= 16 and len(digest) == 128
    assert PASSWORD not in stored


def test_admin_disables_a_user_and_their_tokens_stop_working(client, db, admin, login):
    user = create_user(db, "tom", PASSWORD, "trainer")
    tokens = login("tom")
    response = client.patch(f"/api/users/{user['id']}", headers=admin, json={"disabled": True})
    assert response.status_code == 200 and response.get_json()["disabled"] is True
    assert client.get("/api/auth/me", headers=_bearer(tokens["access_token"])).status_code == 401
    assert client.post("/api/auth/refresh", headers=_bearer(tokens["refresh_token"])).status_code == 401
    assert client.patch(f"/api/users/{user['id']}", headers=admin, json={"disabled": False}).status_code == 200
    # Re-enabling does not revive the tokens of before the disable; a new login works.
    assert client.get("/api/auth/me", headers=_bearer(tokens["access_token"])).status_code == 401
    assert client.post("/api/auth/refresh", headers=_bearer(tokens["refresh_token"])).status_code == 401
    assert client.get("/api/auth/me", headers=_bearer(login("tom")["access_token"])).status_code == 200


def test_admin_cannot_disable_themselves_and_unknown_users_are_404(client, admin):
    me = client.get("/api/auth/me", headers=admin).get_json()
    assert client.patch(f"/api/users/{me['id']}", headers=admin, json={"disabled": True}).status_code == 409
    assert client.patch("/api/users/999999", headers=admin, json={"disabled": True}).status_code == 404
    assert client.patch(f"/api/users/{me['id']}", headers=admin, json={"role": "analyst"}).status_code == 422


@pytest.mark.parametrize("value", ["yes", 1, "true", None])
def test_disabled_must_be_a_json_boolean(client, admin, user_headers, db, value):
    user_headers("trainer", "tom")
    tom = next(user for user in client.get("/api/users", headers=admin).get_json()["data"] if user["username"] == "tom")
    response = client.patch(f"/api/users/{tom['id']}", headers=admin, json={"disabled": value})
    assert response.status_code == 422
    assert "disabled" in response.get_json()["error"]["details"]["fields"]
    assert not next(user for user in client.get("/api/users", headers=admin).get_json()["data"]
                    if user["username"] == "tom")["disabled"]


# --- Login rate limits -------------------------------------------------------------------------------------------

def test_failed_logins_per_username_answer_429_with_retry_after(client, db):
    create_user(db, "tom", PASSWORD, "trainer")
    create_user(db, "ana", PASSWORD, "analyst")
    for attempt in range(10):
        # From different addresses, so only the per-username counter can trip.
        assert _login(client, "tom", "wrong-password-1", address=f"10.0.1.{attempt}").status_code == 401
    locked = _login(client, "tom", PASSWORD, address="10.0.2.1")
    assert locked.status_code == 429
    body = locked.get_json()["error"]
    assert body["code"] == "too_many_requests"
    assert 0 < int(locked.headers["Retry-After"]) <= 900 and body["details"]["retry_after"] > 0
    # Another user is not affected, from the same address either.
    assert _login(client, "ana", address="10.0.1.1").status_code == 200


@pytest.mark.parametrize(("trusted_proxies", "counted_apart"), [(0, False), (1, True)])
def test_login_limits_behind_a_proxy_go_by_the_forwarded_address_only_when_trusted(settings_overrides, db,
                                                                                  trusted_proxies, counted_apart):
    app = create_app({**settings_overrides, "login_max_failures_per_address": 3,
                      "trusted_proxies": trusted_proxies})
    client = app.test_client()
    create_user(db, "ana", PASSWORD, "analyst")
    for attempt in range(3):
        # Every request reaches the API from the proxy at 127.0.0.1, on behalf of one client.
        response = client.post("/api/auth/login", json={"username": f"nobody{attempt}", "password": "wrong-pass"},
                               headers={"X-Forwarded-For": "203.0.113.7"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert response.status_code == 401
    other_client = client.post("/api/auth/login", json={"username": "nobody0", "password": "wrong-pass"},
                               headers={"X-Forwarded-For": "198.51.100.2"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    # Trusted, the proxy's other client has its own counter; untrusted, all of them share the proxy's, which
    # refuses usernames that failed before.
    assert other_client.status_code == (401 if counted_apart else 429)
    # Either way a username with a clean record still logs in: a shared address never locks everyone out.
    clean = client.post("/api/auth/login", json={"username": "ana", "password": PASSWORD},
                        headers={"X-Forwarded-For": "198.51.100.2"}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert clean.status_code == 200


def test_failed_logins_per_address_refuse_usernames_that_failed_but_never_everyone(settings_overrides, db):
    app = create_app({**settings_overrides, "login_max_failures_per_address": 5})
    client = app.test_client()
    create_user(db, "ana", PASSWORD, "analyst")
    create_user(db, "tom", PASSWORD, "trainer")
    for attempt in range(4):
        assert _login(client, f"nobody{attempt}", "wrong-password-1").status_code == 401
    # A successful login from the same address must not wipe out the failures others caused there.
    assert _login(client, "ana").status_code == 200
    assert _login(client, "nobody9", "wrong-password-1").status_code == 401
    # The address is over its limit: a username that failed in its window is refused from there ...
    locked = _login(client, "nobody0", "wrong-password-1")
    assert locked.status_code == 429 and "Retry-After" in locked.headers
    # ... one with a clean record still logs in with the right password ...
    assert _login(client, "ana").status_code == 200
    # ... and has one wrong guess, after which it is refused from there too, even with the right password.
    assert _login(client, "tom", "wrong-password-1").status_code == 401
    assert _login(client, "tom").status_code == 429
    # From another address tom's one failure is far below the per-username limit.
    assert _login(client, "tom", address="10.9.9.9").status_code == 200


def test_the_failure_window_expires(settings_overrides, db, redis_url):
    import redis

    app = create_app({**settings_overrides, "login_max_failures_per_user": 2, "login_failure_window_seconds": 60})
    client = app.test_client()
    create_user(db, "tom", PASSWORD, "trainer")
    for _ in range(2):
        _login(client, "tom", "wrong-password-1")
    assert _login(client, "tom").status_code == 429
    store = redis.Redis.from_url(redis_url)
    keys = store.keys("clara:login-failures:*")
    assert keys and all(0 < store.ttl(key) <= 60 for key in keys)
    # No username is stored in clear.
    assert not any(b"tom" in key for key in keys)
    for key in keys:
        store.delete(key)
    assert _login(client, "tom").status_code == 200


# --- Headers and CORS --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/health", "/api/auth/me", "/api/nowhere", "/api/openapi.json"])
def test_security_headers_on_every_response(client, path):
    response = client.get(path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "Strict-Transport-Security" not in response.headers


def test_authenticated_and_token_responses_are_not_cached(client, db, trainer):
    assert client.get("/api/training/jobs", headers=trainer).headers["Cache-Control"] == "no-store"
    create_user(db, "tom", PASSWORD, "trainer")
    assert _login(client, "tom").headers["Cache-Control"] == "no-store"
    assert client.get("/health").headers.get("Cache-Control") != "no-store"


def test_hsts_only_when_configured(settings_overrides):
    client = create_app({**settings_overrides, "hsts_seconds": 31536000}).test_client()
    assert client.get("/health").headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_no_cors_headers_by_default(client):
    response = client.options("/api/training/jobs", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_preflight_for_an_allowed_origin_and_none_for_others(settings_overrides, db):
    app = create_app({**settings_overrides, "cors_origins": "https://clara.example.org"})
    client = app.test_client()
    preflight = client.options("/api/training/jobs", headers={
        "Origin": "https://clara.example.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://clara.example.org"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    assert "Origin" in preflight.headers["Vary"]
    create_user(db, "tom", PASSWORD, "trainer")
    actual = client.post("/api/auth/login", json={"username": "tom", "password": PASSWORD},
                         headers={"Origin": "https://clara.example.org"})
    assert actual.headers["Access-Control-Allow-Origin"] == "https://clara.example.org"
    for origin in ("https://evil.example", "https://clara.example.org.evil.example", "null"):
        other = client.options("/api/training/jobs", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
        assert "Access-Control-Allow-Origin" not in other.headers
        assert "Access-Control-Allow-Methods" not in other.headers


# --- Quotas ------------------------------------------------------------------------------------------------------

def test_training_quota_is_409_naming_the_quota_and_a_cancel_frees_a_slot(settings_overrides, db, queue_length):
    app = create_app({**settings_overrides, "max_active_jobs_per_user": 2})
    client = app.test_client()
    create_user(db, "tom", PASSWORD, "trainer")
    headers = _bearer(_login(client, "tom").get_json()["access_token"])
    first = client.post("/api/training/jobs", headers=headers, json=JOB).get_json()
    assert client.post("/api/training/jobs", headers=headers, json=JOB).status_code == 202
    refused = client.post("/api/training/jobs", headers=headers, json=JOB)
    assert refused.status_code == 409
    error = refused.get_json()["error"]
    assert error["code"] == "quota_exceeded" and "max_active_jobs_per_user" in error["message"]
    assert error["details"] == {"quota": "max_active_jobs_per_user", "limit": 2, "active": 2}
    assert queue_length("gpu") == 2
    # Another user has a quota of their own.
    create_user(db, "ben", PASSWORD, "admin")
    other = _bearer(_login(client, "ben").get_json()["access_token"])
    assert client.post("/api/training/jobs", headers=other, json=JOB).status_code == 202
    assert client.post(f"/api/training/jobs/{first['id']}/cancel", headers=headers).status_code == 200
    assert client.post("/api/training/jobs", headers=headers, json=JOB).status_code == 202


def test_dataset_build_quota_is_409_naming_the_quota(settings_overrides, db, queue_length):
    app = create_app({**settings_overrides, "max_active_datasets_per_user": 1})
    client = app.test_client()
    create_user(db, "ana", PASSWORD, "analyst")
    headers = _bearer(_login(client, "ana").get_json()["access_token"])
    build = {"name": "all", "sources": [{"type": "postgres"}]}
    assert client.post("/api/datasets", headers=headers, json=build).status_code == 202
    refused = client.post("/api/datasets", headers=headers, json=build)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "quota_exceeded"
    assert "max_active_datasets_per_user" in refused.get_json()["error"]["message"]
    assert queue_length("cpu") == 1


def test_quota_count_and_insert_is_race_safe(db):
    owner = create_user(db, "tom", PASSWORD, "trainer")["id"]
    created, refused, errors = [], [], []
    barrier = threading.Barrier(8)

    def _submit() -> None:
        barrier.wait()
        try:
            created.append(jobs.create_job(db, job_name="race", trainer_type="lora", base_model="m",
                                           dataset_path="d.jsonl", hyperparameters={}, metadata={},
                                           owner_id=owner, max_active=3))
        except jobs.QuotaExceeded:
            refused.append(1)
        except Exception as exc:  # surfaced below; a thread's exception would otherwise vanish.
            errors.append(exc)

    threads = [threading.Thread(target=_submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(created) == 3 and len(refused) == 5


# --- Input -------------------------------------------------------------------------------------------------------

def _operations(client) -> list[tuple[str, str, dict]]:
    spec = client.get("/api/openapi.json").get_json()
    return [(method.upper(), path, op) for path, ops in spec["paths"].items()
            for method, op in ops.items() if method != "parameters"]


def _concrete(path: str) -> str:
    return (path.replace("{job_id}", "00000000-0000-0000-0000-000000000001")
            .replace("{dataset_id}", "00000000-0000-0000-0000-000000000001")
            .replace("{file_format}", "jsonl").replace("{user_id}", "1"))


def test_unknown_query_parameters_are_rejected_on_every_route_that_takes_a_query(client, admin):
    checked = 0
    for method, path, op in _operations(client):
        if not any(param.get("in") == "query" for param in op.get("parameters", [])):
            continue
        response = client.open(_concrete(path) + "?sneaky=1", method=method, headers=admin)
        assert response.status_code == 422, (method, path, response.get_json())
        assert "sneaky" in response.get_json()["error"]["details"]["fields"], (method, path)
        checked += 1
    assert checked >= 7


def test_unknown_body_fields_are_rejected_on_every_route_that_takes_json(client, admin):
    checked = 0
    for method, path, op in _operations(client):
        content = op.get("requestBody", {}).get("content", {})
        if "application/json" not in content:
            continue
        response = client.open(_concrete(path), method=method, headers=admin,
                               json={"owner": "admin", "status": "completed", "attempts": 0})
        assert response.status_code == 422, (method, path, response.get_json())
        fields = response.get_json()["error"]["details"]["fields"]
        assert {"owner", "status", "attempts"} <= set(fields), (method, path, fields)
        checked += 1
    assert checked >= 6


def test_unknown_upload_form_fields_are_rejected(client, admin):
    import io

    response = client.post("/api/datasets/upload", headers=admin, content_type="multipart/form-data",
                           data={"file": (io.BytesIO(b'{"text": "x"}\n'), "a.jsonl"), "owner_id": "1"})
    assert response.status_code == 422 and "owner_id" in response.get_json()["error"]["details"]["fields"]


@pytest.mark.parametrize("path,limit", [("/api/training/jobs", 101), ("/api/datasets", 101), ("/api/users", 201),
                                        ("/api/audit", 201)])
def test_page_sizes_are_capped(client, admin, path, limit):
    response = client.get(f"{path}?limit={limit}", headers=admin)
    assert response.status_code == 422 and "limit" in response.get_json()["error"]["details"]["fields"]


# --- Logs --------------------------------------------------------------------------------------------------------

def test_no_password_token_or_secret_is_ever_logged(client, db, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    password = "a-very-secret-password-4711"
    create_user(db, "tom", password, "trainer")
    assert _login(client, "tom", "wrong-password-0815").status_code == 401
    tokens = _login(client, "tom", password).get_json()
    refreshed = client.post("/api/auth/refresh", headers=_bearer(tokens["refresh_token"])).get_json()
    headers = _bearer(refreshed["access_token"])
    job = client.post("/api/training/jobs", headers=headers, json=JOB)
    assert job.status_code == 202
    client.get(f"/api/training/jobs/{job.get_json()['id']}", headers=headers)
    client.get("/api/auth/me", headers=_bearer(tokens["access_token"]))  # a refused, rotated-away token
    assert client.post("/api/auth/logout", headers=headers,
                       json={"refresh_token": refreshed["refresh_token"]}).status_code == 204
    client.get("/api/auth/me", headers=headers)
    logged = "\n".join(record.getMessage() for record in caplog.records) + "".join(capfd.readouterr())
    assert "logged in" in logged and "Login failed" in logged  # the capture did see the session
    secrets = {"password": password, "wrong password": "wrong-password-0815", "secret key": TEST_SECRET}
    for name, token in (("access", tokens["access_token"]), ("refresh", tokens["refresh_token"]),
                        ("refreshed access", refreshed["access_token"]),
                        ("refreshed refresh", refreshed["refresh_token"])):
        secrets[name + " token"] = token
        secrets[name + " token signature"] = token.rsplit(".", 1)[1]
    for name, secret in secrets.items():
        assert secret not in logged, f"the {name} was logged"
