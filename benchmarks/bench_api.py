"""`make bench-api`: the API under load from a second process, against a bare Flask endpoint served the same way.

Serves the API as production does (gunicorn, 2 workers x 4 threads) on a fresh database and a private Redis
database, queues 200 jobs with no worker, then for 60 s lets 50 clients poll GET /api/training/jobs/<id> and
10 clients submit jobs, each client a thread with its own requests.Session in a separate process. The same load
then runs against a bare Flask JSON app under the same gunicorn settings, as the reference. Last, one real
Celery worker takes 20 one-step jobs on the tiny model, one at a time, to measure submission to `running`.
Writes benchmarks/results/api.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import redis
import requests
from flask import Flask, request
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ADMIN_URL = os.environ.get("CLARA_BENCH_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CLARA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
DATABASE = "clara_bench_api"
RESULTS = ROOT / "benchmarks" / "results" / "api.json"
ADMIN_PASSWORD = "bench-admin-password-long-enough"
GUNICORN = [str(ROOT / ".venv" / "bin" / "gunicorn"), "--workers", "2", "--threads", "4", "--timeout", "120"]
JOB_BODY = {"job_name": "bench", "base_model": "tiny-llama", "dataset_path": "demo-train.jsonl",
            "hyperparameters": {"max_steps": 1}}
TARGETS = {"poll_p99_ms": 50.0, "submit_p99_ms": 200.0, "queue_to_running_median_ms": 500.0, "errors": 0}

# What the reference app answers: the shape and size of a real job.
_BARE_JOB = {
    "object": "training.job", "status": "queued", "is_terminal": False, "owner": "admin",
    "created_at": "2026-01-01T00:00:00+00:00", "started_at": None, "finished_at": None, "error": None,
    "attempts": 0, "worker": None, "cancel_requested": False, "job_name": "bench", "trainer_type": "lora",
    "base_model": "/srv/clara/models/tiny-llama", "dataset_path": "/srv/clara/data/demo-train.jsonl",
    "dataset_id": None, "hyperparameters": {"num_epochs": 1.0, "max_steps": 1, "learning_rate": 0.0002,
                                            "batch_size": 4, "lora_rank": 8, "lora_alpha": 16.0},
    "metadata": {}, "progress": {"step": 0, "total_steps": None, "epoch": 0.0, "percent": 0.0, "eta_seconds": None},
    "metrics": {"train_loss": None, "trained_tokens": 0, "tokens_per_second": None}, "adapter_path": None,
    "parent_job_id": None, "children": [],
}


def bare_app() -> Flask:
    """The reference: the same two routes as bare Flask JSON endpoints, with no auth, database or queue."""
    app = Flask("bare")

    @app.get("/api/training/jobs/<uuid:job_id>")
    def show(job_id: uuid.UUID) -> dict:
        return {**_BARE_JOB, "id": str(job_id)}

    @app.post("/api/training/jobs")
    def submit() -> tuple[dict, int]:
        return {**_BARE_JOB, "id": str(uuid.uuid4()), "job_name": request.get_json()["job_name"]}, 202

    @app.get("/health")
    def health() -> dict:
        return {"status": "healthy"}

    return app


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


def _summary(latencies: list[float], errors: int, seconds: float) -> dict[str, Any]:
    """Latency percentiles in ms, throughput and errors of one request type."""
    if not latencies:
        return {"requests": 0, "errors": errors}
    ms = [value * 1000 for value in latencies]
    return {"requests": len(ms), "errors": errors, "requests_per_second": round(len(ms) / seconds, 1),
            **{f"p{q}_ms": round(_percentile(ms, q), 2) for q in (50, 95, 99)}, "max_ms": round(max(ms), 2)}


def run_load(url: str, token: str | None, job_ids: list[str], pollers: int, submitters: int, seconds: float,
             poll_interval: float, submit_interval: float) -> dict[str, Any]:
    """Poll and submit from one thread per client, each on a fixed schedule; runs in the load process."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    results: dict[str, tuple[list[float], list[str]]] = {"poll": ([], []), "submit": ([], [])}
    lock = threading.Lock()
    start = time.monotonic() + 1.0
    stop = start + seconds

    def client(kind: str, interval: float, seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        session.headers.update(headers)
        latencies, errors = [], []
        due = start + rng.uniform(0, interval)
        while due < stop:
            time.sleep(max(0.0, due - time.monotonic()))
            began = time.perf_counter()
            try:
                if kind == "poll":
                    response = session.get(f"{url}/api/training/jobs/{rng.choice(job_ids)}", timeout=10)
                    ok = response.status_code == 200
                else:
                    response = session.post(f"{url}/api/training/jobs", json=JOB_BODY, timeout=10)
                    ok = response.status_code == 202
                response.content  # noqa: B018 - read the whole body before stopping the clock.
            except requests.RequestException as exc:
                ok, response = False, exc
            latencies.append(time.perf_counter() - began)
            if not ok:
                errors.append(str(getattr(response, "status_code", response))[:200])
            due += interval
        session.close()
        with lock:
            results[kind][0].extend(latencies)
            results[kind][1].extend(errors)

    threads = [threading.Thread(target=client, args=("poll", poll_interval, n)) for n in range(pollers)]
    threads += [threading.Thread(target=client, args=("submit", submit_interval, 1000 + n)) for n in range(submitters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary = {kind: _summary(latencies, len(errors), seconds) for kind, (latencies, errors) in results.items()}
    for kind, (_latencies, errors) in results.items():
        if errors:
            summary[kind]["error_samples"] = sorted(set(errors))[:5]
    return summary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait(url: str, process: subprocess.Popen, log: Path, path: str = "/health", timeout: float = 120) -> None:
    """Wait until GET path answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(url + path, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url}{path} did not answer 200 within {timeout}s:\n{log.read_text()[-4000:]}")


def _admin(statement: sql.Composable) -> None:
    conn = psycopg2.connect(ADMIN_URL)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def _environment(work: Path, database_url: str) -> dict[str, str]:
    """The CLARA_* settings of the API and the worker: this run's database, Redis db and directories."""
    from settings import Settings

    env = {key: value for key, value in os.environ.items() if not key.startswith("CLARA_")}
    settings = {"env": "development", "secret_key": "bench-secret-that-is-long-enough-for-hs256-signing",
                "database_url": database_url, "redis_url": REDIS_URL, "bootstrap_admin_password": ADMIN_PASSWORD,
                "allow_hub_models": "false", "log_level": "WARNING"}
    for name in ("data", "models", "output", "checkpoints", "cache", "datasets"):
        settings[f"{name}_dir"] = str(work / name)
    settings["chroma_path"] = str(work / "chroma")
    # The load submits hundreds of jobs as one user: no per-user quota may refuse them.
    known = {field.name for field in dataclasses.fields(Settings)}
    if "max_active_jobs_per_user" in known:
        settings["max_active_jobs_per_user"] = "1000000"
    env.update({f"CLARA_{key.upper()}": value for key, value in settings.items()})
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE",
                "PYTHONUNBUFFERED": "1"})
    return env


def _load(url: str, token: str | None, job_ids: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Run the load from a second process."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_load, (url, token, job_ids, args.pollers, args.submitters, args.seconds,
                                     args.poll_interval, args.submit_interval))


def _drain(database_url: str) -> None:
    """Drop every queued message and end every job, so the worker phase starts on an empty queue."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE training_jobs SET status = 'cancelled', finished_at = now() "
                    "WHERE status IN ('pending', 'queued', 'running')")


def queue_overhead(url: str, headers: dict[str, str], database_url: str, jobs: int) -> dict[str, Any]:
    """Submit one-step jobs one at a time to an idle worker; started_at - created_at of each, from PostgreSQL."""
    samples = []
    for _ in range(jobs):
        response = requests.post(f"{url}/api/training/jobs", json=JOB_BODY, headers=headers, timeout=30)
        response.raise_for_status()
        job_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while True:
            job = requests.get(f"{url}/api/training/jobs/{job_id}", headers=headers, timeout=30).json()
            if job["is_terminal"]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not finish within 120 s: {job}")
            time.sleep(0.2)
        if job["status"] != "completed":
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job['error']}")
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM started_at - created_at) FROM training_jobs WHERE id = %s",
                        (job_id,))
            samples.append(float(cur.fetchone()[0]) * 1000)
    return {"jobs": len(samples), "median_ms": round(statistics.median(samples), 1),
            "p90_ms": round(_percentile(samples, 90), 1), "max_ms": round(max(samples), 1),
            "samples_ms": [round(value, 1) for value in samples],
            "measured_as": "training_jobs.started_at - created_at (PostgreSQL clock), worker idle at each submit"}


def main() -> int:
    """Run the load against Clara and the reference, then the queue overhead, and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each load phase")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--submitters", type=int, default=10)
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between one poller's requests")
    parser.add_argument("--submit-interval", type=float, default=1.0, help="seconds between one submitter's jobs")
    parser.add_argument("--queued", type=int, default=200, help="jobs queued before the load starts")
    parser.add_argument("--queue-jobs", type=int, default=20, help="jobs of the queue-overhead phase")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    from trainers.tiny_model import make_tiny_model

    began = time.monotonic()
    loadavg_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="clara-bench-api-"))
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    database_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + DATABASE
    redis.Redis.from_url(REDIS_URL).flushdb()
    processes: list[subprocess.Popen] = []
    try:
        for name in ("data", "models", "output", "checkpoints", "cache", "datasets", "chroma", "logs"):
            (work / name).mkdir()
        make_tiny_model(work / "models" / "tiny-llama", corpus_files=[ROOT / "examples" / "demo-train.jsonl"])
        shutil.copy(ROOT / "examples" / "demo-train.jsonl", work / "data" / "demo-train.jsonl")
        env = _environment(work, database_url)

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        api_log = work / "logs" / "api.log"
        api = _start([*GUNICORN, "--bind", f"127.0.0.1:{port}", "api:create_app()"], env, api_log)
        processes.append(api)
        _wait(url, api, api_log)
        login = requests.post(f"{url}/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD},
                              timeout=30)
        login.raise_for_status()
        token = login.json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        job_ids = []
        for _ in range(args.queued):
            response = requests.post(f"{url}/api/training/jobs", json=JOB_BODY, headers=headers, timeout=30)
            response.raise_for_status()
            job_ids.append(response.json()["id"])
        queued = redis.Redis.from_url(REDIS_URL).llen("gpu")
        print(f"{len(job_ids)} jobs queued ({queued} messages on the gpu queue); loading Clara for {args.seconds} s")
        clara = _load(url, token, job_ids, args)
        print("clara", json.dumps(clara))
        _drain(database_url)

        bare_port = _free_port()
        bare_url = f"http://127.0.0.1:{bare_port}"
        bare_log = work / "logs" / "bare.log"
        bare = _start([*GUNICORN, "--bind", f"127.0.0.1:{bare_port}", "benchmarks.bench_api:bare_app()"], env,
                      bare_log)
        processes.append(bare)
        _wait(bare_url, bare, bare_log)
        print(f"loading the bare Flask reference for {args.seconds} s")
        reference = _load(bare_url, None, job_ids, args)
        print("reference", json.dumps(reference))
        _stop(bare)

        worker_log = work / "logs" / "worker.log"
        worker = _start([str(ROOT / ".venv" / "bin" / "celery"), "-A", "tasks", "worker", "-Q", "gpu",
                         "--concurrency", "1", "--loglevel", "INFO", "-n", f"bench-{uuid.uuid4().hex[:8]}@%h"],
                        env, worker_log)
        processes.append(worker)
        _wait(url, worker, worker_log, path="/ready", timeout=180)
        print(f"worker ready; submitting {args.queue_jobs} one-step jobs one at a time")
        overhead = queue_overhead(url, headers, database_url, args.queue_jobs)
        print("queue", json.dumps({k: v for k, v in overhead.items() if k != "samples_ms"}))
    finally:
        for process in reversed(processes):
            _stop(process)
        redis.Redis.from_url(REDIS_URL).flushdb()
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        shutil.rmtree(work, ignore_errors=True)

    errors = sum(phase.get("errors", 0) for phase in clara.values())
    met = {
        "poll_p99_ms": clara["poll"].get("p99_ms", float("inf")) < TARGETS["poll_p99_ms"],
        "submit_p99_ms": clara["submit"].get("p99_ms", float("inf")) < TARGETS["submit_p99_ms"],
        "queue_to_running_median_ms": overhead["median_ms"] < TARGETS["queue_to_running_median_ms"],
        "errors": errors == TARGETS["errors"],
    }
    results = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": [round(v, 2) for v in loadavg_before],
                    "loadavg_after": [round(v, 2) for v in os.getloadavg()]},
        "server": {"command": " ".join(["gunicorn", *GUNICORN[1:], "--bind", "127.0.0.1:PORT", "APP"]),
                   "clara_app": "api:create_app()", "reference_app": "benchmarks.bench_api:bare_app()"},
        "load": {"seconds": args.seconds, "pollers": args.pollers, "poll_interval_s": args.poll_interval,
                 "submitters": args.submitters, "submit_interval_s": args.submit_interval,
                 "jobs_queued_before": args.queued, "worker_during_load": False,
                 "client": "a second process; one thread and requests.Session per client, each on a fixed "
                           "schedule; latency from send to the whole body read"},
        "clara": clara,
        "reference": reference,
        "clara_vs_reference": {
            f"{kind}_p{q}": round(clara[kind][f"p{q}_ms"] / reference[kind][f"p{q}_ms"], 2)
            for kind in ("poll", "submit") for q in (50, 99)
            if clara[kind].get(f"p{q}_ms") and reference[kind].get(f"p{q}_ms")},
        "queue_overhead": overhead,
        "targets": TARGETS,
        "met": met,
        "seconds_total": round(time.monotonic() - began, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps({"met": met, "seconds_total": results["seconds_total"]}))
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
