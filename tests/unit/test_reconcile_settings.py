"""The reconciler's and the visibility timeout's settings: production defaults kept, unsafe values refused."""

from __future__ import annotations

import pytest

import celeryconfig
from settings import SettingsError, load
from tasks.training import LEASE_GRACE_SECONDS


def test_defaults_keep_the_visibility_timeout_past_the_longest_job():
    settings = load(environ={})
    assert settings.reconcile_seconds == 60 and settings.visibility_timeout == 0
    transport = celeryconfig.build(settings)["broker_transport_options"]
    assert transport == {"visibility_timeout": settings.job_time_limit + celeryconfig.VISIBILITY_MARGIN_SECONDS}


def test_a_leased_delivery_waits_less_than_the_visibility_timeout():
    # A retry countdown longer than the visibility timeout is delivered twice on Redis (kombu#337).
    settings = load(environ={})
    longest_wait = settings.lease_seconds + LEASE_GRACE_SECONDS
    assert longest_wait < celeryconfig.build(settings)["broker_transport_options"]["visibility_timeout"]


def test_a_shortened_visibility_timeout_reaches_broker_and_backend_with_a_sweep_inside_it():
    config = celeryconfig.build(load({"visibility_timeout": 20, "lease_seconds": 5}, environ={}))
    for key in ("broker_transport_options", "result_backend_transport_options"):
        assert config[key]["visibility_timeout"] == 20
        assert config[key]["unacked_restore_interval"] * config[key]["unacked_restore_throttle"] < 20


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"reconcile_seconds": 0}, "CLARA_RECONCILE_SECONDS must be positive"),
    ({"visibility_timeout": -1}, "CLARA_VISIBILITY_TIMEOUT must not be negative"),
    ({"visibility_timeout": 100, "lease_seconds": 60}, "CLARA_VISIBILITY_TIMEOUT must be more than twice"),
])
def test_unsafe_values_are_refused(overrides, problem):
    with pytest.raises(SettingsError) as caught:
        load(overrides, environ={})
    assert any(p.startswith(problem) for p in caught.value.problems)
