"""Logging in, refreshing, logging out, and every way a token is refused."""

from __future__ import annotations

import base64
import json

import pytest

from auth.users import create_user
from tests.integration.conftest import PASSWORD


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_login_me_and_token_shape(client, db, login):
    create_user(db, "ana", PASSWORD, "analyst")
    tokens = login("ana")
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 15 * 60
    me = client.get("/api/auth/me", headers=_bearer(tokens["access_token"]))
    assert me.status_code == 200
    assert me.get_json()["username"] == "ana" and me.get_json()["role"] == "analyst"
    assert "password" not in me.get_json() and "password_hash" not in me.get_json()


@pytest.mark.parametrize("username,password", [("ana", "wrong-password-123"), ("nobody", PASSWORD)])
def test_login_with_wrong_credentials_is_401(client, db, username, password):
    create_user(db, "ana", PASSWORD, "analyst")
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_credentials"


def test_no_token_is_401(client):
    response = client.get("/api/auth/me")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"


def test_refresh_rotates_and_old_refresh_token_stops_working(client, db, login):
    create_user(db, "tom", PASSWORD, "trainer")
    tokens = login("tom")
    refreshed = client.post("/api/auth/refresh", headers=_bearer(tokens["refresh_token"]))
    assert refreshed.status_code == 200
    new = refreshed.get_json()
    assert client.get("/api/auth/me", headers=_bearer(new["access_token"])).status_code == 200
    again = client.post("/api/auth/refresh", headers=_bearer(tokens["refresh_token"]))
    assert again.status_code == 401 and again.get_json()["error"]["code"] == "token_revoked"


def test_access_token_cannot_refresh(client, db, login):
    create_user(db, "tom", PASSWORD, "trainer")
    tokens = login("tom")
    response = client.post("/api/auth/refresh", headers=_bearer(tokens["access_token"]))
    assert response.status_code == 401


def test_logout_revokes_access_and_refresh_tokens(client, db, login):
    create_user(db, "tom", PASSWORD, "trainer")
    tokens = login("tom")
    out = client.post("/api/auth/logout", headers=_bearer(tokens["access_token"]))
    assert out.status_code == 204
    me = client.get("/api/auth/me", headers=_bearer(tokens["access_token"]))
    assert me.status_code == 401 and me.get_json()["error"]["code"] == "token_revoked"
    assert client.post("/api/auth/refresh", headers=_bearer(tokens["refresh_token"])).status_code == 401


def test_revocation_survives_an_api_restart(settings_overrides, db):
    from api import create_app

    create_user(db, "tom", PASSWORD, "trainer")
    first = create_app(settings_overrides).test_client()
    tokens = first.post("/api/auth/login", json={"username": "tom", "password": PASSWORD}).get_json()
    first.post("/api/auth/logout", headers=_bearer(tokens["access_token"]))
    second = create_app(settings_overrides).test_client()
    assert second.get("/api/auth/me", headers=_bearer(tokens["access_token"])).status_code == 401


def test_tampered_token_is_401(client, db, login):
    create_user(db, "tom", PASSWORD, "trainer")
    header, payload, signature = login("tom")["access_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    forged = f"{header}.{_b64(claims)}.{signature}"
    response = client.get("/api/auth/me", headers=_bearer(forged))
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "invalid_token"


def test_alg_none_token_is_401(client, db, login):
    create_user(db, "tom", PASSWORD, "trainer")
    payload = login("tom")["access_token"].split(".")[1]
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    response = client.get("/api/auth/me", headers=_bearer(unsigned))
    assert response.status_code == 401


def test_token_signed_with_another_secret_is_401(client, db, login):
    import jwt

    create_user(db, "tom", PASSWORD, "trainer")
    payload = login("tom")["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = jwt.encode(claims, "another-secret-that-is-also-long-enough", algorithm="HS256")
    assert client.get("/api/auth/me", headers=_bearer(forged)).status_code == 401


def test_disabled_user_token_stops_working(client, db, login):
    create_user(db, "tom", PASSWORD, "trainer")
    tokens = login("tom")
    with db.transaction() as cur:
        cur.execute("UPDATE users SET disabled = true WHERE username = 'tom'")
    assert client.get("/api/auth/me", headers=_bearer(tokens["access_token"])).status_code == 401
    response = client.post("/api/auth/login", json={"username": "tom", "password": PASSWORD})
    assert response.status_code == 401


def test_bootstrap_admin_created_once(settings_overrides):
    from api import create_app

    app = create_app({**settings_overrides, "bootstrap_admin_password": "first-admin-password"})
    client = app.test_client()
    tokens = client.post("/api/auth/login", json={"username": "admin", "password": "first-admin-password"})
    assert tokens.status_code == 200
    # A second start with another password must not reset or duplicate the admin.
    create_app({**settings_overrides, "bootstrap_admin_password": "another-password-here"})
    again = client.post("/api/auth/login", json={"username": "admin", "password": "another-password-here"})
    assert again.status_code == 401


def test_login_rejects_unknown_field(client):
    response = client.post("/api/auth/login", json={"username": "a", "password": "b", "role": "admin"})
    assert response.status_code == 422
    assert "role" in response.get_json()["error"]["details"]["fields"]
