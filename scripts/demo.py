"""`make demo`: start the API and a GPU-queue worker, train a LoRA adapter over HTTP, follow it, stop both.

Everything is real: the job goes through Redis to a Celery worker that trains the project's tiny
local Llama with peft, and PostgreSQL records it. Logs go to var/logs/.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from settings import SettingsError, load  # noqa: E402

VAR = ROOT / "var"
MODEL_NAME = "tiny-llama"
DATASET = ROOT / "examples" / "demo-train.jsonl"
JOB = {
    "job_name": "demo-citizen-services",
    "trainer_type": "lora",
    "base_model": MODEL_NAME,
    "dataset_path": DATASET.name,
    # Short records are packed into full 256-token rows, so each step trains on about 30 of them.
    "hyperparameters": {"max_steps": 60, "learning_rate": 1e-2, "batch_size": 4, "max_seq_length": 256,
                        "lora_rank": 8, "lora_alpha": 16, "target_modules": "all-linear",
                        "validation_split": 0.1, "save_steps": 20},
    "metadata": {"source": "make demo"},
}
READY_TIMEOUT = 180
JOB_TIMEOUT = 900


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens where the demo's API would."""
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def admin_password() -> str:
    """The demo admin's password: CLARA_BOOTSTRAP_ADMIN_PASSWORD, else one kept in var/admin-password."""
    if os.environ.get("CLARA_BOOTSTRAP_ADMIN_PASSWORD"):
        return os.environ["CLARA_BOOTSTRAP_ADMIN_PASSWORD"]
    path = VAR / "admin-password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(18) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def prepare_files(settings) -> None:
    """Make the tiny base model and put the demo dataset where jobs may read it."""
    model_dir = settings.models_dir / MODEL_NAME
    if not (model_dir / "config.json").exists():
        print(f"Making the tiny local base model in {model_dir} ...")
        subprocess.run([sys.executable, "-m", "trainers.tiny_model", str(model_dir), "--corpus", str(DATASET)],
                       cwd=ROOT, check=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATASET, settings.data_dir / DATASET.name)


def start(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start one part of the stack with its output in var/logs/<name>.log."""
    log = VAR / "logs" / f"demo-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"Starting the {name} (log: {log.relative_to(ROOT)}).")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(processes: list[subprocess.Popen]) -> None:
    """Stop what the demo started: a warm shutdown first, then a kill."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_ready(url: str, processes: list[subprocess.Popen]) -> None:
    """Wait until /ready says PostgreSQL, Redis and a gpu worker all answer."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise SystemExit("A part of the stack exited early; see var/logs/demo-*.log.")
        try:
            response = requests.get(f"{url}/ready", timeout=5)
            if response.status_code == 200:
                return
            last = response.json().get("error", {}).get("message", response.text)
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"The stack was not ready after {READY_TIMEOUT}s: {last}")


def progress_line(job: dict) -> str:
    """One line: a bar, the step, loss, throughput and time left."""
    progress, metrics = job["progress"], job["metrics"]
    percent = progress.get("percent") or 0
    bar = "#" * int(percent // 5) + "." * (20 - int(percent // 5))
    # A finished job's train_loss is the mean over the run; the bar shows the latest step's loss throughout.
    latest = metrics.get("last_loss", metrics.get("train_loss"))
    loss = f"{latest:.3f}" if latest is not None else "-"
    speed = f"{metrics['tokens_per_second']:.0f} tok/s" if metrics.get("tokens_per_second") else "- tok/s"
    eta = f"{progress['eta_seconds']:.0f}s" if progress.get("eta_seconds") is not None else "-"
    return (f"[{bar}] {percent:5.1f}%  step {progress.get('step', 0)}/{progress.get('total_steps') or '?'}"
            f"  loss {loss}  {speed}  eta {eta}  ({job['status']})")


def follow(url: str, headers: dict[str, str], job_id: str) -> dict:
    """Poll the job until it ends, redrawing the progress line."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        job = requests.get(f"{url}/api/training/jobs/{job_id}", headers=headers, timeout=10).json()
        print("\r" + progress_line(job).ljust(100), end="", flush=True)
        if job["is_terminal"]:
            print()
            return job
        time.sleep(0.5)
    print()
    raise SystemExit(f"The job did not end within {JOB_TIMEOUT}s.")


def run_job(url: str, password: str) -> int:
    """Log in, submit the LoRA job, follow it, and report the outcome; the exit status says if it completed."""
    login = requests.post(f"{url}/api/auth/login", json={"username": "admin", "password": password}, timeout=10)
    if login.status_code != 200:
        print("Could not log in as admin: the database already has users with other passwords.\n"
              "Set CLARA_BOOTSTRAP_ADMIN_PASSWORD to admin's password, or point CLARA_DATABASE_URL at a new database.")
        return 1
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    response = requests.post(f"{url}/api/training/jobs", headers=headers, json=JOB, timeout=30)
    if response.status_code != 202:
        print(f"Submitting the job failed with HTTP {response.status_code}: {response.text}")
        return 1
    job = response.json()
    print(f"Submitted LoRA job {job['id']} ({JOB['hyperparameters']['max_steps']} steps on {MODEL_NAME}).")
    job = follow(url, headers, job["id"])
    if job["status"] != "completed":
        print(f"The job ended {job['status']}: {job['error']}")
        return 1
    metrics = job["metrics"]
    print(f"Job completed in {metrics.get('train_runtime_seconds', 0):.1f}s on {job['worker']}.")
    print(f"Adapter: {job['adapter_path']}")
    print(f"Final metrics: train_loss {metrics['train_loss']:.4f} (mean over the run; last step"
          f" {metrics['last_loss']:.4f}), trained_tokens {metrics['trained_tokens']},"
          f" tokens_per_second {metrics['tokens_per_second']:.1f}")
    if metrics.get("eval_loss") is not None:
        print(f"Held-out records: eval_loss {metrics['eval_loss']:.4f}, perplexity {metrics['perplexity']:.1f}"
              f" ({metrics['validation_examples']} records).")
    checkpoints = requests.get(f"{url}/api/training/jobs/{job['id']}/checkpoints", headers=headers, timeout=30).json()
    print("Checkpoints kept: " + ", ".join(f"{c['id']} (train_loss {c['metrics']['train_loss']:.4f})"
                                           for c in checkpoints["data"]))
    print("Download it: curl -H 'Authorization: Bearer ...' -o adapter.tar.gz"
          f" {url}/api/training/jobs/{job['id']}/adapter")
    return 0


def main() -> int:
    """Run the demo and stop everything it started, whatever happens."""
    password = admin_password()
    env = {**os.environ, "CLARA_BOOTSTRAP_ADMIN_PASSWORD": password, "PYTHONUNBUFFERED": "1"}
    try:
        settings = load(environ=env)
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    prepare_files(settings)
    url = f"http://{settings.api_host}:{settings.api_port}"
    if port_taken(settings.api_host, settings.api_port):
        raise SystemExit(f"Port {settings.api_port} is taken; stop what uses it or set CLARA_API_PORT.")
    processes = []
    try:
        processes.append(start("api", [sys.executable, "-m", "api"], env))
        processes.append(start("worker", [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "gpu",
                                          "--concurrency", "1", "--loglevel", "INFO", "-n", "demo-gpu@%h"], env))
        wait_ready(url, processes)
        print(f"API at {url} and a gpu worker are ready. Log in as admin with the password in var/admin-password.")
        return run_job(url, password)
    finally:
        stop(processes)
        print("Stopped the API and the worker.")


if __name__ == "__main__":
    sys.exit(main())
