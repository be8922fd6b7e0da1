"""Flower never starts without authentication, in any configuration the repository ships."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
AUTH_OPTIONS = ("--basic-auth", "--basic_auth", "--auth", "--oauth2")


def _flower_commands_in_makefile() -> list[str]:
    """Every recipe line of the Makefile that starts Flower, with the lines before it in its target."""
    recipes, current = [], []
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t"):
            current.append(line.strip())
            if re.search(r"\bflower\b", line) and "celery" in line:
                recipes.append("\n".join(current))
        else:
            current = []
    return recipes


def test_makefile_flower_refuses_without_credentials_and_passes_them_through_the_environment():
    recipes = _flower_commands_in_makefile()
    assert recipes, "no Makefile recipe starts Flower; this test must be updated with it"
    for recipe in recipes:
        command = recipe.splitlines()[-1]
        # Set for the celery process only, where `ps` cannot show it; an option would be in its command line.
        assert command.startswith('FLOWER_BASIC_AUTH="$$CLARA_FLOWER_BASIC_AUTH" '), command
        assert not any(option in command for option in AUTH_OPTIONS), command
        # The line before stops the target when the credentials are empty.
        assert 'test -n "$$CLARA_FLOWER_BASIC_AUTH"' in recipe and "exit 1" in recipe, recipe
        assert "FLOWER_UNAUTHENTICATED_API" not in recipe


def test_flower_reads_its_basic_auth_from_the_environment(monkeypatch):
    from flower.command import apply_env_options
    from flower.options import options

    for name in [name for name in os.environ if name.startswith("FLOWER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "admin:s3cret-from-the-environment")
    before = options.basic_auth
    try:
        apply_env_options()
        assert options.basic_auth == ["admin:s3cret-from-the-environment"]
    finally:
        options.basic_auth = before


def test_compose_flower_requires_credentials():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    flowers = {name: service for name, service in compose["services"].items()
               if "flower" in " ".join(service.get("command") or []) or name.startswith("flower")}
    assert flowers, "no compose service runs Flower; this test must be updated with it"
    for name, service in flowers.items():
        command = " ".join(service.get("command") or [])
        environment = service.get("environment") or {}
        from_flag = any(option in command for option in AUTH_OPTIONS)
        # ${VAR:?message} makes compose refuse to start when the variable is unset or empty.
        from_env = ":?" in str(environment.get("FLOWER_BASIC_AUTH", "")) or ":?" in str(
            environment.get("FLOWER_AUTH", ""))
        assert from_flag or from_env, f"compose service {name} can start Flower without authentication"
        assert "FLOWER_UNAUTHENTICATED_API" not in environment, name
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"compose service {name} publishes Flower beyond localhost"
