"""Security settings: CORS origins, HSTS, quotas and login limits."""

from __future__ import annotations

import pytest

from settings import SettingsError, load

SECRET = "a-production-secret-that-is-long-enough-1234"


def test_security_defaults():
    settings = load({}, environ={})
    assert settings.cors_origins == () and settings.hsts_seconds == 0
    assert settings.max_active_jobs_per_user == 10 and settings.max_active_datasets_per_user == 5
    assert (settings.login_max_failures_per_user, settings.login_max_failures_per_address,
            settings.login_failure_window_seconds) == (10, 50, 900)


def test_production_refuses_a_wildcard_cors_origin():
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        load({"env": "production", "secret_key": SECRET, "cors_origins": "*"}, environ={})
    assert load({"env": "development", "cors_origins": "*"}, environ={}).cors_origins == ("*",)


@pytest.mark.parametrize("origin", ["clara.example.org", "https://clara.example.org/", "ftp://x", "https://"])
def test_malformed_cors_origins_are_refused(origin):
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        load({"cors_origins": origin}, environ={})


def test_cors_origins_from_the_environment():
    settings = load(environ={"CLARA_CORS_ORIGINS": "https://a.example, http://localhost:5173"})
    assert settings.cors_origins == ("https://a.example", "http://localhost:5173")


@pytest.mark.parametrize("name", ["max_active_jobs_per_user", "max_active_datasets_per_user",
                                  "login_max_failures_per_user", "login_failure_window_seconds"])
def test_quota_and_limit_settings_must_be_positive(name):
    with pytest.raises(SettingsError, match=name.upper()):
        load({name: 0}, environ={})


def test_hsts_may_be_off_but_not_negative():
    assert load({"hsts_seconds": 0}, environ={}).hsts_seconds == 0
    with pytest.raises(SettingsError, match="HSTS"):
        load({"hsts_seconds": -1}, environ={})
