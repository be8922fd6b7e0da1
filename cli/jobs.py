"""`clara jobs`: submit, list, show, watch, cancel training jobs and fetch their adapters and loss plots."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import click

from cli.client import ApiError, ClaraError, Client, pass_client
from cli.config_files import apply_overrides, load_spec
from cli.output import (
    json_option,
    output_path,
    page_options,
    print_fields,
    print_json,
    print_page,
    print_table,
    progress_line,
    status_text,
)
from cli.watch import follow, outcome_message, stream_snapshots

JOBS = "/api/training/jobs"
EVENTS_PAGE = 1000

JOB_COLUMNS = [
    ("id", lambda j: j["id"]),
    ("name", lambda j: j["job_name"]),
    ("type", lambda j: j["trainer_type"]),
    ("status", lambda j: j["status"]),
    ("progress", lambda j: f"{(j.get('progress') or {}).get('percent') or 0:.0f}%"),
    ("loss", lambda j: (j.get("metrics") or {}).get("train_loss")),
    ("owner", lambda j: j.get("owner")),
    ("created", lambda j: (j.get("created_at") or "")[:19]),
]


@click.group()
def jobs() -> None:
    """Submit and follow training jobs."""


def job_id_argument(function):
    """The ID argument, checked to be a UUID before anything is sent."""
    return click.argument("job_id", metavar="ID", type=click.UUID)(function)


def show_job(job: dict[str, Any]) -> None:
    """A job as name: value lines."""
    progress = job.get("progress") or {}
    error = job.get("error")
    print_fields([
        ("id", job["id"]), ("name", job["job_name"]), ("type", job["trainer_type"]),
        ("status", status_text(job["status"]) + (" (cancel requested)" if job.get("cancel_requested") else "")),
        ("owner", job.get("owner")), ("base model", job.get("base_model")),
        ("dataset", job.get("dataset_id") or job.get("dataset_path")),
        ("parent", job.get("parent_job_id")), ("created", job.get("created_at")),
        ("started", job.get("started_at")), ("finished", job.get("finished_at")),
        ("progress", progress_line(job) if progress.get("step") else None),
        ("attempts", job.get("attempts")), ("worker", job.get("worker")),
        ("error", f"{error['code']}: {error['message']}" if error else None),
        ("adapter", job.get("adapter_path")), ("hyperparameters", job.get("hyperparameters")),
        ("metrics", job.get("metrics")), ("metadata", job.get("metadata")),
    ])


@jobs.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a field, e.g. --set hyperparameters.max_steps=50 (repeatable).")
@click.option("--watch", "then_watch", is_flag=True, help="Follow the job until it ends.")
@json_option
@pass_client
def submit(client: Client, config: Path, assignments: tuple[str, ...], then_watch: bool, as_json: bool) -> None:
    """Submit a job from a YAML or JSON file with the fields of the HTTP body (see configs/)."""
    body = apply_overrides(load_spec(config), assignments)
    job = client.post(JOBS, body)
    if as_json:
        print_json(job)
    else:
        click.echo(f"Submitted job {job['id']} ({job['job_name']}): {job['status']}.")
    if then_watch:
        watch_until_done(client, job["id"])


@jobs.command("list")
@page_options
@json_option
@pass_client
def list_jobs(client: Client, status: str | None, limit: int, after: str | None, as_json: bool) -> None:
    """List jobs, newest first."""
    page = client.get(JOBS, {"status": status, "limit": limit, "after": after})
    print_page(page, JOB_COLUMNS, as_json, "jobs", "clara jobs list")


@jobs.command()
@job_id_argument
@json_option
@pass_client
def show(client: Client, job_id: uuid.UUID, as_json: bool) -> None:
    """Show one job: status, progress, metrics, error."""
    job = client.get(f"{JOBS}/{job_id}")
    if as_json:
        print_json(job)
    else:
        show_job(job)


def watch_until_done(client: Client, job_id: str, interval: float = 1.0) -> None:
    """Draw the job's progress until it ends; exit 0 only if it completed."""
    try:
        job = follow(stream_snapshots(client, job_id, interval))
    except KeyboardInterrupt:
        click.echo(f"Stopped watching; job {job_id} goes on.", err=True)
        sys.exit(130)
    message = outcome_message(job)
    if job.get("status") != "completed":
        raise ClaraError(message)
    click.echo(message)


@jobs.command()
@job_id_argument
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="Seconds between polls.")
@pass_client
def watch(client: Client, job_id: uuid.UUID, interval: float) -> None:
    """Follow a job with a live progress bar until it ends; exit status 0 only if it completed."""
    watch_until_done(client, str(job_id), interval)


def all_events(client: Client, job_id: str, after: int | None) -> list[dict[str, Any]]:
    """Every event of a job after the given id, page after page."""
    found: list[dict[str, Any]] = []
    while True:
        page = client.get(f"{JOBS}/{job_id}/events", {"after": after, "limit": EVENTS_PAGE})
        found.extend(page["data"])
        if not page["has_more"] or not page["data"]:
            return found
        after = page["data"][-1]["id"]


@jobs.command()
@job_id_argument
@click.option("--after", type=click.IntRange(min=0), help="Only events after this event id.")
@json_option
@pass_client
def events(client: Client, job_id: uuid.UUID, after: int | None, as_json: bool) -> None:
    """Show a job's events in order."""
    rows = all_events(client, str(job_id), after)
    if as_json:
        print_json({"object": "list", "data": rows, "has_more": False})
        return
    print_table(rows, [("id", lambda e: e["id"]), ("time", lambda e: (e.get("created_at") or "")[:19]),
                       ("level", lambda e: e["level"]), ("type", lambda e: e["type"]),
                       ("message", lambda e: e["message"])], empty="No events.")


@jobs.command()
@job_id_argument
@json_option
@pass_client
def cancel(client: Client, job_id: uuid.UUID, as_json: bool) -> None:
    """Cancel a job: a queued one never starts, a running one stops at its next step."""
    job = client.post(f"{JOBS}/{job_id}/cancel")
    if as_json:
        print_json(job)
    elif job["status"] == "cancelled":
        click.echo(f"Cancelled job {job_id}.")
    else:
        click.echo(f"Asked job {job_id} to stop; it ends at its next step (status {job['status']}).")


@jobs.command("delete-adapter")
@job_id_argument
@pass_client
def delete_adapter(client: Client, job_id: uuid.UUID) -> None:
    """Delete a completed job's adapter and checkpoints to free storage; the job's record stays."""
    client.request("DELETE", f"{JOBS}/{job_id}/adapter")
    click.echo(f"Deleted the adapter of job {job_id}.")


def download_options(function):
    """--output and --force, shared by the download commands."""
    function = click.option("--force", is_flag=True, help="Replace an existing file.")(function)
    return click.option("--output", "-o", type=click.Path(path_type=Path), help="File or directory to write.")(
        function)


@jobs.command()
@job_id_argument
@download_options
@pass_client
def download(client: Client, job_id: uuid.UUID, output: Path | None, force: bool) -> None:
    """Download a completed job's adapter as adapter-ID.tar.gz."""
    path = output_path(output, f"adapter-{job_id}.tar.gz", force)
    size = client.download(f"{JOBS}/{job_id}/adapter", path)
    click.echo(f"Saved the adapter of job {job_id} to {path} ({size:,} bytes).")


@jobs.command()
@job_id_argument
@download_options
@pass_client
def plot(client: Client, job_id: uuid.UUID, output: Path | None, force: bool) -> None:
    """Save a job's loss curve as a PNG (loss-ID.png)."""
    path = output_path(output, f"loss-{job_id}.png", force)
    try:
        client.download(f"{JOBS}/{job_id}/loss.png", path)
    except ApiError as exc:
        # A 404 that is not about the job means the server predates the loss plot.
        if exc.status == 404 and exc.code == "not_found":
            raise ClaraError(f"The Clara API at {client.url} cannot plot losses yet "
                             f"(no GET {JOBS}/<id>/loss.png); upgrade the server.") from None
        raise
    click.echo(f"Saved the loss curve of job {job_id} to {path}.")
