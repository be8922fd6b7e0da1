"""End-to-end fixtures: the real API over HTTP and a real Celery worker, as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "e2e-admin-password-long-enough"
START_TIMEOUT = 120


@dataclass
class Stack:
    """A running API and worker, and how to talk to them."""

    url: str
    env: dict[str, str]
    logs: dict[str, Path]
    worker_metrics_url: str = ""

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> dict[str, str]:
        """Log in and return Authorization headers."""
        response = requests.post(f"{self.url}/api/auth/login", json={"username": username, "password": password},
                                 timeout=10)
        response.raise_for_status()
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def wait_for(self, path: str, headers: dict[str, str], until: Any, timeout: float = 300) -> dict:
        """Poll a resource until `until(body)` holds, and return it."""
        deadline = time.monotonic() + timeout
        while True:
            body = requests.get(f"{self.url}{path}", headers=headers, timeout=10).json()
            if until(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} never reached the expected state; last seen: {body}")
            time.sleep(0.3)

    def wait_for_job(self, headers: dict[str, str], job_id: str, until: Any, timeout: float = 300) -> dict:
        """Poll a training job until `until(job)` holds, and return it."""
        return self.wait_for(f"/api/training/jobs/{job_id}", headers, until, timeout)

    def worker_metrics(self, until: Any = None, timeout: float = 30) -> WorkerMetrics:
        """Scrape the worker's own /metrics, until `until(metrics)` holds if given."""
        deadline = time.monotonic() + timeout
        while True:
            response = requests.get(self.worker_metrics_url, timeout=10)
            response.raise_for_status()
            metrics = WorkerMetrics(response.text)
            if until is None or until(metrics):
                return metrics
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker's metrics never reached the expected state:\n{response.text}")
            time.sleep(0.3)


class WorkerMetrics:
    """A scrape of a worker's /metrics, parsed."""

    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.text = text
        self.samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def matching(self, name: str, **labels: str) -> list[Any]:
        """The samples of this name whose labels include these."""
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the matching samples, 0 when there are none."""
        return sum(sample.value for sample in self.matching(name, **labels))


def _environment(settings: dict[str, Any], port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLARA_")}
    env.update({f"CLARA_{key.upper()}": str(value) for key, value in settings.items()})
    env.update({"CLARA_API_PORT": str(port), "CLARA_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "CLARA_LEASE_SECONDS": "15",
                # No GPU here: the id only shows that each worker child pins the GPU it was given.
                "CLARA_GPU_IDS": "7"})
    return env


@pytest.fixture
def stack(settings_overrides: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Start `python -m api` and `celery -A tasks worker -Q gpu`, wait until /ready answers 200."""
    port = free_port()
    env = _environment(settings_overrides, port)
    env["CLARA_WORKER_METRICS_PORT"] = str(free_port())
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "worker")}
    commands = {
        "api": [sys.executable, "-m", "api"],
        # The console script, as users start it: it does not put the working directory on sys.path.
        "worker": [str(Path(sys.executable).with_name("celery")), "-A", "tasks", "worker", "-Q", "gpu,cpu",
                   "--concurrency", "1",
                   "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                   "-n", f"e2e-{uuid.uuid4().hex[:8]}@%h"],
    }
    processes = {}
    for name, command in commands.items():
        processes[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=logs[name].open("w"),
                                           stderr=subprocess.STDOUT)
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, logs=logs,
                  worker_metrics_url=f"http://127.0.0.1:{env['CLARA_WORKER_METRICS_PORT']}/metrics")
    try:
        _wait_ready(stack, processes)
        yield stack
    finally:
        for process in processes.values():
            stop_process(process)
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            for name, path in logs.items():
                print(f"----- {name} log -----\n{path.read_text()[-8000:]}")


def _wait_ready(stack: Stack, processes: dict[str, subprocess.Popen]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{stack.logs[name].read_text()[-4000:]}")
        try:
            last = requests.get(f"{stack.url}/ready", timeout=5)
            if last.status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the stack was not ready in {START_TIMEOUT}s; last /ready: {last and last.text}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's outcome so the stack fixture can print logs of a failed test."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
