"""`make bench-api`: what a status poll costs, against a bare Flask endpoint measured in the same run.

Closed loop (wrk, 50 connections, 20 s each): GET /api/training/jobs/<id> (one job, rotating over 200 queued
ones) and GET /api/training/jobs (a page of 20) on Clara, each run followed by the same path on a bare Flask
app that answers the same JSON with no auth, database or queue, served the same way and up at the same time
(alternating runs, so a change in the machine's load weighs on both sides alike). Both ways of serving run:
gunicorn (2 workers x 4 threads, as the Docker image) and `python -m api` (Werkzeug's threaded server; the
reference then runs under the same server). Reported per route: requests/s and latency percentiles, and the
ratios Clara/reference (throughput, target >= 0.4; p99, target <= 2.0). Any non-2xx answer is counted.

Then, on gunicorn, an open-loop mixed load (50 clients polling every 0.5 s, 10 submitting every 1 s, from a
second process) for the submit p99, and last one real Celery worker takes 20 one-step jobs on the tiny model,
one at a time, to measure submission to `running`. Writes benchmarks/results/api.json.

Needs wrk (https://github.com/wg/wrk): `apt-get install -y wrk` on Debian/Ubuntu, `brew install wrk` on macOS.
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
TARGETS = {"poll_p99_ms": 50.0, "submit_p99_ms": 200.0, "queue_to_running_median_ms": 500.0, "errors": 0,
           "throughput_vs_bare_min": 0.4, "p99_vs_bare_max": 2.0}
WRK_INSTALL = ("wrk is needed for the closed-loop load: `apt-get install -y wrk` (Debian/Ubuntu, as root), "
               "`brew install wrk` (macOS), or build it from https://github.com/wg/wrk.")
# Rotates over the job ids in ids.txt (one per line) and prints wrk's figures as one JSON line at the end.
WRK_SCRIPT = """
local ids = {}
local counter = 0
local prefix = os.getenv("CLARA_BENCH_PREFIX")
local token = os.getenv("CLARA_BENCH_TOKEN")
local file = io.open(os.getenv("CLARA_BENCH_IDS"), "r")
for line in file:lines() do ids[#ids + 1] = line end
file:close()
if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end

request = function()
  local path = prefix
  if #ids > 0 then
    counter = counter + 1
    path = prefix .. ids[(counter % #ids) + 1]
  end
  return wrk.format("GET", path)
end

done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, "timeouts": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""

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

    @app.get("/api/training/jobs")
    def index() -> dict:
        # A page of 20, as Clara's default limit answers.
        return {"object": "list", "data": [{**_BARE_JOB, "id": str(uuid.uuid4())} for _ in range(20)],
                "has_more": True}

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


_STARTED: list[subprocess.Popen] = []


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    _STARTED.append(process)
    return process


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
    # One token serves the whole run.
    settings["access_token_minutes"] = "240"
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


def _wrk(base_url: str, prefix: str, token: str | None, ids: list[str], work: Path, args: argparse.Namespace
         ) -> dict[str, Any]:
    """One closed-loop run of wrk against base_url + prefix (+ an id from ids, rotating); its figures in ms."""
    script, id_file = work / "bench.lua", work / f"ids-{uuid.uuid4().hex[:6]}.txt"
    script.write_text(WRK_SCRIPT, encoding="utf-8")
    id_file.write_text("".join(f"{value}\n" for value in ids), encoding="utf-8")
    env = {**os.environ, "CLARA_BENCH_PREFIX": prefix, "CLARA_BENCH_TOKEN": token or "",
           "CLARA_BENCH_IDS": str(id_file)}
    command = ["wrk", "-t", str(args.wrk_threads), "-c", str(args.connections), "-d", f"{args.wrk_seconds:g}s",
               "--timeout", "10s", "-s", str(script), base_url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.wrk_seconds + 120,
                          check=True)
    figures = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    seconds = figures["duration_us"] / 1e6
    return {"requests": figures["requests"], "requests_per_second": round(figures["requests"] / seconds, 1),
            "non_2xx": figures["non_2xx"], "socket_errors": figures["socket_errors"], "timeouts": figures["timeouts"],
            **{f"{name}_ms": round(figures[f"{name}_us"] / 1000, 2) for name in ("p50", "p90", "p99", "max", "mean")}}


def _serve_commands(server: str, port: int) -> tuple[list[str], list[str], dict[str, str]]:
    """The commands serving Clara and the reference on port the same way, and Clara's extra settings."""
    if server == "gunicorn":
        bind = ["--bind", f"127.0.0.1:{port}"]
        return ([*GUNICORN, *bind, "api:create_app()"], [*GUNICORN, *bind, "benchmarks.bench_api:bare_app()"], {})
    python = str(ROOT / ".venv" / "bin" / "python")
    return ([python, "-m", "api"], [python, "-m", "benchmarks.bench_api", "--serve-bare", str(port)],
            {"CLARA_API_HOST": "127.0.0.1", "CLARA_API_PORT": str(port)})


def _compare(server: str, env: dict[str, str], work: Path, job_ids: list[str], args: argparse.Namespace
             ) -> tuple[dict[str, Any], str, str]:
    """wrk on Clara's job and list GETs and on the reference's, both served by `server`; Clara stays up.

    Both servers are up at once (the idle one costs nothing) and the runs alternate, Clara then the reference
    for each route, so a change in the machine's load during the runs weighs on both sides alike.
    """
    port, bare_port = _free_port(), _free_port()
    url, bare_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
    clara_command, _, extra = _serve_commands(server, port)
    bare_command = _serve_commands(server, bare_port)[1]
    log = work / "logs" / f"{server.replace(' ', '-')}-clara.log"
    bare_log = work / "logs" / f"{server.replace(' ', '-')}-bare.log"
    clara = _start(clara_command, {**env, **extra}, log)
    bare = _start(bare_command, env, bare_log)
    result: dict[str, Any] = {"clara": {}, "bare": {}}
    try:
        _wait(url, clara, log)
        _wait(bare_url, bare, bare_log)
        token = _login(url)
        if not job_ids:
            job_ids.extend(_queue_jobs(url, token, args.queued))
        routes = {"job": ("/api/training/jobs/", job_ids), "list": ("/api/training/jobs", [])}
        for route, (prefix, ids) in routes.items():
            for side, side_url, side_token in (("clara", url, token), ("bare", bare_url, None)):
                print(f"[{server}] wrk {side} GET {prefix}{'<id>' if ids else ''} ({args.wrk_seconds:g} s)",
                      flush=True)
                result[side][route] = _wrk(side_url, prefix, side_token, ids, work, args)
                print(json.dumps(result[side][route]), flush=True)
    finally:
        _stop(bare)
        if server != "gunicorn":
            _stop(clara)
    result["clara_vs_bare"] = {
        route: {"throughput": round(result["clara"][route]["requests_per_second"]
                                    / result["bare"][route]["requests_per_second"], 2),
                "p99": round(result["clara"][route]["p99_ms"] / result["bare"][route]["p99_ms"], 2)}
        for route in routes}
    result["met"] = {route: ratios["throughput"] >= TARGETS["throughput_vs_bare_min"]
                     and ratios["p99"] <= TARGETS["p99_vs_bare_max"]
                     and result["clara"][route]["non_2xx"] == 0 and result["clara"][route]["socket_errors"] == 0
                     for route, ratios in result["clara_vs_bare"].items()}
    result["command"] = " ".join(clara_command).replace(str(ROOT) + "/", "")
    return result, (url if server == "gunicorn" else ""), token


def _login(url: str) -> str:
    login = requests.post(f"{url}/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD},
                          timeout=30)
    login.raise_for_status()
    return login.json()["access_token"]


def _queue_jobs(url: str, token: str, count: int) -> list[str]:
    """Submit count jobs (no worker runs, so they stay queued) and return their ids."""
    headers = {"Authorization": f"Bearer {token}"}
    job_ids = []
    for _ in range(count):
        response = requests.post(f"{url}/api/training/jobs", json=JOB_BODY, headers=headers, timeout=30)
        response.raise_for_status()
        job_ids.append(response.json()["id"])
    print(f"{len(job_ids)} jobs queued", flush=True)
    return job_ids


def main() -> int:
    """Compare Clara with the reference under both servers, then the mixed load and the queue overhead."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wrk-seconds", type=float, default=20.0, help="length of each closed-loop wrk run")
    parser.add_argument("--connections", type=int, default=50, help="wrk's open connections")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--servers", default="gunicorn,python -m api", help="comma-separated: gunicorn, python -m api")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the open-loop mixed load (0: skip)")
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--submitters", type=int, default=10)
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between one poller's requests")
    parser.add_argument("--submit-interval", type=float, default=1.0, help="seconds between one submitter's jobs")
    parser.add_argument("--queued", type=int, default=200, help="jobs queued before the load starts")
    parser.add_argument("--queue-jobs", type=int, default=20, help="jobs of the queue-overhead phase (0: skip)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        # The reference as `python -m api` serves Clara: Werkzeug's threaded server.
        bare_app().run(host="127.0.0.1", port=args.serve_bare, threaded=True, use_reloader=False)
        return 0
    if shutil.which("wrk") is None:
        print(WRK_INSTALL, file=sys.stderr)
        return 2

    from trainers.tiny_model import make_tiny_model

    began = time.monotonic()
    loadavg_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="clara-bench-api-"))
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    database_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + DATABASE
    redis.Redis.from_url(REDIS_URL).flushdb()
    processes: list[subprocess.Popen] = []
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    # The long phases on gunicorn run last, on the Clara server the comparison leaves running.
    servers.sort(key=lambda name: name == "gunicorn")
    closed_loop: dict[str, Any] = {}
    mixed: dict[str, Any] = {}
    overhead: dict[str, Any] = {}
    try:
        for name in ("data", "models", "output", "checkpoints", "cache", "datasets", "chroma", "logs"):
            (work / name).mkdir()
        make_tiny_model(work / "models" / "tiny-llama", corpus_files=[ROOT / "examples" / "demo-train.jsonl"])
        shutil.copy(ROOT / "examples" / "demo-train.jsonl", work / "data" / "demo-train.jsonl")
        env = _environment(work, database_url)
        job_ids: list[str] = []
        url = token = ""
        for server in servers:
            closed_loop[server], url, token = _compare(server, env, work, job_ids, args)
        if url and args.seconds > 0:
            processes.append(_find_server(url))
            print(f"open-loop mixed load on gunicorn for {args.seconds:g} s", flush=True)
            mixed = _load(url, token, job_ids, args)
            print("mixed", json.dumps(mixed), flush=True)
            if args.queue_jobs:
                _drain(database_url)
                worker_log = work / "logs" / "worker.log"
                worker = _start([str(ROOT / ".venv" / "bin" / "celery"), "-A", "tasks", "worker", "-Q", "gpu",
                                 "--concurrency", "1", "--loglevel", "INFO", "-n",
                                 f"bench-{uuid.uuid4().hex[:8]}@%h"], env, worker_log)
                processes.append(worker)
                _wait(url, worker, worker_log, path="/ready", timeout=180)
                print(f"worker ready; submitting {args.queue_jobs} one-step jobs one at a time", flush=True)
                overhead = queue_overhead(url, {"Authorization": f"Bearer {token}"}, database_url, args.queue_jobs)
                print("queue", json.dumps({k: v for k, v in overhead.items() if k != "samples_ms"}), flush=True)
    finally:
        for process in reversed(processes):
            _stop(process)
        for process in _STARTED:
            _stop(process)
        redis.Redis.from_url(REDIS_URL).flushdb()
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        shutil.rmtree(work, ignore_errors=True)

    results = _results(args, closed_loop, mixed, overhead, loadavg_before, began)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps({"clara_vs_bare": {server: phase["clara_vs_bare"] for server, phase in closed_loop.items()},
                      "met": results["met"], "seconds_total": results["seconds_total"]}, indent=1))
    print(f"Wrote {args.output}")
    return 0


def _find_server(url: str) -> subprocess.Popen:
    """The started Clara process serving url (the gunicorn one the comparison left running)."""
    port = url.rsplit(":", 1)[1]
    return next(process for process in _STARTED if process.poll() is None and f"127.0.0.1:{port}" in
                " ".join(map(str, process.args)))


def _results(args: argparse.Namespace, closed_loop: dict[str, Any], mixed: dict[str, Any], overhead: dict[str, Any],
             loadavg_before: tuple[float, float, float], began: float) -> dict[str, Any]:
    """Everything measured, the targets and whether each is met."""
    met: dict[str, Any] = {f"{server} {route}": ok for server, phase in closed_loop.items()
                           for route, ok in phase["met"].items()}
    if mixed:
        met["poll_p99_ms"] = mixed["poll"].get("p99_ms", float("inf")) < TARGETS["poll_p99_ms"]
        met["submit_p99_ms"] = mixed["submit"].get("p99_ms", float("inf")) < TARGETS["submit_p99_ms"]
        met["errors"] = sum(phase.get("errors", 0) for phase in mixed.values()) == TARGETS["errors"]
    if overhead:
        met["queue_to_running_median_ms"] = overhead["median_ms"] < TARGETS["queue_to_running_median_ms"]
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": [round(v, 2) for v in loadavg_before],
                    "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                    "note": "wrk, PostgreSQL, Redis and the servers share these CPUs; other work on the machine "
                            "shows in the load averages"},
        "closed_loop": {
            "tool": f"wrk -t {args.wrk_threads} -c {args.connections} -d {args.wrk_seconds:g}s (closed loop)",
            "routes": {"job": "GET /api/training/jobs/<id>, rotating over the queued jobs",
                       "list": "GET /api/training/jobs (a page of 20)"},
            "reference": "benchmarks.bench_api:bare_app(), served by the same server",
            "log_level": "WARNING (no per-request log lines in either app)",
            **closed_loop},
        "mixed_load": {
            "server": "gunicorn " + " ".join(GUNICORN[1:]),
            "load": {"seconds": args.seconds, "pollers": args.pollers, "poll_interval_s": args.poll_interval,
                     "submitters": args.submitters, "submit_interval_s": args.submit_interval,
                     "client": "a second process; one thread and requests.Session per client, each on a fixed "
                               "schedule (open loop); latency from send to the whole body read"},
            **mixed},
        "queue_overhead": overhead,
        "targets": TARGETS,
        "met": met,
        "seconds_total": round(time.monotonic() - began, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
