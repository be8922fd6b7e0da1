"""Celery's configuration: late acks, one task at a time, and a visibility timeout longer than any job."""

from __future__ import annotations

import celeryconfig
from settings import load
from tasks import make_celery


def test_reliability_options():
    config = celeryconfig.build(load(environ={}))
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1


def test_visibility_timeout_outlasts_the_longest_job_on_broker_and_backend():
    settings = load({"job_time_limit": 7200}, environ={})
    config = celeryconfig.build(settings)
    for key in ("broker_transport_options", "result_backend_transport_options"):
        assert config[key]["visibility_timeout"] > settings.job_time_limit


def test_training_task_is_routed_to_the_gpu_queue():
    app = make_celery(load({"redis_url": "redis://127.0.0.1:6379/15"}, environ={}), set_as_current=False)
    route = app.amqp.router.route({}, "clara.train_job")
    assert route["queue"].name == "gpu"
    assert app.conf.broker_url == "redis://127.0.0.1:6379/15"


def test_one_child_per_gpu():
    assert celeryconfig.build(load({"gpu_ids": ("0", "1", "2")}, environ={}))["worker_concurrency"] == 3
    assert celeryconfig.build(load(environ={}))["worker_concurrency"] == 1


def test_training_has_a_soft_and_a_hard_time_limit_inside_the_visibility_timeout():
    config = celeryconfig.build(load({"job_time_limit": 3600}, environ={}))
    limits = config["task_annotations"]["clara.train_job"]
    # The trainer stops itself at 3600 s; Celery's limits are backstops after it.
    assert 3600 < limits["soft_time_limit"] < limits["time_limit"]
    assert limits["time_limit"] < config["broker_transport_options"]["visibility_timeout"]


def test_dataset_builds_have_time_limits_inside_the_visibility_timeout():
    config = celeryconfig.build(load({"job_time_limit": 3600, "dataset_time_limit": 7200}, environ={}))
    limits = config["task_annotations"]["clara.build_dataset"]
    # The build stops itself at 7200 s between batches; Celery's limits catch a batch that never ends.
    assert 7200 < limits["soft_time_limit"] < limits["time_limit"]
    assert limits["time_limit"] < config["broker_transport_options"]["visibility_timeout"]
