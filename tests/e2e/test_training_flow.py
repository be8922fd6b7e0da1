"""A user's whole path over HTTP: log in, submit, poll, download; and cancelling queued and running jobs."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import redis
import requests
import torch

TEXTS = [
    "Die Meldebescheinigung wird nach der Anmeldung der Wohnung im Bürgerbüro ausgestellt.",
    "A residents' parking permit is issued for one year and must be renewed online.",
    "Für den Personalausweis bringen Sie ein biometrisches Passfoto und den alten Ausweis mit.",
    "Building permit applications are checked by the planning office within three months.",
] * 4


def _write_dataset(data_dir: Path) -> str:
    path = data_dir / "e2e.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS), encoding="utf-8")
    return path.name


def _mean_loss(model, tokenizer) -> float:
    model.eval()
    losses = []
    with torch.no_grad():
        for text in TEXTS[:4]:
            batch = tokenizer(text, return_tensors="pt")
            losses.append(model(**batch, labels=batch["input_ids"]).loss.item())
    return sum(losses) / len(losses)


def test_submit_poll_download_and_the_adapter_has_learned(stack, storage, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    admin = stack.login()
    created = requests.post(f"{stack.url}/api/users", headers=admin, timeout=10,
                            json={"username": "tina", "password": "tina-password-long", "role": "trainer"})
    assert created.status_code == 201
    trainer = stack.login("tina", "tina-password-long")
    body = {"job_name": "e2e", "base_model": "tiny-llama", "dataset_path": _write_dataset(storage["data"]),
            "hyperparameters": {"max_steps": 30, "learning_rate": 5e-3, "batch_size": 4, "max_seq_length": 128,
                                "lora_rank": 8, "lora_alpha": 16, "target_modules": "all-linear"}}
    response = requests.post(f"{stack.url}/api/training/jobs", headers=trainer, json=body, timeout=30)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    job = stack.wait_for_job(trainer, job_id, lambda j: j["is_terminal"])
    assert job["status"] == "completed", job
    assert job["attempts"] == 1 and job["worker"]
    assert "Worker child 0 trains on GPU 7." in stack.logs["worker"].read_text()
    assert job["progress"]["step"] == job["progress"]["total_steps"] == 30
    assert job["progress"]["percent"] == 100
    assert job["metrics"]["train_loss"] > 0 and job["metrics"]["trained_tokens"] > 0
    assert job["started_at"] and job["finished_at"] and job["error"] is None
    events = requests.get(f"{stack.url}/api/training/jobs/{job_id}/events?limit=1000", headers=trainer,
                          timeout=10).json()["data"]
    messages = [event["message"] for event in events]
    assert messages[0] == "Job created." and messages[-1] == "Job completed."
    assert any(event["type"] == "progress" for event in events)

    download = requests.get(f"{stack.url}/api/training/jobs/{job_id}/adapter", headers=trainer, timeout=60)
    assert download.status_code == 200 and download.headers["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as archive:
        archive.extractall(tmp_path / "download", filter="data")
    adapter_dir = tmp_path / "download" / job_id
    assert (adapter_dir / "adapter_config.json").is_file()
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert json.loads((adapter_dir / "metrics.json").read_text())["trained_tokens"] > 0

    model_dir = storage["models"] / "tiny-llama"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base_loss = _mean_loss(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir)
    tuned_loss = _mean_loss(tuned, tokenizer)
    assert tuned_loss < base_loss * 0.9, (tuned_loss, base_loss)


def test_cancel_a_running_job_and_a_queued_one(stack, storage, settings_overrides):
    admin = stack.login()
    long_job = {"job_name": "long", "base_model": "tiny-llama", "dataset_path": _write_dataset(storage["data"]),
                "hyperparameters": {"max_steps": 100000, "batch_size": 1, "max_seq_length": 64}}
    running = requests.post(f"{stack.url}/api/training/jobs", headers=admin, json=long_job, timeout=30).json()
    training = stack.wait_for_job(admin, running["id"],
                                  lambda j: j["status"] == "running" and j["progress"]["step"] >= 1, timeout=120)
    # While it trains, the worker names the job it runs and how fast it goes.
    metrics = stack.worker_metrics(lambda m: m.value("clara_worker_training_tokens_per_second") > 0)
    (task,) = metrics.matching("clara_worker_running_task_info")
    assert task.labels["job_id"] == running["id"] and task.labels["task"] == "clara.train_job"
    assert task.labels["pid"] == training["worker"].rsplit("/", 1)[1]
    assert metrics.value("clara_worker_running_tasks", task="clara.train_job") == 1
    queued = requests.post(f"{stack.url}/api/training/jobs", headers=admin, json=long_job, timeout=30).json()
    assert queued["status"] == "queued"

    cancelled = requests.post(f"{stack.url}/api/training/jobs/{queued['id']}/cancel", headers=admin, timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    stopping = requests.delete(f"{stack.url}/api/training/jobs/{running['id']}", headers=admin, timeout=10)
    assert stopping.status_code == 200 and stopping.json()["cancel_requested"] is True

    ended = stack.wait_for_job(admin, running["id"], lambda j: j["is_terminal"], timeout=60)
    assert ended["status"] == "cancelled" and ended["adapter_path"] is None
    assert ended["progress"]["step"] < 100000

    # The worker is free now and takes the cancelled job's message off the queue; it must not run it.
    broker = redis.Redis.from_url(settings_overrides["redis_url"])
    deadline = time.monotonic() + 60
    while broker.llen("gpu") and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(2)
    after = requests.get(f"{stack.url}/api/training/jobs/{queued['id']}", headers=admin, timeout=10).json()
    assert after["status"] == "cancelled" and after["attempts"] == 0 and after["started_at"] is None


def test_a_job_whose_worker_child_is_killed_resumes_from_its_checkpoint(stack, storage):
    import os
    import signal

    admin = stack.login()
    body = {"job_name": "survivor", "base_model": "tiny-llama", "dataset_path": _write_dataset(storage["data"]),
            "hyperparameters": {"max_steps": 400, "batch_size": 1, "max_seq_length": 64, "save_steps": 20}}
    job = requests.post(f"{stack.url}/api/training/jobs", headers=admin, json=body, timeout=30).json()
    checkpoints_url = f"{stack.url}/api/training/jobs/{job['id']}/checkpoints"

    def has_checkpoint(j: dict) -> bool:
        if j["status"] != "running":
            return False
        return bool(requests.get(checkpoints_url, headers=admin, timeout=10).json()["data"])

    running = stack.wait_for_job(admin, job["id"], has_checkpoint, timeout=180)
    child_pid = int(running["worker"].rsplit("/", 1)[1])
    os.kill(child_pid, signal.SIGKILL)
    saved = max(c["step"] for c in requests.get(checkpoints_url, headers=admin, timeout=10).json()["data"])

    done = stack.wait_for_job(admin, job["id"], lambda j: j["is_terminal"], timeout=300)
    assert done["status"] == "completed", done
    assert done["attempts"] == 2 and done["worker"] != running["worker"]
    assert done["progress"]["step"] == 400
    # The second attempt went on from a checkpoint the first one completed, not from step zero.
    resumed = done["metrics"]["resumed_from_step"]
    assert resumed is not None and resumed >= saved > 0
    events = requests.get(f"{stack.url}/api/training/jobs/{job['id']}/events?limit=1000", headers=admin,
                          timeout=10).json()["data"]
    started = [e["message"] for e in events if e["message"].startswith("Attempt ")]
    assert len(started) == 2 and started[1].startswith("Attempt 2 started")
    messages = [e["message"] for e in events]
    assert f"Resuming from the checkpoint at step {resumed}." in messages
    assert messages.index(f"Resuming from the checkpoint at step {resumed}.") > messages.index(started[1])
