"""Server-Sent Events of training and dataset jobs: order, resumption, closing, and who may follow them."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid

import pytest

from api.streams import event_stream
from records import datasets, jobs
from records.jobs import DATASETS, TRAINING, add_event


def _parse(body: str) -> list[dict]:
    """The events of an SSE body, with their id, name and decoded data; comments and retry lines dropped."""
    events = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
                      and ": " in line)
        if "data" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return events


def _user_id(client, headers) -> int:
    return client.get("/api/auth/me", headers=headers).get_json()["id"]


def _job(db, owner_id: int, status: str = "running") -> uuid.UUID:
    job = jobs.create_job(db, job_name="stream", trainer_type="lora", base_model="m", dataset_path="d.jsonl",
                          hyperparameters={}, metadata={}, owner_id=owner_id)
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = %s, started_at = now() WHERE id = %s", (status, job["id"]))
    return job["id"]


def _finish(db, job_id, status: str = "completed", kind=TRAINING) -> None:
    """End a job as attempts.finish does: the status and its event in one transaction."""
    with db.transaction() as cur:
        cur.execute(kind.query("UPDATE {table} SET status = %s, finished_at = now() WHERE id = %s"), (status, job_id))
        add_event(cur, job_id, "status", f"Job {status}.", data={"status": status}, kind=kind)


def _event_ids(db, job_id, kind=TRAINING) -> list[int]:
    with db.transaction() as cur:
        cur.execute(kind.query("SELECT id FROM {events} WHERE job_id = %s ORDER BY id"), (job_id,))
        return [row["id"] for row in cur.fetchall()]


@pytest.fixture
def finished_job(db, client, trainer) -> uuid.UUID:
    """A trainer's job with a progress, a log and a terminal status event after its creation."""
    job_id = _job(db, _user_id(client, trainer))
    with db.transaction() as cur:
        add_event(cur, job_id, "progress", "Step 5 of 10.", data={"step": 5, "train_loss": 2.5})
        add_event(cur, job_id, "log", "Checkpoint saved at step 5.", data={"checkpoint": {"step": 5}})
    _finish(db, job_id)
    return job_id


def test_a_finished_job_streams_every_event_in_order_and_closes(client, db, trainer, finished_job):
    started = time.monotonic()
    response = client.get(f"/api/training/jobs/{finished_job}/events/stream", headers=trainer)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["X-Accel-Buffering"] == "no"
    body = response.get_data(as_text=True)
    assert time.monotonic() - started < 2, "a finished job's stream must close at once"
    assert body.startswith("retry: ")
    events = _parse(body)
    assert [e["id"] for e in events] == _event_ids(db, finished_job)
    assert [e["event"] for e in events] == ["status", "progress", "log", "status"]
    assert [e["data"]["id"] for e in events] == [e["id"] for e in events]
    assert events[1]["data"]["data"] == {"step": 5, "train_loss": 2.5}
    assert events[-1]["data"]["data"] == {"status": "completed"} and events[-1]["data"]["message"] == "Job completed."


def test_last_event_id_resumes_after_that_event(client, db, trainer, finished_job):
    ids = _event_ids(db, finished_job)
    url = f"/api/training/jobs/{finished_job}/events/stream"
    resumed = _parse(client.get(url, headers={**trainer, "Last-Event-ID": str(ids[1])}).get_data(as_text=True))
    assert [e["id"] for e in resumed] == ids[2:]
    by_query = _parse(client.get(f"{url}?after={ids[2]}", headers=trainer).get_data(as_text=True))
    assert [e["id"] for e in by_query] == ids[3:]
    # The header is what a reconnecting EventSource sends, so it wins over a stale query.
    both = _parse(client.get(f"{url}?after=0", headers={**trainer, "Last-Event-ID": str(ids[2])})
                  .get_data(as_text=True))
    assert [e["id"] for e in both] == ids[3:]


def test_a_running_job_streams_new_events_until_it_ends(client, db, trainer):
    job_id = _job(db, _user_id(client, trainer))

    def _train() -> None:
        time.sleep(0.8)
        with db.transaction() as cur:
            add_event(cur, job_id, "progress", "Step 1 of 2.", data={"step": 1})
        time.sleep(0.8)
        _finish(db, job_id, "failed")

    worker = threading.Thread(target=_train)
    worker.start()
    try:
        body = client.get(f"/api/training/jobs/{job_id}/events/stream", headers=trainer).get_data(as_text=True)
    finally:
        worker.join()
    events = _parse(body)
    assert [e["event"] for e in events] == ["status", "progress", "status"]
    assert [e["id"] for e in events] == _event_ids(db, job_id)
    assert events[-1]["data"]["data"]["status"] == "failed"


def test_a_stream_ends_at_its_time_limit_and_the_client_resumes(app, client, db, trainer):
    app.extensions["clara_settings"] = dataclasses.replace(app.extensions["clara_settings"], stream_max_seconds=1)
    job_id = _job(db, _user_id(client, trainer))
    url = f"/api/training/jobs/{job_id}/events/stream"
    started = time.monotonic()
    first = _parse(client.get(url, headers=trainer).get_data(as_text=True))
    assert 1 <= time.monotonic() - started < 4
    assert [e["id"] for e in first] == _event_ids(db, job_id)
    _finish(db, job_id)
    rest = _parse(client.get(url, headers={**trainer, "Last-Event-ID": str(first[-1]["id"])}).get_data(as_text=True))
    assert [e["data"]["message"] for e in rest] == ["Job completed."]


def test_an_idle_stream_sends_keep_alive_comments(db, client, trainer):
    job_id = _job(db, _user_id(client, trainer))
    frames = list(event_stream(db, job_id, TRAINING, after=_event_ids(db, job_id)[-1], max_seconds=0.5,
                               poll_seconds=0.05, keepalive_seconds=0.1))
    assert ": keep-alive\n\n" in frames
    assert not _parse("".join(frames))


def test_another_trainers_job_is_not_found_but_analysts_and_admins_follow_it(client, user_headers, finished_job,
                                                                              analyst, admin):
    other = user_headers("trainer", "other-trainer")
    url = f"/api/training/jobs/{finished_job}/events/stream"
    response = client.get(url, headers=other)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "job_not_found"
    assert client.get(url, headers=analyst).status_code == 200
    assert client.get(url, headers=admin).status_code == 200


def test_streams_need_a_token(client, finished_job):
    for url in (f"/api/training/jobs/{finished_job}/events/stream", f"/api/datasets/{uuid.uuid4()}/events/stream"):
        response = client.get(url)
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("query,headers,field", [
    ("?after=x", {}, "after"), ("?after=-1", {}, "after"), ("", {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    ("?sneaky=1", {}, "sneaky"), ("?after=%C2%B2", {}, "after"),
    # More digits than int() converts (4,300) used to answer 500; more than a bigint holds is no event id either.
    ("?after=" + "9" * 5000, {}, "after"), ("", {"Last-Event-ID": "9" * 5000}, "Last-Event-ID"),
    ("?after=9223372036854775808", {}, "after"),
])
def test_bad_cursors_and_unknown_parameters_are_rejected(client, trainer, finished_job, query, headers, field):
    response = client.get(f"/api/training/jobs/{finished_job}/events/stream{query}", headers={**trainer, **headers})
    assert response.status_code == 422
    assert field in response.get_json()["error"]["details"]["fields"]


def test_unknown_job_is_not_found(client, admin):
    response = client.get(f"/api/training/jobs/{uuid.uuid4()}/events/stream", headers=admin)
    assert response.status_code == 404


def test_a_dataset_streams_its_events_and_closes(client, db, analyst, trainer):
    dataset = datasets.create_dataset(db, name="faq", description="", kind="build", spec={},
                                      owner_id=_user_id(client, trainer))
    with db.transaction() as cur:
        add_event(cur, dataset["id"], "progress", "Read 10 documents.", data={"documents": 10}, kind=DATASETS)
    _finish(db, dataset["id"], kind=DATASETS)
    # Every signed-in user reads every dataset, as GET /api/datasets/<id> allows.
    response = client.get(f"/api/datasets/{dataset['id']}/events/stream", headers=analyst)
    assert response.status_code == 200
    events = _parse(response.get_data(as_text=True))
    assert [e["id"] for e in events] == _event_ids(db, dataset["id"], DATASETS)
    assert [e["event"] for e in events] == ["status", "progress", "status"]
    missing = client.get(f"/api/datasets/{uuid.uuid4()}/events/stream", headers=analyst)
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "dataset_not_found"


def test_streams_past_the_limit_answer_503_and_a_closed_one_frees_its_slot(settings_overrides, db, user_headers):
    from api import create_app

    app = create_app({**settings_overrides, "max_streams_per_process": 1})
    client = app.test_client()
    admin = user_headers("admin")
    # A running job, so its stream stays open until this test closes it.
    job_id = _job(app.extensions["clara_db"], client.get("/api/auth/me", headers=admin).get_json()["id"])
    url = f"/api/training/jobs/{job_id}/events/stream"
    first = client.get(url, headers=admin, buffered=False)
    assert first.status_code == 200
    busy = client.get(url, headers=user_headers("analyst"))
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"
    assert busy.get_json()["error"]["code"] == "streams_busy"
    first.close()
    second = client.get(url, headers=admin, buffered=False)
    assert second.status_code == 200
    second.close()


def test_one_user_may_hold_only_max_streams_per_user_across_processes(settings_overrides, db, user_headers):
    from api import create_app

    settings = {**settings_overrides, "max_streams_per_process": 3, "max_streams_per_user": 1}
    first_app, second_app = create_app(settings), create_app(settings)
    client, other_process = first_app.test_client(), second_app.test_client()
    admin, analyst = user_headers("admin"), user_headers("analyst")
    job_id = _job(db, client.get("/api/auth/me", headers=admin).get_json()["id"])
    url = f"/api/training/jobs/{job_id}/events/stream"
    held = client.get(url, headers=admin, buffered=False)
    assert held.status_code == 200
    try:
        # The limit is the user's across processes (counted in Redis), while the process still has room.
        for refused in (client.get(url, headers=admin), other_process.get(url, headers=admin)):
            assert refused.status_code == 429, refused.get_json()
            assert refused.get_json()["error"]["code"] == "too_many_streams"
            assert int(refused.headers["Retry-After"]) > 0
        others = client.get(url, headers=analyst, buffered=False)
        assert others.status_code == 200
        others.close()
    finally:
        held.close()
    again = other_process.get(url, headers=admin, buffered=False)
    assert again.status_code == 200
    again.close()


def test_a_place_left_by_a_dead_process_lapses(settings_overrides, db, client, admin, redis_url):
    """A process that dies with a stream open cannot free its place; the place lapses after the stream's limit."""
    import redis

    from api.streams import USER_STREAMS_KEY

    user_id = client.get("/api/auth/me", headers=admin).get_json()["id"]
    store = redis.Redis.from_url(redis_url)
    store.zadd(f"{USER_STREAMS_KEY}{user_id}", {"lapsed": time.time() - 1})
    job_id = _job(db, user_id)
    response = client.get(f"/api/training/jobs/{job_id}/events/stream", headers=admin, buffered=False)
    assert response.status_code == 200
    response.close()
    assert store.zcard(f"{USER_STREAMS_KEY}{user_id}") == 0
