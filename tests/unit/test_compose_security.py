"""docker-compose.yml with the values of .env.example: Redis has a password, only the API holds the secret key.

docker compose itself is not needed: its ${VAR}, ${VAR:-default}, ${VAR:?message} and $$ are resolved here,
and each Clara service's environment is loaded by settings.load() as that container would.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import settings

ROOT = Path(__file__).resolve().parents[2]
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def _dotenv() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Resolve compose's variables in every string of a parsed compose file; a missing :? variable fails."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def _one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        if env.get(name):
            return env[name]
        if op == ":?":
            pytest.fail(f"compose needs {name}, which .env.example does not set: {arg}")
        return arg if op == ":-" else ""

    return _VARIABLE.sub(_one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text()), _dotenv())


def _clara_services(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Each service that runs Clara's image, with its environment."""
    return {name: {key: str(value) for key, value in service["environment"].items()}
            for name, service in compose["services"].items() if service.get("image") == "clara:latest"}


def test_redis_requires_the_password_of_env_example(compose):
    password = _dotenv()["REDIS_PASSWORD"]
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == password
    # The healthcheck authenticates through the environment, not through redis-cli's command line.
    assert redis["environment"]["REDISCLI_AUTH"] == password
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"]) and password not in str(redis["healthcheck"])


def test_every_clara_service_uses_the_redis_password(compose):
    password = _dotenv()["REDIS_PASSWORD"]
    services = _clara_services(compose)
    assert {"api", "worker-gpu", "worker-cpu", "flower"} <= set(services)
    for name, environment in services.items():
        url = urlsplit(environment["CLARA_REDIS_URL"])
        assert (url.hostname, url.password) == ("redis", password), name


def test_only_the_api_gets_the_secret_key_and_the_trusted_proxies(compose):
    services = _clara_services(compose)
    assert {name for name, environment in services.items() if "CLARA_SECRET_KEY" in environment} == {"api"}
    assert "CLARA_TRUSTED_PROXIES" in services["api"]
    assert _dotenv()["CLARA_TRUSTED_PROXIES"] == services["api"]["CLARA_TRUSTED_PROXIES"] == "1"


def test_every_clara_service_starts_with_its_compose_environment(compose):
    for name, environment in _clara_services(compose).items():
        loaded = settings.load(environ=environment)  # workers and Flower: production without a secret
        assert loaded.is_production, name
        if name == "api":
            assert loaded.api_problems() == []
            assert loaded.trusted_proxies == 1
