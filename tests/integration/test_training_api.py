"""Submitting, listing, following and cancelling training jobs over the API, on the real broker."""

from __future__ import annotations

import json
import uuid

import pytest

JOB = {"job_name": "faq", "base_model": "tiny-llama", "dataset_path": "demo-train.jsonl",
       "hyperparameters": {"max_steps": 5}}


def _submit(client, headers, **changes):
    return client.post("/api/training/jobs", headers=headers, json={**JOB, **changes})


def _job_rows(db) -> int:
    with db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM training_jobs")
        return cur.fetchone()["n"]


def test_submit_records_and_queues_the_job(client, trainer, queue_length, storage):
    response = _submit(client, trainer, metadata={"team": "bürgerservice"})
    assert response.status_code == 202
    job = response.get_json()
    assert job["status"] == "queued" and job["is_terminal"] is False
    assert job["owner"] == "trainer-user" and job["attempts"] == 0 and job["error"] is None
    assert job["base_model"] == str(storage["models"] / "tiny-llama")
    assert job["hyperparameters"]["max_steps"] == 5 and job["hyperparameters"]["lora_rank"] == 8
    assert job["metadata"] == {"team": "bürgerservice"}
    assert job["progress"]["step"] == 0
    assert queue_length("gpu") == 1
    events = client.get(f"/api/training/jobs/{job['id']}/events", headers=trainer).get_json()
    assert [e["message"] for e in events["data"]] == ["Job created.", "Job queued."]


def test_message_on_the_broker_names_the_job(client, trainer, redis_url):
    import redis

    job = _submit(client, trainer).get_json()
    message = json.loads(redis.Redis.from_url(redis_url).lindex("gpu", 0))
    assert message["headers"]["task"] == "clara.train_job"
    assert message["headers"]["id"] == job["id"]
    # Flower shows these arguments: the job's id and name rather than an opaque blob.
    assert message["headers"]["argsrepr"] == f"({job['id']!r},) faq"


def test_empty_hyperparameters_get_every_default(client, trainer):
    job = _submit(client, trainer, hyperparameters={}).get_json()
    assert job["hyperparameters"]["learning_rate"] == 2e-4
    assert job["hyperparameters"]["max_steps"] is None


@pytest.mark.parametrize("changes,field", [
    ({"owner": "someone"}, "owner"),
    ({"status": "completed"}, "status"),
    ({"job_name": ""}, "job_name"),
    ({"job_name": None}, "job_name"),
    ({"trainer_type": "magic"}, "trainer_type"),
    ({"trainer_type": "continuous"}, "parent_job_id"),
    ({"parent_job_id": str(uuid.uuid4())}, "parent_job_id"),
    ({"trainer_type": "continuous", "parent_job_id": str(uuid.uuid4())}, "parent_job_id"),
    ({"hyperparameters": {"quantization_bits": 4}}, "hyperparameters.quantization_bits"),
    ({"trainer_type": "qlora", "hyperparameters": {"quantization_bits": 3}}, "hyperparameters.quantization_bits"),
    ({"hyperparameters": {"replay_fraction": 0.5}}, "hyperparameters.replay_fraction"),
    ({"hyperparameters": {"packing": "yes"}}, "hyperparameters.packing"),
    ({"hyperparameters": {"gradient_checkpointing": "on"}}, "hyperparameters.gradient_checkpointing"),
    ({"hyperparameters": {"validation_split": 0.9}}, "hyperparameters.validation_split"),
    ({"hyperparameters": {"save_total_limit": 0}}, "hyperparameters.save_total_limit"),
    ({"hyperparameters": {"learning_rate": -1}}, "hyperparameters.learning_rate"),
    ({"hyperparameters": {"learning_rate": "0.1"}}, "hyperparameters.learning_rate"),
    ({"hyperparameters": {"lora_rank": "8"}}, "hyperparameters.lora_rank"),
    ({"hyperparameters": {"lora_rank": 2.5}}, "hyperparameters.lora_rank"),
    ({"hyperparameters": {"max_steps": 10**9}}, "hyperparameters.max_steps"),
    ({"hyperparameters": {"batch_size": 0}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"lora_dropout": 1.5}}, "hyperparameters.lora_dropout"),
    ({"hyperparameters": {"target_modules": "q_proj"}}, "hyperparameters.target_modules"),
    ({"hyperparameters": {"target_modules": ["q_proj; rm -rf"]}}, "hyperparameters.target_modules"),
    ({"hyperparameters": {"epochs": 3}}, "hyperparameters.epochs"),
    ({"hyperparameters": []}, "hyperparameters"),
    ({"dataset_path": "../outside.jsonl"}, "dataset_path"),
    ({"dataset_path": "/etc/passwd"}, "dataset_path"),
    ({"dataset_path": "missing.jsonl"}, "dataset_path"),
    ({"dataset_path": "notes.txt"}, "dataset_path"),
    ({"base_model": "../../etc"}, "base_model"),
    ({"base_model": "/usr/lib"}, "base_model"),
    ({"base_model": "no-such-model"}, "base_model"),
    ({"metadata": "x"}, "metadata"),
    ({"metadata": {"blob": "x" * 20000}}, "metadata"),
])
def test_bad_input_names_the_field_and_queues_nothing(client, trainer, db, queue_length, changes, field):
    response = _submit(client, trainer, **changes)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["details"]["fields"], error
    assert field in error["message"]
    assert queue_length("gpu") == 0 and _job_rows(db) == 0


def test_several_problems_are_reported_together(client, trainer):
    response = _submit(client, trainer, hyperparameters={"learning_rate": 5, "batch_size": -1, "seed": "x"})
    fields = response.get_json()["error"]["details"]["fields"]
    assert {"hyperparameters.learning_rate", "hyperparameters.batch_size", "hyperparameters.seed"} <= set(fields)


def test_dataset_with_bad_records_names_the_lines(client, trainer, storage, db):
    (storage["data"] / "bad.jsonl").write_text('{"text": "fine"}\n{"text": 3}\nnot json\n')
    response = _submit(client, trainer, dataset_path="bad.jsonl")
    assert response.status_code == 422
    message = response.get_json()["error"]["details"]["fields"]["dataset_path"][0]
    assert "line 2" in message and "line 3" in message
    assert _job_rows(db) == 0


def test_symlink_out_of_the_data_directory_is_refused(client, trainer, storage, tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"text": "secret"}\n')
    (storage["data"] / "link.jsonl").symlink_to(outside)
    response = _submit(client, trainer, dataset_path="link.jsonl")
    assert response.status_code == 422
    assert "outside" in response.get_json()["error"]["details"]["fields"]["dataset_path"][0]


@pytest.mark.parametrize("data,content_type,status,code", [
    (b'{"job_name": ', "application/json", 400, "invalid_json"),
    (b"job_name=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (b"[1, 2]", "application/json", 422, "validation_error"),
])
def test_malformed_bodies_are_clear_4xx(client, trainer, queue_length, data, content_type, status, code):
    response = client.post("/api/training/jobs", headers=trainer, data=data, content_type=content_type)
    assert response.status_code == status
    assert response.is_json and response.get_json()["error"]["code"] == code
    assert queue_length("gpu") == 0


def test_oversized_body_is_413(client, trainer):
    big = json.dumps({**JOB, "metadata": {"x": "y" * (2 * 1024 * 1024)}})
    response = client.post("/api/training/jobs", headers=trainer, data=big, content_type="application/json")
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "payload_too_large"


def test_analyst_cannot_submit_or_cancel(client, trainer, analyst):
    assert _submit(client, analyst).status_code == 403
    job = _submit(client, trainer).get_json()
    assert client.post(f"/api/training/jobs/{job['id']}/cancel", headers=analyst).status_code == 403
    assert client.get(f"/api/training/jobs/{job['id']}", headers=analyst).status_code == 200


def test_no_token_is_401_on_every_job_route(client):
    job_id = uuid.uuid4()
    for method, path in [("get", "/api/training/jobs"), ("post", "/api/training/jobs"),
                         ("get", f"/api/training/jobs/{job_id}"), ("get", f"/api/training/jobs/{job_id}/events"),
                         ("post", f"/api/training/jobs/{job_id}/cancel"), ("delete", f"/api/training/jobs/{job_id}"),
                         ("get", f"/api/training/jobs/{job_id}/adapter")]:
        response = getattr(client, method)(path)
        assert response.status_code == 401, (method, path)


def test_trainers_see_only_their_own_jobs(client, user_headers, admin):
    alice, bob = user_headers("trainer", "alice"), user_headers("trainer", "bob")
    job = _submit(client, alice).get_json()
    for method, suffix in [("get", ""), ("get", "/events"), ("get", "/adapter"), ("post", "/cancel"), ("delete", "")]:
        response = getattr(client, method)(f"/api/training/jobs/{job['id']}{suffix}", headers=bob)
        assert response.status_code == 404, suffix
        assert response.get_json()["error"]["code"] == "job_not_found"
    assert client.get("/api/training/jobs", headers=bob).get_json()["data"] == []
    assert [j["id"] for j in client.get("/api/training/jobs", headers=admin).get_json()["data"]] == [job["id"]]
    assert client.post(f"/api/training/jobs/{job['id']}/cancel", headers=admin).status_code == 200


def test_cancel_queued_job_then_cancel_again_is_409(client, trainer):
    job = _submit(client, trainer).get_json()
    cancelled = client.post(f"/api/training/jobs/{job['id']}/cancel", headers=trainer)
    assert cancelled.status_code == 200
    body = cancelled.get_json()
    assert body["status"] == "cancelled" and body["is_terminal"] is True and body["finished_at"]
    again = client.delete(f"/api/training/jobs/{job['id']}", headers=trainer)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "job_not_cancellable"


def test_delete_cancels_and_keeps_the_record(client, trainer):
    job = _submit(client, trainer).get_json()
    assert client.delete(f"/api/training/jobs/{job['id']}", headers=trainer).get_json()["status"] == "cancelled"
    assert client.get(f"/api/training/jobs/{job['id']}", headers=trainer).get_json()["status"] == "cancelled"


def test_list_paginates_newest_first_and_filters(client, trainer):
    ids = [_submit(client, trainer, job_name=f"job-{i}").get_json()["id"] for i in range(5)]
    client.post(f"/api/training/jobs/{ids[0]}/cancel", headers=trainer)
    page = client.get("/api/training/jobs?limit=2", headers=trainer).get_json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [j["id"] for j in page["data"]] == ids[:-3:-1]
    rest = client.get(f"/api/training/jobs?limit=10&after={page['data'][-1]['id']}", headers=trainer).get_json()
    assert [j["id"] for j in rest["data"]] == ids[2::-1] and rest["has_more"] is False
    cancelled = client.get("/api/training/jobs?status=cancelled", headers=trainer).get_json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]


@pytest.mark.parametrize("query,field", [("limit=0", "limit"), ("limit=1000", "limit"), ("status=done", "status"),
                                         ("after=not-a-uuid", "after"), (f"after={uuid.uuid4()}", "after"),
                                         ("colour=red", "colour")])
def test_bad_list_queries_name_the_parameter(client, trainer, query, field):
    response = client.get(f"/api/training/jobs?{query}", headers=trainer)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["details"]["fields"]


def test_events_paginate_with_after(client, trainer):
    job = _submit(client, trainer).get_json()
    client.post(f"/api/training/jobs/{job['id']}/cancel", headers=trainer)
    first = client.get(f"/api/training/jobs/{job['id']}/events?limit=2", headers=trainer).get_json()
    assert first["has_more"] is True and len(first["data"]) == 2
    rest = client.get(f"/api/training/jobs/{job['id']}/events?after={first['data'][-1]['id']}",
                      headers=trainer).get_json()
    assert [e["message"] for e in rest["data"]] == ["Job cancelled before it started."]


def test_adapter_of_unfinished_job_is_409(client, trainer):
    job = _submit(client, trainer).get_json()
    response = client.get(f"/api/training/jobs/{job['id']}/adapter", headers=trainer)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "adapter_not_ready"


@pytest.mark.parametrize("method,path,status", [
    ("get", "/api/nothing-here", 404),
    ("get", "/api/training/jobs/not-a-uuid", 404),
    ("put", "/api/training/jobs", 405),
])
def test_routing_errors_are_json(client, trainer, method, path, status):
    response = getattr(client, method)(path, headers=trainer)
    assert response.status_code == status and response.is_json
    assert set(response.get_json()["error"]) == {"code", "message", "details"}


def test_openapi_document_lists_every_route(client):
    spec = client.get("/api/openapi.json").get_json()
    expected = {"/api/auth/login", "/api/training/jobs", "/api/training/jobs/{job_id}/adapter", "/ready"}
    assert expected <= set(spec["paths"])


def _completed_job(db, client, headers, storage, tmp_path) -> dict:
    """A job marked completed with an adapter directory, as a worker would leave it."""
    job = _submit(client, headers).get_json()
    adapter = storage["outputs"] / job["id"]
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = 'completed', adapter_path = %s WHERE id = %s",
                    (str(adapter), job["id"]))
    return job


def test_qlora_jobs_are_accepted_with_their_bits(client, trainer):
    response = _submit(client, trainer, trainer_type="qlora", hyperparameters={"quantization_bits": 8})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["trainer_type"] == "qlora"
    assert response.get_json()["hyperparameters"]["quantization_bits"] == 8


def test_continuous_job_takes_its_parents_base_model_and_shows_lineage(client, trainer, db, storage, tmp_path):
    parent = _completed_job(db, client, trainer, storage, tmp_path)
    body = {"job_name": "faq-2", "trainer_type": "continuous", "parent_job_id": parent["id"],
            "dataset_path": "demo-train.jsonl", "hyperparameters": {"max_steps": 3, "replay_fraction": 0.2}}
    response = client.post("/api/training/jobs", headers=trainer, json=body)
    assert response.status_code == 202, response.get_json()
    child = response.get_json()
    assert child["parent_job_id"] == parent["id"] and child["base_model"] == parent["base_model"]
    shown = client.get(f"/api/training/jobs/{parent['id']}", headers=trainer).get_json()
    assert shown["children"] == [child["id"]] and shown["parent_job_id"] is None


@pytest.mark.parametrize(("given", "refused"), [
    ({"lora_rank": 16}, {"lora_rank"}),
    ({"lora_rank": 8, "lora_alpha": 16.0}, set()),
    ({"lora_alpha": 32, "target_modules": ["v_proj", "q_proj", "o_proj"]}, {"lora_alpha", "target_modules"}),
    ({"target_modules": ["v_proj", "q_proj"], "learning_rate": 1e-3}, set()),
])
def test_continuous_refuses_adapter_settings_its_parent_does_not_have(client, trainer, db, storage, tmp_path,
                                                                      given, refused):
    parent = _completed_job(db, client, trainer, storage, tmp_path)
    (storage["outputs"] / parent["id"] / "adapter_config.json").write_text(
        json.dumps({"r": 8, "lora_alpha": 16.0, "target_modules": ["q_proj", "v_proj"]}))
    body = {"job_name": "faq-2", "trainer_type": "continuous", "parent_job_id": parent["id"],
            "dataset_path": "demo-train.jsonl", "hyperparameters": given}
    response = client.post("/api/training/jobs", headers=trainer, json=body)
    if not refused:
        assert response.status_code == 202, response.get_json()
        return
    assert response.status_code == 422
    fields = response.get_json()["error"]["details"]["fields"]
    assert set(fields) == {f"hyperparameters.{name}" for name in refused}
    for name in refused:
        assert f"leave {name} out" in fields[f"hyperparameters.{name}"][0]


def test_continuous_refuses_another_users_parent_and_an_unfinished_one(client, user_headers, admin, db, storage,
                                                                       tmp_path):
    owner = user_headers("trainer", "ann")
    other = user_headers("trainer", "bob")
    parent = _completed_job(db, client, owner, storage, tmp_path)
    running = _submit(client, owner).get_json()
    body = {"job_name": "c", "trainer_type": "continuous", "dataset_path": "demo-train.jsonl"}
    for headers, parent_id, expected in ((other, parent["id"], "no training job"),
                                         (owner, running["id"], "only a completed job can be continued")):
        response = client.post("/api/training/jobs", headers=headers, json={**body, "parent_job_id": parent_id})
        assert response.status_code == 422
        assert expected in response.get_json()["error"]["details"]["fields"]["parent_job_id"][0]
    # Admins may continue anyone's job.
    response = client.post("/api/training/jobs", headers=admin, json={**body, "parent_job_id": parent["id"]})
    assert response.status_code == 202
    different = {**body, "parent_job_id": parent["id"], "base_model": "other-model"}
    (storage["models"] / "other-model").mkdir()
    response = client.post("/api/training/jobs", headers=owner, json=different)
    assert response.status_code == 422 and "keeps its parent's base model" in response.get_json()["error"]["message"]


def test_checkpoints_are_listed_oldest_first(client, trainer, db):
    job = _submit(client, trainer).get_json()
    assert client.get(f"/api/training/jobs/{job['id']}/checkpoints", headers=trainer).get_json() == {
        "object": "list", "data": []}
    with db.transaction() as cur:
        for step, loss in ((20, 1.5), (10, 2.0)):
            cur.execute("INSERT INTO training_checkpoints (job_id, step, name, path, created_at, metrics)"
                        " VALUES (%s, %s, %s, %s, now(), %s)",
                        (job["id"], step, f"checkpoint-{step}", f"/x/checkpoint-{step}",
                         json.dumps({"train_loss": loss})))
    listing = client.get(f"/api/training/jobs/{job['id']}/checkpoints", headers=trainer).get_json()
    assert [(c["id"], c["step"], c["metrics"]) for c in listing["data"]] == [
        ("checkpoint-10", 10, {"train_loss": 2.0, "eval_loss": None}),
        ("checkpoint-20", 20, {"train_loss": 1.5, "eval_loss": None})]
    assert all(c["object"] == "training.job.checkpoint" and c["created_at"] for c in listing["data"])
    assert "path" not in listing["data"][0]


def test_checkpoints_of_another_trainers_job_are_404(client, user_headers):
    job = _submit(client, user_headers("trainer", "ann")).get_json()
    response = client.get(f"/api/training/jobs/{job['id']}/checkpoints", headers=user_headers("trainer", "bob"))
    assert response.status_code == 404
