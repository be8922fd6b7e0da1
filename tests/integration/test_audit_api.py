"""The audit log: what is recorded, in the action's transaction, and GET /api/audit for admins."""

from __future__ import annotations

import io

import pytest

from records import audit, jobs
from tests.integration.conftest import PASSWORD

JOB = {"job_name": "faq", "base_model": "tiny-llama", "dataset_path": "demo-train.jsonl",
       "hyperparameters": {"max_steps": 5}}


def _entries(client, admin, query: str = "") -> list[dict]:
    response = client.get(f"/api/audit{query}", headers=admin)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["object"] == "list"
    return body["data"]


def test_actions_are_audited_with_actor_object_and_time(client, admin, trainer, analyst, db):
    job = client.post("/api/training/jobs", headers=trainer, json=JOB).get_json()
    client.post(f"/api/training/jobs/{job['id']}/cancel", headers=trainer)
    other = client.post("/api/training/jobs", headers=trainer, json=JOB).get_json()
    client.delete(f"/api/training/jobs/{other['id']}", headers=admin)
    upload = client.post("/api/datasets/upload", headers=analyst, content_type="multipart/form-data",
                         data={"file": (io.BytesIO(b'{"text": "Wohnsitz anmelden."}\n'), "a.jsonl")}).get_json()
    build = client.post("/api/datasets", headers=analyst, json={"name": "all", "sources": [{"type": "postgres"}]})
    client.post(f"/api/datasets/{build.get_json()['id']}/cancel", headers=analyst)
    client.delete(f"/api/datasets/{upload['id']}", headers=analyst)
    user = client.post("/api/users", headers=admin, json={"username": "new.user", "password": PASSWORD,
                                                          "role": "trainer"}).get_json()
    client.patch(f"/api/users/{user['id']}", headers=admin, json={"disabled": True})

    seen = {(e["actor"], e["action"], e["object_type"], e["object_id"]) for e in _entries(client, admin, "?limit=200")}
    assert {
        ("trainer-user", "training_job.submit", "training_job", job["id"]),
        ("trainer-user", "training_job.cancel", "training_job", job["id"]),
        ("admin-user", "training_job.delete", "training_job", other["id"]),
        ("analyst-user", "dataset.upload", "dataset", upload["id"]),
        ("analyst-user", "dataset.build", "dataset", build.get_json()["id"]),
        ("analyst-user", "dataset.cancel", "dataset", build.get_json()["id"]),
        ("analyst-user", "dataset.delete", "dataset", upload["id"]),
        ("admin-user", "user.create", "user", str(user["id"])),
        ("admin-user", "user.disable", "user", str(user["id"])),
    } <= seen
    entry = _entries(client, admin, f"?object_id={job['id']}&action=training_job.submit")[0]
    assert set(entry) == {"object", "id", "created_at", "actor", "action", "object_type", "object_id", "details"}
    assert entry["details"] == {"job_name": "faq", "trainer_type": "lora"} and entry["created_at"]


def test_logins_are_audited_and_unknown_usernames_are_not_stored(client, admin):
    client.post("/api/auth/login", json={"username": "admin-user", "password": "wrong-password-1"})
    client.post("/api/auth/login", json={"username": "my-password-typed-here", "password": "x"})
    failed = _entries(client, admin, "?action=auth.login_failed")
    assert [e["actor"] for e in failed] == ["(unknown user)", "admin-user"]
    assert all("my-password-typed-here" not in str(e) for e in _entries(client, admin, "?limit=200"))
    assert _entries(client, admin, "?action=auth.login&actor=admin-user")


def test_refused_actions_leave_no_entry(client, admin, user_headers):
    owner = user_headers("trainer", "owner")
    intruder = user_headers("trainer", "intruder")
    job = client.post("/api/training/jobs", headers=owner, json=JOB).get_json()
    assert client.post(f"/api/training/jobs/{job['id']}/cancel", headers=intruder).status_code == 404
    client.post(f"/api/training/jobs/{job['id']}/cancel", headers=owner)
    # A cancel of a job that already ended is refused, and its audit row is rolled back with it.
    assert client.post(f"/api/training/jobs/{job['id']}/cancel", headers=owner).status_code == 409
    actions = [(e["actor"], e["action"]) for e in _entries(client, admin, f"?object_id={job['id']}")]
    assert actions == [("owner", "training_job.cancel"), ("owner", "training_job.submit")]


def test_audit_row_is_in_the_actions_transaction(db):
    with db.transaction() as cur:
        cur.execute("INSERT INTO users (username, password_hash, role) VALUES ('t', 'x', 'trainer') RETURNING id")
        db_user = cur.fetchone()["id"]
    owner = audit.Entry(db_user, "t", "training_job.submit", "training_job")
    jobs.create_job(db, job_name="a", trainer_type="lora", base_model="m", dataset_path="d.jsonl",
                    hyperparameters={}, metadata={}, owner_id=db_user, max_active=1, audit_entry=owner)
    with pytest.raises(jobs.QuotaExceeded):
        jobs.create_job(db, job_name="b", trainer_type="lora", base_model="m", dataset_path="d.jsonl",
                        hyperparameters={}, metadata={}, owner_id=db_user, max_active=1, audit_entry=owner)
    rows, _ = audit.list_entries(db, actor="t", action=None, object_id=None, limit=10, after=None)
    assert len(rows) == 1


def test_audit_paginates_newest_first_and_filters(client, admin):
    for index in range(5):
        client.post("/api/users", headers=admin, json={"username": f"user{index}", "password": PASSWORD,
                                                       "role": "analyst"})
    first = client.get("/api/audit?action=user.create&limit=2", headers=admin).get_json()
    assert first["has_more"] is True and len(first["data"]) == 2
    ids = [e["id"] for e in first["data"]]
    assert ids == sorted(ids, reverse=True)
    rest = client.get(f"/api/audit?action=user.create&limit=10&after={ids[-1]}", headers=admin).get_json()
    assert rest["has_more"] is False and len(rest["data"]) == 3
    assert all(e["id"] < ids[-1] for e in rest["data"])
    assert [e["details"]["username"] for e in first["data"] + rest["data"]] == [f"user{i}" for i in range(4, -1, -1)]
    assert _entries(client, admin, "?actor=nobody") == []


@pytest.mark.parametrize("role", ["trainer", "analyst"])
def test_only_admins_read_the_audit_log(client, user_headers, role):
    response = client.get("/api/audit", headers=user_headers(role))
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    assert client.get("/api/audit").status_code == 401
