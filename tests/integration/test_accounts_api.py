"""Accounts: password changes and resets, token versions, refresh token reuse, sessions kept in PostgreSQL."""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from api import create_app
from auth.tokens import issue_tokens
from auth.users import create_user
from settings import DEVELOPMENT_SECRET, SettingsError
from tests.conftest import free_port
from tests.integration.conftest import PASSWORD, count_statements

NEW_PASSWORD = "tram-lantern-orbit-quill-7"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _works(client, tokens: dict) -> bool:
    """Whether a token pair's access token is still accepted."""
    return client.get("/api/auth/me", headers=_bearer(tokens["access_token"])).status_code == 200


def _can_refresh(client, tokens: dict) -> bool:
    return client.post("/api/auth/refresh", headers=_bearer(tokens["refresh_token"])).status_code == 200


def _audit_actions(client, admin: dict, action: str) -> list[dict]:
    return client.get(f"/api/audit?action={action}", headers=admin).get_json()["data"]


# --- Changing one's own password ---------------------------------------------------------------------------------

def test_password_change_ends_every_session_and_starts_a_new_one(client, db, login):
    create_user(db, "tom", PASSWORD, "trainer")
    laptop, phone = login("tom"), login("tom")
    response = client.post("/api/auth/password", headers=_bearer(laptop["access_token"]),
                           json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert response.status_code == 200, response.get_json()
    fresh = response.get_json()
    for old in (laptop, phone):
        me = client.get("/api/auth/me", headers=_bearer(old["access_token"]))
        assert me.status_code == 401 and me.get_json()["error"]["code"] == "token_revoked"
        assert not _can_refresh(client, old)
    assert _works(client, fresh) and _can_refresh(client, fresh)
    assert client.post("/api/auth/login", json={"username": "tom", "password": PASSWORD}).status_code == 401
    assert _works(client, login("tom", NEW_PASSWORD))


def test_password_change_needs_the_right_current_password(client, db, login):
    create_user(db, "tom", PASSWORD, "trainer")
    tokens = login("tom")
    response = client.post("/api/auth/password", headers=_bearer(tokens["access_token"]),
                           json={"current_password": "not-my-password", "new_password": NEW_PASSWORD})
    assert response.status_code == 403
    error = response.get_json()["error"]
    assert error["code"] == "wrong_password" and "current_password" in error["details"]["fields"]
    assert _works(client, tokens)
    assert _works(client, login("tom"))


@pytest.mark.parametrize("body,field", [
    ({"current_password": PASSWORD, "new_password": "short-one"}, "new_password"),
    ({"current_password": PASSWORD, "new_password": PASSWORD}, "new_password"),
    ({"new_password": NEW_PASSWORD}, "current_password"),
    ({"current_password": PASSWORD}, "new_password"),
])
def test_bad_password_change_bodies_name_the_field(client, db, login, body, field):
    create_user(db, "tom", PASSWORD, "trainer")
    tokens = login("tom")
    response = client.post("/api/auth/password", headers=_bearer(tokens["access_token"]), json=body)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["details"]["fields"]
    assert _works(client, tokens)


def test_wrong_current_passwords_count_as_failed_logins(settings_overrides, db):
    client = create_app({**settings_overrides, "login_max_failures_per_user": 2}).test_client()
    create_user(db, "tom", PASSWORD, "trainer")
    tokens = client.post("/api/auth/login", json={"username": "tom", "password": PASSWORD}).get_json()
    for _ in range(2):
        wrong = client.post("/api/auth/password", headers=_bearer(tokens["access_token"]),
                            json={"current_password": "guess-number-n", "new_password": NEW_PASSWORD})
        assert wrong.status_code == 403
    # A stolen access token is no way around the login limits: the right password is refused now too.
    locked = client.post("/api/auth/password", headers=_bearer(tokens["access_token"]),
                         json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert locked.status_code == 429 and "Retry-After" in locked.headers
    assert client.post("/api/auth/login", json={"username": "tom", "password": PASSWORD}).status_code == 429


# --- An admin resetting a password -------------------------------------------------------------------------------

def test_admin_resets_a_password_and_ends_the_users_sessions(client, db, admin, login):
    tom = create_user(db, "tom", PASSWORD, "trainer")
    tokens = login("tom")
    response = client.post(f"/api/users/{tom['id']}/password", headers=admin, json={"password": NEW_PASSWORD})
    assert response.status_code == 204
    assert not _works(client, tokens) and not _can_refresh(client, tokens)
    assert client.post("/api/auth/login", json={"username": "tom", "password": PASSWORD}).status_code == 401
    assert _works(client, login("tom", NEW_PASSWORD))
    [entry] = _audit_actions(client, admin, "user.password_reset")
    assert entry["object_id"] == str(tom["id"]) and entry["actor"] == "admin-user"
    # The admin's own session is untouched.
    assert client.get("/api/auth/me", headers=admin).status_code == 200


def test_password_reset_refusals(client, db, admin, trainer):
    tom = create_user(db, "tom", PASSWORD, "trainer")
    me = client.get("/api/auth/me", headers=admin).get_json()
    own = client.post(f"/api/users/{me['id']}/password", headers=admin, json={"password": NEW_PASSWORD})
    assert own.status_code == 409 and own.get_json()["error"]["code"] == "cannot_reset_own_password"
    assert client.post("/api/users/999999/password", headers=admin, json={"password": NEW_PASSWORD}).status_code == 404
    short = client.post(f"/api/users/{tom['id']}/password", headers=admin, json={"password": "short"})
    assert short.status_code == 422 and "password" in short.get_json()["error"]["details"]["fields"]
    assert client.post(f"/api/users/{tom['id']}/password", headers=trainer,
                       json={"password": NEW_PASSWORD}).status_code == 403
    assert client.post("/api/auth/login", json={"username": "tom", "password": PASSWORD}).status_code == 200


# --- Token versions ----------------------------------------------------------------------------------------------

def test_disable_and_enable_each_bump_the_token_version(client, db, admin, login):
    tom = create_user(db, "tom", PASSWORD, "trainer")
    before = login("tom")
    assert client.patch(f"/api/users/{tom['id']}", headers=admin, json={"disabled": True}).status_code == 200
    assert client.patch(f"/api/users/{tom['id']}", headers=admin, json={"disabled": False}).status_code == 200
    # Setting what already is changes nothing: no session of now ends.
    between = login("tom")
    assert client.patch(f"/api/users/{tom['id']}", headers=admin, json={"disabled": False}).status_code == 200
    with db.transaction() as cur:
        cur.execute("SELECT token_version FROM users WHERE id = %s", (tom["id"],))
        assert cur.fetchone()["token_version"] == 2
    assert not _works(client, before) and not _can_refresh(client, before)
    assert _works(client, between)


def test_a_token_of_an_older_version_is_refused_even_with_a_live_session(client, db, login):
    tom = create_user(db, "tom", PASSWORD, "trainer")
    tokens = login("tom")
    with db.transaction() as cur:
        cur.execute("UPDATE users SET token_version = token_version + 1 WHERE id = %s", (tom["id"],))
    me = client.get("/api/auth/me", headers=_bearer(tokens["access_token"]))
    assert me.status_code == 401 and me.get_json()["error"]["code"] == "token_revoked"


# --- Refresh token reuse -----------------------------------------------------------------------------------------

def test_a_refresh_token_used_twice_revokes_its_whole_session(client, db, admin, login):
    create_user(db, "tom", PASSWORD, "trainer")
    first, other_session = login("tom"), login("tom")
    second = client.post("/api/auth/refresh", headers=_bearer(first["refresh_token"])).get_json()
    reused = client.post("/api/auth/refresh", headers=_bearer(first["refresh_token"]))
    assert reused.status_code == 401 and reused.get_json()["error"]["code"] == "token_revoked"
    # Whoever holds the newer pair (the thief or the owner) is out too; the user's other login is not.
    assert not _works(client, second) and not _can_refresh(client, second)
    assert not _works(client, first)
    assert _works(client, other_session)
    [entry] = _audit_actions(client, admin, "auth.refresh_reuse")
    assert entry["actor"] == "tom"


def test_concurrent_refreshes_with_one_token_never_both_succeed(app, db, login):
    create_user(db, "tom", PASSWORD, "trainer")
    tokens = login("tom")
    threads_count = 6
    barrier = threading.Barrier(threads_count)
    answers: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def _refresh() -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post("/api/auth/refresh", headers=_bearer(tokens["refresh_token"]))
        with lock:
            answers.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=_refresh) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] + [401] * (threads_count - 1), answers
    # The losers presented a spent refresh token, so the winner's new pair dies with the session as well.
    winner = next(body for status, body in answers if status == 200)
    assert not _works(app.test_client(), winner)


# --- Revocations live in PostgreSQL ------------------------------------------------------------------------------

def test_revocations_survive_redis_being_emptied(client, db, login, redis_url):
    create_user(db, "tom", PASSWORD, "trainer")
    logged_out, reused, changed = login("tom"), login("tom"), login("tom")
    assert client.post("/api/auth/logout", headers=_bearer(logged_out["access_token"])).status_code == 204
    client.post("/api/auth/refresh", headers=_bearer(reused["refresh_token"]))
    assert client.post("/api/auth/refresh", headers=_bearer(reused["refresh_token"])).status_code == 401
    fresh = client.post("/api/auth/password", headers=_bearer(changed["access_token"]),
                        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}).get_json()
    redis.Redis.from_url(redis_url).flushdb()
    for tokens in (logged_out, reused, changed):
        assert not _works(client, tokens) and not _can_refresh(client, tokens)
    assert _works(client, fresh)


def test_an_authenticated_request_costs_one_query_and_no_redis(settings_overrides, db, monkeypatch):
    # Nothing listens on this port: any Redis call would answer 503 redis_unavailable.
    app = create_app({**settings_overrides, "redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    user = create_user(db, "tom", PASSWORD, "trainer")
    with app.app_context():
        tokens = issue_tokens(user)
    client = app.test_client()
    assert _works(client, tokens)  # the pool's first connection is opened outside the count
    executed = count_statements(monkeypatch)
    me = client.get("/api/auth/me", headers=_bearer(tokens["access_token"]))
    assert me.status_code == 200 and me.get_json()["username"] == "tom"
    assert len(executed) == 1, executed


# --- Login input and logs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("username", ["tom\n", "tom\r\nINFO forged line", "\x1b[31mtom", "tom\x7f", "to\x85m"])
def test_control_characters_in_usernames_are_422_naming_the_field(client, admin, username):
    response = client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 422 and "username" in response.get_json()["error"]["details"]["fields"]
    created = client.post("/api/users", headers=admin,
                          json={"username": username, "password": PASSWORD, "role": "analyst"})
    assert created.status_code == 422 and "username" in created.get_json()["error"]["details"]["fields"]


def test_failed_and_refused_logins_never_log_an_unknown_typed_username(settings_overrides, db, caplog):
    caplog.set_level(logging.INFO)
    client = create_app({**settings_overrides, "login_max_failures_per_user": 1}).test_client()
    create_user(db, "tom", PASSWORD, "trainer")
    typed = "Hunter2-Sommer2025"  # a password typed into the username field
    for _ in range(2):  # a failure, then a refusal
        client.post("/api/auth/login", json={"username": typed, "password": "whatever-1"})
    client.post("/api/auth/login", json={"username": "tom", "password": "wrong-password-1"})
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Login failed for unknown user user#" in logged and "refused" in logged
    assert typed not in logged and typed.lower() not in logged
    # A known user may be named.
    assert "Login failed for tom" in logged


def test_the_api_refuses_a_published_secret_beyond_loopback(settings_overrides):
    outside = {**settings_overrides, "env": "development", "secret_key": DEVELOPMENT_SECRET, "api_host": "0.0.0.0"}
    with pytest.raises(SettingsError, match="CLARA_API_HOST"):
        create_app(outside)
    create_app({**outside, "api_host": "127.0.0.1"})
    create_app({**outside, "secret_key": "a-secret-of-my-own-that-is-long-enough"})
