"""Integration fixtures: the real app on real PostgreSQL and Redis, and users of each role."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg2.extensions
import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from auth.users import create_user
from records.db import Database

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def app(settings_overrides: dict[str, Any]) -> Flask:
    """The API, configured for this test."""
    application = create_app(settings_overrides)
    yield application
    application.extensions["clara_db"].reset()


@pytest.fixture
def db(app: Flask) -> Database:
    """The app's database."""
    return app.extensions["clara_db"]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def login(client: FlaskClient) -> Callable[[str, str], dict[str, Any]]:
    """Log in and return the token pair."""

    def _login(username: str, password: str = PASSWORD) -> dict[str, Any]:
        response = client.post("/api/auth/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return _login


@pytest.fixture
def user_headers(db: Database, login) -> Callable[[str, str | None], dict[str, str]]:
    """Create a user of a role and return Authorization headers for them."""

    def _headers(role: str, username: str | None = None) -> dict[str, str]:
        name = username or f"{role}-user"
        create_user(db, name, PASSWORD, role)
        return {"Authorization": f"Bearer {login(name)['access_token']}"}

    return _headers


@pytest.fixture
def admin(user_headers) -> dict[str, str]:
    return user_headers("admin")


@pytest.fixture
def trainer(user_headers) -> dict[str, str]:
    return user_headers("trainer")


@pytest.fixture
def analyst(user_headers) -> dict[str, str]:
    return user_headers("analyst")


@pytest.fixture
def queue_length(redis_url: str) -> Callable[[str], int]:
    """Messages waiting in a Celery queue on the real broker."""
    import redis

    client = redis.Redis.from_url(redis_url)

    def _length(queue: str = "gpu") -> int:
        return client.llen(queue)

    return _length


def count_statements(monkeypatch) -> list[str]:
    """Record every statement sent through psycopg2's Python cursor classes (nested calls counted once)."""
    executed: list[str] = []
    nested = threading.local()

    def _wrap(original):
        def _execute(self, query, vars=None):
            if not getattr(nested, "active", False):
                executed.append(query)
            outer, nested.active = getattr(nested, "active", False), True
            try:
                return original(self, query, vars)
            finally:
                nested.active = outer

        return _execute

    pending = list(psycopg2.extensions.cursor.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        try:
            monkeypatch.setattr(cls, "execute", _wrap(cls.execute))
        except TypeError:
            continue  # psycopg2's own C cursor types cannot be patched, nor are they used here.
    return executed
