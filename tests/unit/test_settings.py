"""Settings: defaults, CLARA_* variables, overrides, and production's refusal of insecure defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from settings import DEVELOPMENT_SECRET, Settings, SettingsError, load


def test_defaults_without_environment():
    settings = load(environ={})
    assert settings.env == "development" and settings.api_port == 45680
    assert settings.secret_key == DEVELOPMENT_SECRET
    assert settings.output_dir.is_absolute()


def test_environment_variables_are_coerced_to_each_type():
    settings = load(environ={"CLARA_API_PORT": "9000", "CLARA_ALLOW_HUB_MODELS": "false",
                             "CLARA_GPU_IDS": "0, 2,3", "CLARA_BROKER_TIMEOUT": "1.5",
                             "CLARA_DATA_DIR": "/srv/data", "CLARA_LOG_LEVEL": "debug"})
    assert settings.api_port == 9000 and settings.allow_hub_models is False
    assert settings.gpu_ids == ("0", "2", "3") and settings.broker_timeout == 1.5
    assert settings.data_dir == Path("/srv/data") and settings.log_level == "DEBUG"


def test_overrides_win_over_environment():
    settings = load({"api_port": 1234}, environ={"CLARA_API_PORT": "9000"})
    assert settings.api_port == 1234


def test_every_bad_value_is_reported_at_once():
    with pytest.raises(SettingsError) as caught:
        load(environ={"CLARA_API_PORT": "http", "CLARA_ALLOW_HUB_MODELS": "maybe", "CLARA_ENV": "staging"})
    text = str(caught.value)
    assert "CLARA_API_PORT" in text and "CLARA_ALLOW_HUB_MODELS" in text
    with pytest.raises(SettingsError, match="CLARA_ENV"):
        load(environ={"CLARA_ENV": "staging"})


def test_unknown_override_is_refused():
    with pytest.raises(SettingsError, match="unknown setting 'databse_url'"):
        load({"databse_url": "x"}, environ={})


@pytest.mark.parametrize("secret,message", [
    (None, "must be set"),
    (DEVELOPMENT_SECRET, "must be set"),
    ("", "must be set"),
    ("short-secret", "at least 32"),
])
def test_production_refuses_default_or_weak_secret(secret, message):
    environ = {"CLARA_ENV": "production"}
    if secret is not None:
        environ["CLARA_SECRET_KEY"] = secret
    # Only the API signs tokens, so only the API refuses (configure_jwt raises these); workers load fine.
    assert any(message in problem for problem in load(environ=environ).api_problems())


def test_production_starts_with_a_real_secret():
    settings = load(environ={"CLARA_ENV": "production", "CLARA_SECRET_KEY": "x" * 48})
    assert settings.is_production


@pytest.mark.parametrize("name", ["max_attempts", "job_time_limit", "lease_seconds"])
def test_non_positive_limits_are_refused(name):
    with pytest.raises(SettingsError, match=f"CLARA_{name.upper()}"):
        load({name: 0}, environ={})


def test_settings_are_immutable():
    with pytest.raises(AttributeError):
        Settings().env = "production"  # type: ignore[misc]
