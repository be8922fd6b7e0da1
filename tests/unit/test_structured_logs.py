"""Log lines carry the job and user they are about, as text or as one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

import structured_logs
from settings import SettingsError, load


@pytest.fixture
def capture():
    """A logger writing through Clara's handler into a buffer, in the format asked for."""
    made = []

    def make(log_format: str) -> tuple[logging.Logger, io.StringIO]:
        buffer = io.StringIO()
        handler = structured_logs.handler(log_format)
        handler.setStream(buffer)
        logger = logging.getLogger(f"clara-test-{log_format}-{len(made)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        made.append((logger, handler))
        return logger, buffer

    yield make
    for logger, handler in made:
        logger.removeHandler(handler)


def test_json_lines_name_the_job_and_user(capture):
    structured_logs.clear()
    logger, buffer = capture("json")
    with structured_logs.about_job("7f3c", user="m.weber"):
        logger.info("Step %s of %s.", 3, 10)
    logger.warning("Outside any job.")
    first, second = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert first["message"] == "Step 3 of 10." and first["level"] == "INFO"
    assert first["job_id"] == "7f3c" and first["user"] == "m.weber"
    assert first["time"].endswith("+00:00")
    assert second["job_id"] is None and second["user"] is None


def test_exceptions_stay_inside_one_json_line(capture):
    logger, buffer = capture("json")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logger.exception("Training failed.")
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1
    assert "ValueError: bad" in json.loads(lines[0])["exception"]


def test_text_lines_show_the_context_only_when_there_is_one(capture):
    structured_logs.clear()
    logger, buffer = capture("text")
    with structured_logs.about_job("job-1"):
        structured_logs.set_user("user:4")
        logger.info("inside")
    logger.info("outside")
    inside, outside = buffer.getvalue().splitlines()
    assert inside.endswith("[job=job-1 user=user:4]: inside")
    assert outside.endswith(": outside") and "job=" not in outside


def test_about_job_restores_the_previous_context():
    structured_logs.clear()
    with structured_logs.about_job("a", user="ann"):
        with structured_logs.about_job("b"):
            structured_logs.set_user("bob")
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        structured_logs.ContextFilter().filter(record)
        assert (record.job_id, record.user) == ("a", "ann")


def test_threads_do_not_see_each_others_jobs(capture):
    logger, buffer = capture("json")
    barrier = threading.Barrier(2)

    def work(job: str) -> None:
        with structured_logs.about_job(job, user=f"owner-{job}"):
            barrier.wait()
            logger.info("working")

    threads = [threading.Thread(target=work, args=(job,)) for job in ("j1", "j2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pairs = sorted((entry["job_id"], entry["user"]) for entry in map(json.loads, buffer.getvalue().splitlines()))
    assert pairs == [("j1", "owner-j1"), ("j2", "owner-j2")]


def test_settings_accept_only_known_formats():
    assert load({"log_format": "json"}, environ={}).log_format == "json"
    with pytest.raises(SettingsError, match="CLARA_LOG_FORMAT"):
        load({"log_format": "xml"}, environ={})
