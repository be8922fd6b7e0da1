"""A training job's curves: /api/training/jobs/<id>/metrics as JSON and /api/training/jobs/<id>/loss.png.

The series come from the job's progress events, which the workers write about every 5% of the steps and after
each evaluation: they are samples of the run, not every optimizer step. A long run's series are thinned
further, to at most max_plot_points steps each, always keeping the last.
"""

from __future__ import annotations

import io
import logging
import uuid
from typing import Any

import marshmallow as ma
from flask import Response, current_app
from flask_jwt_extended import current_user, jwt_required
from flask_smorest import Blueprint

from api.errors import ApiError, ErrorSchema
from api.openapi_examples import JOB_ID, error_example
from records import checkpoints, jobs
from records.db import Database

logger = logging.getLogger(__name__)

blp = Blueprint("training_plots", __name__, url_prefix="/api/training/jobs",
                description="Loss, learning rate and throughput of a training job, as data and as a plot.")

TITLE_CHARACTERS = 80
TRAIN_POINT_EXAMPLE = {"step": 120, "loss": 1.8412, "learning_rate": 0.00012, "tokens_per_second": 2048.0}
EVAL_POINT_EXAMPLE = {"step": 100, "loss": 2.0518, "perplexity": 7.782}
CHECKPOINT_MARK_EXAMPLE = {"step": 100, "id": "checkpoint-100"}


class TrainPointSchema(ma.Schema):
    """The training side of one sampled step."""

    class Meta:
        example = TRAIN_POINT_EXAMPLE

    step = ma.fields.Integer()
    loss = ma.fields.Float(allow_none=True)
    learning_rate = ma.fields.Float(allow_none=True)
    tokens_per_second = ma.fields.Float(allow_none=True)


class EvalPointSchema(ma.Schema):
    """One evaluation on the held-out data."""

    class Meta:
        example = EVAL_POINT_EXAMPLE

    step = ma.fields.Integer()
    loss = ma.fields.Float(allow_none=True)
    perplexity = ma.fields.Float(allow_none=True)


class CheckpointMarkSchema(ma.Schema):
    """Where a complete checkpoint was saved."""

    class Meta:
        example = CHECKPOINT_MARK_EXAMPLE

    step = ma.fields.Integer()
    id = ma.fields.String()


class JobMetricsSchema(ma.Schema):
    """A training job's sampled curves and its checkpoints."""

    class Meta:
        example = {"object": "training.job.metrics", "job_id": JOB_ID, "train": [TRAIN_POINT_EXAMPLE],
                   "eval": [EVAL_POINT_EXAMPLE], "checkpoints": [CHECKPOINT_MARK_EXAMPLE]}

    object = ma.fields.Constant("training.job.metrics")
    job_id = ma.fields.UUID()
    train = ma.fields.List(ma.fields.Nested(TrainPointSchema))
    eval = ma.fields.List(ma.fields.Nested(EvalPointSchema))
    checkpoints = ma.fields.List(ma.fields.Nested(CheckpointMarkSchema))


def _db() -> Database:
    return current_app.extensions["clara_db"]


def _max_points() -> int:
    return current_app.extensions["clara_settings"].max_plot_points


def _load_visible(job_id: uuid.UUID) -> dict[str, Any]:
    """The job if the caller may see it, as GET /api/training/jobs/<id> decides; 404 otherwise."""
    owner = current_user["id"] if current_user["role"] == "trainer" else None
    try:
        return jobs.get_job(_db(), job_id, owner_id=owner)
    except jobs.JobNotFound:
        raise ApiError(404, f"No training job {job_id}.", "job_not_found") from None


# A JSON value that is a whole, non-negative step as the workers write it; a regex, since a cast could fail.
_STEP = "jsonb_typeof(data->'{key}') = 'number' AND data->>'{key}' ~ '^[0-9]{{1,9}}$'"
_IS_EVAL = _STEP.format(key="eval_step")
_IS_TRAIN = f"NOT coalesce({_IS_EVAL}, false) AND {_STEP.format(key='step')}"
# The points of one series, at most %(points)s of them: the steps are cut into that many equal ranges and each
# range keeps its highest step as last reported (a resumed run's later report wins), so the last step is kept.
# Window aggregates, not a joined min/max subquery, which the planner may re-run for every row.
_SAMPLED = """
    SELECT DISTINCT ON (bucket) step, {columns} FROM (
        SELECT id, step, data,
               (step - min(step) OVER ()) * %(points)s / (max(step) OVER () - min(step) OVER () + 1) AS bucket
        FROM (SELECT id, (data->>'{key}')::bigint AS step, data FROM job_events
              WHERE job_id = %(job_id)s AND type = 'progress' AND {where}) AS points
    ) AS sampled
    ORDER BY bucket, step DESC, id DESC
"""
_TRAIN_QUERY = _SAMPLED.format(key="step", where=_IS_TRAIN,
                               columns="data->'train_loss' AS loss, data->'learning_rate' AS learning_rate,"
                                       " data->'tokens_per_second' AS tokens_per_second")
_EVAL_QUERY = _SAMPLED.format(key="eval_step", where=_IS_EVAL,
                              columns="data->'eval_loss' AS loss, data->'perplexity' AS perplexity")


def job_metrics(db: Database, job_id: uuid.UUID, max_points: int) -> dict[str, Any]:
    """The job's train and eval series, each at most max_points evenly spaced steps and the last, and checkpoints.

    PostgreSQL picks the points, so a run with many thousands of progress events costs the API no more than
    a short one.
    """
    params = {"job_id": job_id, "points": max_points}
    with db.transaction() as cur:
        cur.execute(_TRAIN_QUERY, params)
        train = [dict(row) for row in cur.fetchall()]
        cur.execute(_EVAL_QUERY, params)
        evaluations = [dict(row) for row in cur.fetchall()]
    marks = [{"step": c["step"], "id": c["id"]} for c in checkpoints.list_checkpoints(db, job_id)]
    return {"job_id": job_id, "train": train, "eval": evaluations, "checkpoints": marks}


@blp.route("/<uuid:job_id>/metrics", methods=["GET"])
@jwt_required()
@blp.response(200, JobMetricsSchema)
def metrics(job_id: uuid.UUID) -> dict[str, Any]:
    """Train and eval loss, learning rate and tokens/s per sampled step, and the checkpoints' steps."""
    _load_visible(job_id)
    return job_metrics(_db(), job_id, _max_points())


@blp.route("/<uuid:job_id>/loss.png", methods=["GET"])
@jwt_required()
@blp.response(200, {"format": "binary", "type": "string"}, content_type="image/png")
@blp.alt_response(409, schema=ErrorSchema, description="metrics_not_ready: the job has reported no loss yet.",
                  example=error_example("metrics_not_ready", f"Job {JOB_ID} has reported no loss yet; try again "
                                                             "once it has trained a while."))
def loss_png(job_id: uuid.UUID) -> Response:
    """The train and eval loss curves as a PNG, with the checkpoints marked."""
    job = _load_visible(job_id)
    series = job_metrics(_db(), job_id, _max_points())
    if not any(p["loss"] is not None for p in series["train"] + series["eval"]):
        raise ApiError(409, f"Job {job_id} has reported no loss yet; try again once it has trained a while.",
                       "metrics_not_ready")
    return Response(render_loss(job["job_name"], series), mimetype="image/png",
                    headers={"Content-Disposition": f'inline; filename="loss-{job_id}.png"'})


def render_loss(title: str, series: dict[str, Any]) -> bytes:
    """Draw the loss curves with matplotlib's Agg canvas on a figure of its own, never pyplot's global state."""
    # Imported here: matplotlib takes a while to load, and only this route needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for points, label, style in ((series["train"], "train loss", "-"), (series["eval"], "eval loss", "o--")):
        points = [p for p in points if p["loss"] is not None]
        if points:
            axes.plot([p["step"] for p in points], [p["loss"] for p in points], style, label=label)
    for index, mark in enumerate(series["checkpoints"]):
        axes.axvline(mark["step"], color="grey", linestyle=":", linewidth=1,
                     label="checkpoint" if index == 0 else None)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    # A $ in a job name would start matplotlib's math mode.
    short = title if len(title) <= TITLE_CHARACTERS else title[:TITLE_CHARACTERS - 1] + "…"
    axes.set_title(short.replace("$", r"\$"))
    axes.grid(True, alpha=0.3)
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
