"""A worker's own metrics without a worker: what the signal handlers count, the collector, access, settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from wsgiref.util import setup_testing_defaults

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import settings
from tasks import worker_metrics
from tasks.worker_metrics import Meters, WorkerCollector, metrics_app, sweep_dead

ROOT = Path(__file__).resolve().parents[2]
TRAIN = SimpleNamespace(name="clara.train_job")
BUILD = SimpleNamespace(name="clara.build_dataset")


def _values(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(values: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


def _progress(step: int, tokens: int, speed: float | None = 100.0) -> SimpleNamespace:
    return SimpleNamespace(step=step, trained_tokens=tokens, tokens_per_second=speed)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> CollectorRegistry:
    """Meters of this test's own, in this process's memory, as the handlers' target."""
    registry = CollectorRegistry()
    monkeypatch.setattr(worker_metrics, "_meters", Meters(registry))
    monkeypatch.setattr(worker_metrics, "_gpu", "3")
    monkeypatch.setattr(worker_metrics, "_last", {})
    monkeypatch.setattr(worker_metrics, "_started", {})
    return registry


def test_a_training_delivery_is_counted_from_receipt_to_its_jobs_outcome(registry):
    worker_metrics._count_received(request=SimpleNamespace(task_name="clara.train_job"))
    worker_metrics._note_start(task_id="t1")
    worker_metrics.record_training("job-1", _progress(1, 100, 50.0))
    worker_metrics.record_training("job-1", _progress(3, 340, 60.0))
    during = _values(registry)
    assert _value(during, "clara_worker_training_steps_total") == 3
    assert _value(during, "clara_worker_trained_tokens_total") == 340
    assert _value(during, "clara_worker_training_tokens_per_second", gpu="3") == 60.0
    assert _value(during, "clara_worker_process_resident_memory_bytes") > 0

    worker_metrics._count_finished(task_id="t1", task=TRAIN, args=("job-1",), retval={"outcome": "completed"},
                                   state="SUCCESS")
    after = _values(registry)
    assert _value(after, "clara_worker_tasks_received_total", task="clara.train_job") == 1
    assert _value(after, "clara_worker_tasks_finished_total", task="clara.train_job", outcome="succeeded") == 1
    assert _value(after, "clara_worker_task_duration_seconds_count", task="clara.train_job") == 1
    assert _value(after, "clara_worker_jobs_total", kind="training", outcome="completed") == 1
    assert _value(after, "clara_worker_training_tokens_per_second", gpu="3") == 0
    assert worker_metrics._last == {} and worker_metrics._started == {}


def test_a_retried_delivery_counts_as_retried_and_not_as_a_job_outcome(registry):
    worker_metrics._note_start(task_id="t2")
    worker_metrics._count_finished(task_id="t2", task=TRAIN, args=("job-2",), retval=RuntimeError("retry"),
                                   state="RETRY")
    worker_metrics._count_finished(task_id="t3", task=BUILD, args=("ds-1",), retval=None, state="FAILURE")
    values = _values(registry)
    assert _value(values, "clara_worker_tasks_finished_total", task="clara.train_job", outcome="retried") == 1
    assert _value(values, "clara_worker_tasks_finished_total", task="clara.build_dataset", outcome="failed") == 1
    assert not [key for key in values if key[0] == "clara_worker_jobs_total"]


def test_a_resumed_run_counts_steps_from_its_checkpoint_and_tokens_from_its_first_report(registry):
    worker_metrics.training_resumes("job-3", 10)
    worker_metrics.record_training("job-3", _progress(11, 1100))
    worker_metrics.record_training("job-3", _progress(13, 1300))
    values = _values(registry)
    assert _value(values, "clara_worker_training_steps_total") == 3
    assert _value(values, "clara_worker_trained_tokens_total") == 200


def test_dataset_builds_count_what_they_read_and_wrote_since_their_last_report(registry):
    worker_metrics.record_dataset("ds-2", {"documents_read": 1000, "records_written": 900})
    worker_metrics.record_dataset("ds-2", {"documents_read": 1500, "records_written": 1300})
    worker_metrics.record_dataset("ds-3", {"documents_read": 10, "records_written": 0})
    values = _values(registry)
    assert _value(values, "clara_worker_dataset_documents_read_total") == 1510
    assert _value(values, "clara_worker_dataset_records_written_total") == 1300


def test_without_metrics_enabled_the_hooks_do_nothing(monkeypatch):
    monkeypatch.setattr(worker_metrics, "_meters", None)
    monkeypatch.setattr(worker_metrics, "_last", {})
    worker_metrics.record_training("job-4", _progress(1, 10))
    worker_metrics.record_dataset("ds-4", {"documents_read": 1})
    worker_metrics._count_finished(task_id="t", task=TRAIN, args=("job-4",), retval={}, state="SUCCESS")
    assert worker_metrics._last == {}


def test_the_collector_reports_the_worker_and_the_tasks_it_runs(tmp_path):
    active = [SimpleNamespace(task_name="clara.train_job", args=["job-5"], worker_pid=4242)]
    info = {"hostname": "celery@gpu-host-1", "queues": "gpu", "gpu_ids": "0,1"}
    registry = CollectorRegistry()
    registry.register(WorkerCollector(str(tmp_path), info, active=lambda: active))
    values = _values(registry)
    assert _value(values, "clara_worker_info", **info) == 1
    assert _value(values, "clara_worker_running_tasks", task="clara.train_job") == 1
    assert _value(values, "clara_worker_running_tasks", task="clara.build_dataset") == 0
    assert _value(values, "clara_worker_running_task_info", task="clara.train_job", job_id="job-5", pid="4242") == 1


def test_the_live_gauges_of_dead_processes_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    for name in (f"gauge_livesum_{dead}.db", f"gauge_liveall_{dead}.db", f"counter_{dead}.db",
                 f"gauge_livesum_{os.getpid()}.db"):
        (tmp_path / name).write_bytes(b"")
    sweep_dead(str(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"counter_{dead}.db", f"gauge_livesum_{os.getpid()}.db"]


def _call(app, **environ) -> tuple[str, dict[str, str], bytes]:
    setup_testing_defaults(environ)
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer.update(status=status, headers=dict(headers))

    body = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], body


def test_without_a_token_only_loopback_clients_may_scrape():
    app = metrics_app(CollectorRegistry(), "")
    assert _call(app, REMOTE_ADDR="127.0.0.1")[0].startswith("200")
    assert _call(app, REMOTE_ADDR="::1")[0].startswith("200")
    assert _call(app, REMOTE_ADDR="10.0.0.5")[0].startswith("403")


def test_with_a_token_every_client_needs_it():
    app = metrics_app(CollectorRegistry(), "scrape-token")
    status, headers, _ = _call(app, REMOTE_ADDR="127.0.0.1")
    assert status.startswith("401") and headers["WWW-Authenticate"] == "Bearer"
    assert _call(app, REMOTE_ADDR="10.0.0.5", HTTP_AUTHORIZATION="Bearer wrong")[0].startswith("403")
    assert _call(app, REMOTE_ADDR="10.0.0.5", HTTP_AUTHORIZATION="Bearer scrape-token")[0].startswith("200")


def test_serve_answers_over_http():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    registry = CollectorRegistry()
    Meters(registry).received.labels("clara.train_job").inc()
    server = worker_metrics.serve(metrics_app(registry, ""), "127.0.0.1", port)
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
    assert 'clara_worker_tasks_received_total{task="clara.train_job"} 1.0' in text


@pytest.mark.parametrize(("address", "token", "refused"), [
    ("0.0.0.0", "", True), ("10.1.2.3", "", True), ("0.0.0.0", "a-token", False),
    ("127.0.0.1", "", False), ("::1", "", False), ("localhost", "", False)])
def test_production_refuses_a_worker_metrics_address_beyond_loopback_without_a_token(address, token, refused):
    overrides = {"env": "production", "secret_key": "s" * 40, "worker_metrics_port": 45681,
                 "worker_metrics_address": address, "metrics_token": token}
    if refused:
        with pytest.raises(settings.SettingsError, match="CLARA_WORKER_METRICS_ADDRESS"):
            settings.load(overrides, environ={})
    else:
        settings.load(overrides, environ={})
    # Off, the address does not matter.
    settings.load({**overrides, "worker_metrics_port": 0}, environ={})


def test_the_worker_metrics_port_must_be_a_port():
    with pytest.raises(settings.SettingsError, match="CLARA_WORKER_METRICS_PORT"):
        settings.load({"worker_metrics_port": 70000}, environ={})
    assert settings.load({}, environ={}).worker_metrics_port == 0


FORKED = textwrap.dedent("""
    import os, sys, tempfile, time
    from types import SimpleNamespace
    from prometheus_client import CollectorRegistry, generate_latest
    from tasks import worker_metrics

    directory = tempfile.mkdtemp()
    worker_metrics.enable(directory)
    worker_metrics._count_received(request=SimpleNamespace(task_name="clara.train_job"))
    pid = os.fork()
    if pid == 0:  # a pool child: trains, ends its task, and dies without a word
        worker_metrics.child_started("5")
        worker_metrics._note_start(task_id="t")
        worker_metrics.record_training("job", SimpleNamespace(step=4, trained_tokens=256, tokens_per_second=9.0))
        worker_metrics._count_finished(task_id="t", task=SimpleNamespace(name="clara.train_job"), args=("job",),
                                       retval={"outcome": "completed"}, state="SUCCESS")
        worker_metrics.record_training("next", SimpleNamespace(step=1, trained_tokens=8, tokens_per_second=7.0))
        os._exit(0)
    os.waitpid(pid, 0)
    registry = CollectorRegistry()
    registry.register(worker_metrics.WorkerCollector(directory, {"hostname": "w"}, active=lambda: []))
    sys.stdout.write(generate_latest(registry).decode())
""")


def test_a_pool_childs_figures_reach_the_main_process_through_the_metrics_directory():
    # In a process of its own: multiprocess mode is for the whole process, and this one also tests the API.
    out = subprocess.run([sys.executable, "-c", FORKED], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if not k.startswith("CLARA_")})
    assert out.returncode == 0, out.stderr
    samples = [s for family in text_string_to_metric_families(out.stdout) for s in family.samples]

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("clara_worker_tasks_received_total", task="clara.train_job") == 1
    assert value("clara_worker_tasks_finished_total", task="clara.train_job", outcome="succeeded") == 1
    assert value("clara_worker_jobs_total", kind="training", outcome="completed") == 1
    assert value("clara_worker_training_steps_total") == 5
    assert value("clara_worker_trained_tokens_total") == 264
    # The child died with a training under way; its live gauges went with it, the counters stay.
    assert value("clara_worker_training_tokens_per_second") == 0
    pids = {s.labels["pid"] for s in samples if s.name == "clara_worker_process_resident_memory_bytes"}
    assert len(pids) == 1


def test_a_hook_that_breaks_never_fails_the_job(registry):
    worker_metrics.record_training("job-6", SimpleNamespace(step=None, trained_tokens="many", tokens_per_second=1.0))
    worker_metrics.record_dataset("ds-6", {"documents_read": "lots"})
