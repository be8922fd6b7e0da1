"""A status poll (GET /api/training/jobs/<id>): one query for the token check and the job, same answers as before."""

from __future__ import annotations

import time
from datetime import timedelta

import jwt
import pytest
from flask_jwt_extended import create_access_token

from api.schemas import JobSchema
from auth.tokens import issue_tokens
from auth.users import create_user
from records import jobs
from tests.integration.conftest import PASSWORD, count_statements


def _job(db, owner_id: int) -> str:
    """A queued-looking job of the owner, written straight to PostgreSQL (no broker needed)."""
    return str(jobs.create_job(db, job_name="poll", trainer_type="lora", base_model="/m", dataset_path="/d.jsonl",
                               hyperparameters={"max_steps": 1}, metadata={}, owner_id=owner_id)["id"])


def _headers(client, username: str) -> dict[str, str]:
    login = client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    assert login.status_code == 200, login.get_json()
    return {"Authorization": f"Bearer {login.get_json()['access_token']}"}


def test_a_job_poll_costs_one_query(client, db, monkeypatch):
    owner = create_user(db, "tom", PASSWORD, "trainer")
    job_id = _job(db, owner["id"])
    headers = _headers(client, "tom")
    # The first poll opens the connection and prepares the statement; later ones only run it.
    assert client.get(f"/api/training/jobs/{job_id}", headers=headers).status_code == 200
    executed = count_statements(monkeypatch)
    poll = client.get(f"/api/training/jobs/{job_id}", headers=headers)
    assert poll.status_code == 200 and poll.get_json()["id"] == job_id
    assert len(executed) == 1, executed


def test_a_job_poll_answers_the_job_as_stored_to_whoever_may_see_it_by_their_current_role(client, db):
    tom = create_user(db, "tom", PASSWORD, "trainer")
    create_user(db, "ann", PASSWORD, "trainer")
    create_user(db, "ada", PASSWORD, "analyst")
    job_id = _job(db, tom["id"])
    tom_headers, ann_headers, ada_headers = (_headers(client, name) for name in ("tom", "ann", "ada"))
    expected = JobSchema().dump(jobs.get_job(db, job_id))

    assert client.get(f"/api/training/jobs/{job_id}", headers=tom_headers).get_json() == expected
    assert client.get(f"/api/training/jobs/{job_id}", headers=ada_headers).get_json() == expected
    hidden = client.get(f"/api/training/jobs/{job_id}", headers=ann_headers)
    assert hidden.status_code == 404 and hidden.get_json()["error"]["code"] == "job_not_found"
    # The role counts as stored now, not as when the token was signed.
    with db.transaction() as cur:
        cur.execute("UPDATE users SET role = 'admin' WHERE username = 'ann'")
    assert client.get(f"/api/training/jobs/{job_id}", headers=ann_headers).get_json() == expected
    missing = client.get("/api/training/jobs/00000000-0000-4000-8000-000000000000", headers=tom_headers)
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "job_not_found"


@pytest.mark.parametrize(("change", "code"), [
    ("UPDATE auth_sessions SET revoked_at = now()", "token_revoked"),
    ("UPDATE users SET token_version = token_version + 1", "token_revoked"),
    ("UPDATE users SET disabled = true", "unauthorized"),
    ("DELETE FROM users WHERE username = 'tom'", "unauthorized"),
])
def test_a_job_poll_refuses_a_token_that_no_longer_counts_even_for_an_existing_job(client, db, change, code):
    tom = create_user(db, "tom", PASSWORD, "trainer")
    admin = create_user(db, "root", PASSWORD, "admin")
    job_id = _job(db, admin["id"] if "DELETE" in change else tom["id"])
    headers = _headers(client, "tom")
    assert client.get(f"/api/training/jobs/{job_id}" if "DELETE" not in change else "/api/training/jobs",
                      headers=headers).status_code == 200
    with db.transaction() as cur:
        cur.execute(change)
    refused = client.get(f"/api/training/jobs/{job_id}", headers=headers)
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == code
    listed = client.get("/api/training/jobs", headers=headers)
    assert listed.status_code == 401 and listed.get_json()["error"]["code"] == code


def test_a_verified_token_is_refused_once_it_expires(app, client, db):
    tom = create_user(db, "tom", PASSWORD, "trainer")
    job_id = _job(db, tom["id"])
    with app.app_context():
        claims = jwt.decode(issue_tokens(tom)["access_token"], options={"verify_signature": False})
        short = create_access_token(str(tom["id"]), expires_delta=timedelta(seconds=1),
                                    additional_claims={key: claims[key] for key in ("role", "username", "sid", "ver")})
    headers = {"Authorization": f"Bearer {short}"}
    # Verified once and then answered from the verified tokens, for both routes.
    for _ in range(2):
        assert client.get(f"/api/training/jobs/{job_id}", headers=headers).status_code == 200
        assert client.get("/api/training/jobs", headers=headers).status_code == 200
    time.sleep(1.2)  # exp has whole seconds: the token lapses within 1 s of signing.
    for path in (f"/api/training/jobs/{job_id}", "/api/training/jobs"):
        expired = client.get(path, headers=headers)
        assert expired.status_code == 401 and expired.get_json()["error"]["code"] == "token_expired"


def test_a_token_signed_with_another_key_is_refused_after_a_valid_one_was_verified(app, client, db):
    tom = create_user(db, "tom", PASSWORD, "trainer")
    job_id = _job(db, tom["id"])
    headers = _headers(client, "tom")
    assert client.get(f"/api/training/jobs/{job_id}", headers=headers).status_code == 200
    token = headers["Authorization"].split()[1]
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(claims, "another-secret-that-is-long-enough-for-hs256", algorithm="HS256")
    for path in (f"/api/training/jobs/{job_id}", "/api/training/jobs"):
        refused = client.get(path, headers={"Authorization": f"Bearer {forged}"})
        assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "invalid_token"
