"""User administration is for admins only."""

from __future__ import annotations

import pytest


def test_admin_creates_and_lists_users(client, admin):
    created = client.post("/api/users", headers=admin,
                          json={"username": "tina", "password": "a-long-password-1", "role": "trainer"})
    assert created.status_code == 201
    body = created.get_json()
    assert body["username"] == "tina" and body["role"] == "trainer" and "password" not in body
    listing = client.get("/api/users", headers=admin).get_json()
    assert [u["username"] for u in listing["data"]] == ["admin-user", "tina"]
    assert listing["has_more"] is False


def test_users_list_paginates(client, admin):
    for i in range(3):
        client.post("/api/users", headers=admin, json={"username": f"user{i}", "password": "a-long-password-1",
                                                        "role": "analyst"})
    first = client.get("/api/users?limit=2", headers=admin).get_json()
    assert len(first["data"]) == 2 and first["has_more"] is True
    second = client.get(f"/api/users?limit=2&after={first['data'][-1]['id']}", headers=admin).get_json()
    assert [u["username"] for u in second["data"]] == ["user1", "user2"] and second["has_more"] is False


def test_duplicate_username_is_409(client, admin):
    body = {"username": "tina", "password": "a-long-password-1", "role": "trainer"}
    assert client.post("/api/users", headers=admin, json=body).status_code == 201
    again = client.post("/api/users", headers=admin, json=body)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "username_taken"


@pytest.mark.parametrize("body,field", [
    ({"username": "tina", "password": "a-long-password-1", "role": "root"}, "role"),
    ({"username": "t", "password": "a-long-password-1", "role": "trainer"}, "username"),
    ({"username": "tina", "password": "short", "role": "trainer"}, "password"),
    ({"username": "tina", "password": "a-long-password-1"}, "role"),
    ({"username": "tina", "password": "a-long-password-1", "role": "trainer", "disabled": False}, "disabled"),
])
def test_bad_user_bodies_name_the_field(client, admin, body, field):
    response = client.post("/api/users", headers=admin, json=body)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["details"]["fields"]
    assert field in response.get_json()["error"]["message"]


@pytest.mark.parametrize("role", ["trainer", "analyst"])
def test_non_admins_cannot_manage_users(client, user_headers, role):
    headers = user_headers(role)
    assert client.get("/api/users", headers=headers).status_code == 403
    response = client.post("/api/users", headers=headers,
                           json={"username": "x-user", "password": "a-long-password-1", "role": "admin"})
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
