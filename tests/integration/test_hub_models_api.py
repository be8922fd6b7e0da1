"""Hub model ids are refused unless hub models are on and the id is on the allowlist."""

from __future__ import annotations

from typing import Any

import pytest

JOB = {"job_name": "hub", "dataset_path": "demo-train.jsonl", "hyperparameters": {"max_steps": 5}}
ALLOWED = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    """Hub models on, with one id allowed."""
    return {**settings_overrides, "allow_hub_models": True, "hub_model_allowlist": (ALLOWED,)}


def test_an_allowed_hub_id_is_queued_as_given(client, trainer, queue_length):
    response = client.post("/api/training/jobs", headers=trainer, json={**JOB, "base_model": ALLOWED})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["base_model"] == ALLOWED
    assert queue_length("gpu") == 1


@pytest.mark.parametrize("hub_id", ["gpt2", "someone/evil-model", "tinyllama/tinyllama-1.1b-chat-v1.0"])
def test_a_hub_id_off_the_allowlist_is_422_naming_base_model(client, trainer, db, queue_length, hub_id):
    response = client.post("/api/training/jobs", headers=trainer, json={**JOB, "base_model": hub_id})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert "CLARA_HUB_MODEL_ALLOWLIST" in error["details"]["fields"]["base_model"][0]
    assert queue_length("gpu") == 0
    with db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM training_jobs")
        assert cur.fetchone()["n"] == 0


def test_a_local_model_directory_still_wins(client, trainer, storage):
    response = client.post("/api/training/jobs", headers=trainer, json={**JOB, "base_model": "tiny-llama"})
    assert response.status_code == 202
    assert response.get_json()["base_model"] == str(storage["models"] / "tiny-llama")
