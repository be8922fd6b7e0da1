"""A training job's sampled curves as JSON and as a PNG, built from its progress events and checkpoints."""

from __future__ import annotations

import io
import uuid

import pytest

from records import jobs
from records.jobs import add_event

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _user_id(client, headers) -> int:
    return client.get("/api/auth/me", headers=headers).get_json()["id"]


def _job(db, owner_id: int, name: str = "citizen-faq $v1$") -> uuid.UUID:
    return jobs.create_job(db, job_name=name, trainer_type="lora", base_model="m", dataset_path="d.jsonl",
                           hyperparameters={}, metadata={}, owner_id=owner_id)["id"]


def _progress(cur, job_id, step: int, loss: float | None, lr: float = 1e-3, speed: float = 900.0) -> None:
    """A progress event as JobReporter.report writes it."""
    add_event(cur, job_id, "progress", f"Step {step} of 20.",
              data={"step": step, "total_steps": 20, "epoch": step / 20, "percent": step * 5.0, "eta_seconds": 1,
                    "train_loss": loss, "trained_tokens": step * 100, "tokens_per_second": speed,
                    "learning_rate": lr})


def _evaluated(cur, job_id, step: int, loss: float, perplexity: float) -> None:
    """A progress event as JobReporter.evaluated writes it."""
    add_event(cur, job_id, "progress", f"Evaluation at step {step}.",
              data={"eval_loss": loss, "perplexity": perplexity, "eval_step": step})


@pytest.fixture
def trained_job(db, client, trainer) -> uuid.UUID:
    """A trainer's job with sampled progress, two evaluations, a resumed step and two checkpoints."""
    job_id = _job(db, _user_id(client, trainer))
    with db.transaction() as cur:
        _progress(cur, job_id, 5, 3.0, lr=2e-3, speed=800.0)
        _evaluated(cur, job_id, 10, 2.6, 13.46)
        _progress(cur, job_id, 10, 2.5)
        add_event(cur, job_id, "log", "Checkpoint saved at step 10.", data={"checkpoint": {"step": 10}})
        # A resumed attempt reports step 10 again; the later report is the one kept.
        _progress(cur, job_id, 10, 2.4)
        _progress(cur, job_id, 20, 1.9, lr=0.0, speed=1000.0)
        _evaluated(cur, job_id, 20, 2.1, 8.17)
        for step in (10, 20):
            cur.execute("INSERT INTO training_checkpoints (job_id, step, name, path, created_at, metrics)"
                        " VALUES (%s, %s, %s, %s, now(), '{}')", (job_id, step, f"step-{step:08d}", f"/x/{step}"))
    return job_id


def test_metrics_are_the_sampled_series_and_checkpoints(client, trainer, trained_job):
    response = client.get(f"/api/training/jobs/{trained_job}/metrics", headers=trainer)
    assert response.status_code == 200
    body = response.get_json()
    assert body["object"] == "training.job.metrics" and body["job_id"] == str(trained_job)
    assert body["train"] == [
        {"step": 5, "loss": 3.0, "learning_rate": 2e-3, "tokens_per_second": 800.0},
        {"step": 10, "loss": 2.4, "learning_rate": 1e-3, "tokens_per_second": 900.0},
        {"step": 20, "loss": 1.9, "learning_rate": 0.0, "tokens_per_second": 1000.0},
    ]
    assert body["eval"] == [{"step": 10, "loss": 2.6, "perplexity": 13.46},
                            {"step": 20, "loss": 2.1, "perplexity": 8.17}]
    assert body["checkpoints"] == [{"step": 10, "id": "step-00000010"}, {"step": 20, "id": "step-00000020"}]


def test_metrics_of_a_job_without_progress_are_empty(client, db, trainer):
    job_id = _job(db, _user_id(client, trainer))
    body = client.get(f"/api/training/jobs/{job_id}/metrics", headers=trainer).get_json()
    assert (body["train"], body["eval"], body["checkpoints"]) == ([], [], [])


def test_loss_png_is_a_real_plot(client, trainer, trained_job):
    from matplotlib.image import imread

    response = client.get(f"/api/training/jobs/{trained_job}/loss.png", headers=trainer)
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    png = response.get_data()
    assert png.startswith(PNG_SIGNATURE)
    pixels = imread(io.BytesIO(png), format="png")
    height, width = pixels.shape[:2]
    assert width >= 600 and height >= 300
    # Curves, labels and markers: far more than a blank canvas's one colour.
    assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[2])[::7]}) > 20


def test_loss_png_without_any_loss_yet_is_a_conflict(client, db, trainer):
    job_id = _job(db, _user_id(client, trainer))
    with db.transaction() as cur:
        _progress(cur, job_id, 1, None)
    response = client.get(f"/api/training/jobs/{job_id}/loss.png", headers=trainer)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "metrics_not_ready"


@pytest.mark.parametrize("path", ["metrics", "loss.png"])
def test_another_trainers_job_is_not_found(client, user_headers, analyst, trained_job, path):
    other = user_headers("trainer", "other-trainer")
    assert client.get(f"/api/training/jobs/{trained_job}/{path}", headers=other).status_code == 404
    assert client.get(f"/api/training/jobs/{trained_job}/{path}", headers=analyst).status_code == 200
    assert client.get(f"/api/training/jobs/{trained_job}/{path}").status_code == 401


def test_both_routes_are_in_the_openapi_document(client):
    paths = client.get("/api/openapi.json").get_json()["paths"]
    assert "/api/training/jobs/{job_id}/metrics" in paths
    png = paths["/api/training/jobs/{job_id}/loss.png"]["get"]["responses"]
    assert "image/png" in png["200"]["content"] and "409" in png


def _many_progress_events(db, job_id, steps: int, eval_every: int) -> None:
    """A long run's progress events, inserted in bulk: one per step and an evaluation every eval_every steps."""
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO job_events (job_id, type, level, message, data)"
            " SELECT %s, 'progress', 'info', 'Step ' || g, jsonb_build_object('step', g, 'total_steps', %s,"
            "  'train_loss', 10.0 / g, 'learning_rate', 0.001, 'tokens_per_second', 900.0)"
            " FROM generate_series(1, %s) AS g",
            (job_id, steps, steps))
        cur.execute(
            "INSERT INTO job_events (job_id, type, level, message, data)"
            " SELECT %s, 'progress', 'info', 'Evaluation', jsonb_build_object('eval_step', g, 'eval_loss', 5.0 / g,"
            "  'perplexity', 2.0) FROM generate_series(%s, %s, %s) AS g",
            (job_id, eval_every, steps, eval_every))


def test_a_long_runs_metrics_are_bounded_and_keep_the_last_step(client, db, trainer):
    from settings import Settings

    job_id = _job(db, _user_id(client, trainer))
    _many_progress_events(db, job_id, steps=50_000, eval_every=1000)
    body = client.get(f"/api/training/jobs/{job_id}/metrics", headers=trainer).get_json()
    bound = Settings().max_plot_points
    steps = [point["step"] for point in body["train"]]
    assert bound // 2 <= len(steps) <= bound
    assert steps == sorted(set(steps)) and steps[-1] == 50_000
    assert body["train"][-1] == {"step": 50_000, "loss": 10.0 / 50_000, "learning_rate": 0.001,
                                 "tokens_per_second": 900.0}
    # Evenly spaced by step: no gap much wider than an even share of the run.
    assert max(b - a for a, b in zip(steps, steps[1:], strict=False)) <= 2 * 50_000 // bound
    assert [point["step"] for point in body["eval"]] == list(range(1000, 50_001, 1000))
    png = client.get(f"/api/training/jobs/{job_id}/loss.png", headers=trainer)
    assert png.status_code == 200 and png.get_data().startswith(PNG_SIGNATURE)


def test_eval_points_are_bounded_too(client, db, trainer):
    from api.plots import job_metrics

    job_id = _job(db, _user_id(client, trainer))
    _many_progress_events(db, job_id, steps=5000, eval_every=10)
    series = job_metrics(db, job_id, max_points=40)
    assert len(series["train"]) <= 40 and series["train"][-1]["step"] == 5000
    assert len(series["eval"]) <= 40 and series["eval"][-1]["step"] == 5000
