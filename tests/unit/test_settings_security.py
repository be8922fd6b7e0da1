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


# --- Who needs the secret, and where the published one may listen ----------------------------------------------

def test_workers_load_production_settings_without_a_secret_but_the_api_refuses_them():
    # Workers and Flower load settings too but never sign or verify a token; only the API needs the secret.
    settings = load(environ={"CLARA_ENV": "production"})
    assert any("CLARA_SECRET_KEY" in problem for problem in settings.api_problems())
    assert load(environ={"CLARA_ENV": "production", "CLARA_SECRET_KEY": SECRET}).api_problems() == []


@pytest.mark.parametrize(("host", "refused"), [("0.0.0.0", True), ("192.168.1.20", True), ("::", True),
                                               ("127.0.0.1", False), ("localhost", False), ("::1", False)])
def test_development_with_the_published_secret_listens_on_loopback_only(host, refused):
    problems = load({"env": "development", "api_host": host}, environ={}).api_problems()
    assert any("CLARA_API_HOST" in problem for problem in problems) is refused
    # A secret of one's own may listen anywhere in development.
    assert load({"env": "development", "api_host": host, "secret_key": SECRET}, environ={}).api_problems() == []


@pytest.mark.parametrize(("password", "refused"), [("short-pass", True), ("x" * 11, True), ("x" * 12, False),
                                                   ("", False)])
def test_production_refuses_a_short_bootstrap_admin_password(password, refused):
    overrides = {"env": "production", "secret_key": SECRET, "bootstrap_admin_password": password}
    if refused:
        with pytest.raises(SettingsError, match="CLARA_BOOTSTRAP_ADMIN_PASSWORD"):
            load(overrides, environ={})
    else:
        load(overrides, environ={})
    # Development and tests may use a short one.
    load({**overrides, "env": "development"}, environ={})
