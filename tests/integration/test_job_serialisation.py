"""JobSchema's hand-written dump answers exactly what marshmallow's field-by-field dump would."""

from __future__ import annotations

import marshmallow as ma

from api.schemas import JobListSchema, JobSchema
from records import jobs


def _marshmallow_dump(row: dict) -> dict:
    """The generic dump of every declared field, which the fast path must reproduce."""
    return ma.Schema.dump(JobSchema(), row)


def _rows(db, owner_id: int) -> list[dict]:
    """A queued job, a failed one with metrics and an error, and a completed parent with a continuous child."""
    def create(**overrides) -> dict:
        return jobs.create_job(db, **{"job_name": "serialise", "trainer_type": "lora", "base_model": "/m/tiny",
                                      "dataset_path": "/d/train.jsonl", "hyperparameters": {"lora_rank": 8},
                                      "metadata": {"team": "ops", "nested": {"a": [1, 2]}},
                                      "owner_id": owner_id, **overrides})

    queued, failed, parent = create(), create(), create()
    child = create(trainer_type="continuous", parent_job_id=parent["id"])
    with db.transaction() as cur:
        cur.execute("UPDATE training_jobs SET status = 'failed', started_at = now(), finished_at = now(),"
                    " error_code = 'out_of_memory', error_message = 'CUDA ran out of memory.', attempts = 2,"
                    " worker = 'celery@gpu-01', progress = '{\"step\": 7, \"total_steps\": 10}',"
                    " metrics = '{\"train_loss\": 1.5, \"extra\": \"kept\"}' WHERE id = %s", (failed["id"],))
        cur.execute("UPDATE training_jobs SET status = 'completed', adapter_path = '/out/a', finished_at = now(),"
                    " cancel_requested = true WHERE id = %s", (parent["id"],))
    return [jobs.get_job(db, job["id"]) for job in (queued, failed, parent, child)]


def test_the_fast_dump_equals_marshmallows(db, client, trainer):
    owner = client.get("/api/auth/me", headers=trainer).get_json()["id"]
    rows = _rows(db, owner)
    assert rows[2]["children"] and rows[1]["error_code"]
    for row in rows:
        assert JobSchema().dump(row) == _marshmallow_dump(row)
    assert JobSchema(many=True).dump(rows) == [_marshmallow_dump(row) for row in rows]
    page, _ = jobs.list_jobs(db, owner_id=None, status=None, limit=10, after=None)
    assert JobListSchema().dump({"data": page, "has_more": False})["data"] == [_marshmallow_dump(r) for r in page]


def test_a_partial_row_goes_through_marshmallow(db, client, trainer):
    row = _rows(db, client.get("/api/auth/me", headers=trainer).get_json()["id"])[0]
    del row["worker"], row["children"]
    dumped = JobSchema().dump(row)
    assert "worker" not in dumped and "children" not in dumped and dumped == _marshmallow_dump(row)
    assert JobSchema(only=("id", "status")).dump(row) == {"id": str(row["id"]), "status": row["status"]}
