"""Listing jobs (GET /api/training/jobs): one query for the token check and the page, same answers as before."""

from __future__ import annotations

import pytest

from api.schemas import JobListSchema
from auth.users import create_user
from records import jobs
from tests.integration.conftest import PASSWORD, count_statements
from tests.integration.test_status_poll import _headers, _job


def _expected(db, owner_id: int | None, *, status: str | None = None, limit: int = 20, after: str | None = None
              ) -> dict:
    """The page as records.jobs.list_jobs reads it, dumped by marshmallow's own JobListSchema."""
    rows, has_more = jobs.list_jobs(db, owner_id=owner_id, status=status, limit=limit, after=after)
    return JobListSchema().dump({"data": rows, "has_more": has_more})


@pytest.mark.parametrize("query", ["", "?status=pending&limit=2", "?after={after}", "?status=pending&after={after}"])
def test_a_list_poll_costs_one_query(client, db, monkeypatch, query):
    tom = create_user(db, "tom", PASSWORD, "trainer")
    ids = [_job(db, tom["id"]) for _ in range(3)]
    headers = _headers(client, "tom")
    path = "/api/training/jobs" + query.format(after=ids[-1])
    # The first request opens the connection and prepares the statement; later ones only run it.
    assert client.get(path, headers=headers).status_code == 200
    executed = count_statements(monkeypatch)
    listed = client.get(path, headers=headers)
    assert listed.status_code == 200 and listed.get_json()["data"]
    assert len(executed) == 1, executed


def test_a_list_page_is_what_list_jobs_returns_for_the_callers_role_as_stored_now(client, db):
    tom = create_user(db, "tom", PASSWORD, "trainer")
    ann = create_user(db, "ann", PASSWORD, "trainer")
    create_user(db, "ada", PASSWORD, "analyst")
    toms = [_job(db, tom["id"]) for _ in range(5)]
    anns = [_job(db, ann["id"]) for _ in range(3)]
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = 'running' WHERE id = ANY(%s::uuid[])", ([toms[1], anns[0]],))
    tom_headers, ann_headers, ada_headers = (_headers(client, name) for name in ("tom", "ann", "ada"))

    # A trainer pages through its own jobs only, with the cursor and the status filter as before.
    seen, after = [], None
    while True:
        query = "?limit=2" + (f"&after={after}" if after else "")
        page = client.get("/api/training/jobs" + query, headers=tom_headers)
        assert page.status_code == 200
        assert page.get_json() == _expected(db, tom["id"], limit=2, after=after)
        seen += [job["id"] for job in page.get_json()["data"]]
        if not page.get_json()["has_more"]:
            break
        after = seen[-1]
    assert seen == toms[::-1]
    running = client.get("/api/training/jobs?status=running", headers=tom_headers).get_json()
    assert running == _expected(db, tom["id"], status="running") and len(running["data"]) == 1
    # An analyst sees every job; past the last job the page is empty.
    assert client.get("/api/training/jobs", headers=ada_headers).get_json() == _expected(db, None)
    last = client.get(f"/api/training/jobs?after={toms[0]}", headers=ada_headers).get_json()
    assert last == {"object": "list", "data": [], "has_more": False}
    # Another trainer's job is no cursor for a trainer, until its role as stored now lets it see every job.
    refused = client.get(f"/api/training/jobs?after={toms[2]}", headers=ann_headers)
    assert refused.status_code == 422 and "after" in refused.get_json()["error"]["details"]["fields"]
    assert client.get("/api/training/jobs", headers=ann_headers).get_json() == _expected(db, ann["id"])
    with db.transaction() as cur:
        cur.execute("UPDATE users SET role = 'admin' WHERE username = 'ann'")
    page = client.get(f"/api/training/jobs?after={toms[2]}&status=pending", headers=ann_headers)
    assert page.status_code == 200 and page.get_json() == _expected(db, None, after=toms[2], status="pending")
    assert anns[0] not in [job["id"] for job in page.get_json()["data"]]


@pytest.mark.parametrize(("change", "code"), [
    ("UPDATE auth_sessions SET revoked_at = now()", "token_revoked"),
    ("UPDATE users SET disabled = true", "unauthorized"),
])
@pytest.mark.parametrize("query", ["?limit=0", "?after=not-a-uuid", "?after=00000000-0000-4000-8000-000000000000",
                                   "?colour=red"])
def test_a_refused_token_answers_401_before_a_bad_query_is_looked_at(client, db, change, code, query):
    tom = create_user(db, "tom", PASSWORD, "trainer")
    _job(db, tom["id"])
    headers = _headers(client, "tom")
    bad = client.get("/api/training/jobs" + query, headers=headers)
    assert bad.status_code == 422 and bad.get_json()["error"]["code"] == "validation_error"
    with db.transaction() as cur:
        cur.execute(change)
    refused = client.get("/api/training/jobs" + query, headers=headers)
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == code
