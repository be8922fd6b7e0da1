"""`clara jobs watch`: job snapshots from a source, drawn as a live progress line until the job ends."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click

from cli.client import ApiError, Client
from cli.output import progress_line

# A source yields snapshots of a job (the body of GET /api/training/jobs/<id>) until one is terminal:
# the job's event stream (Server-Sent Events) when the server has one, else polling.
SnapshotSource = Callable[[Client, str], Iterator[dict[str, Any]]]
STREAM_RECONNECTS = 100


def parse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Turn Server-Sent Events lines into {"id", "event", "data"} dicts; comments (keep-alives) are skipped."""
    event: dict[str, Any] = {}
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                event["data"] = json.loads("\n".join(data))
                yield event
            event, data = {}, []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field in ("id", "event"):
            event[field] = value


def _apply(job: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The job as a progress event leaves it: its step and metrics merged into the last snapshot."""
    data = (event.get("data") or {}).get("data") or {}
    progress = {key: data[key] for key in ("step", "total_steps", "epoch", "percent", "eta_seconds") if key in data}
    metrics = {key: value for key, value in data.items() if key not in progress}
    return {**job, "progress": {**job.get("progress", {}), **progress},
            "metrics": {**job.get("metrics", {}), **metrics}}


STREAM_REFUSALS = ("streams_busy", "too_many_streams")


def stream_snapshots(client: Client, job_id: str, interval: float = 1.0) -> Iterator[dict[str, Any]]:
    """Yield the job as its event stream reports progress; fall back to polling if the server has no stream."""
    path = f"/api/training/jobs/{job_id}"
    job = client.get(path)
    yield job
    last_id: str | None = None
    for _ in range(STREAM_RECONNECTS):
        if job.get("is_terminal"):
            return
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            response = client.request("GET", f"{path}/events/stream", stream=True, headers=headers)
        except ApiError as error:
            # An older server has no streams; a busy one has none free, or the user already holds as many
            # as they may. Polling serves all three.
            no_stream = error.status == 404 and error.code != "job_not_found"
            if not (no_stream or error.code in STREAM_REFUSALS):
                raise
            yield from poll_snapshots(client, job_id, interval)
            return
        with response:
            for event in parse_events(response.iter_lines(decode_unicode=True)):
                last_id = event.get("id", last_id)
                # Status changes carry little; the job itself says what the new status means.
                job = _apply(job, event) if event.get("event") == "progress" else client.get(path)
                yield job
        # The server closes a stream when the job ends or the stream reaches its time limit.
        job = client.get(path)
        yield job
    yield from poll_snapshots(client, job_id, interval)


def poll_snapshots(client: Client, job_id: str, interval: float = 1.0,
                   sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
    """Yield the job every `interval` seconds until it has ended (the last snapshot is the terminal one)."""
    while True:
        job = client.get(f"/api/training/jobs/{job_id}")
        yield job
        if job.get("is_terminal"):
            return
        sleep(interval)


class ProgressLine:
    """Redraws one line on a terminal; elsewhere (pipes, CI logs) prints a line whenever it changes."""

    def __init__(self, live: bool | None = None) -> None:
        self.live = sys.stdout.isatty() if live is None else live
        self.previous = ""
        self.width = 0

    def show(self, text: str) -> None:
        """Draw text in place of the previous line."""
        if text == self.previous:
            return
        if self.live:
            # Pad with spaces so a shorter line fully covers a longer one.
            click.echo("\r" + text.ljust(self.width), nl=False)
            self.width = max(self.width, len(text))
        else:
            click.echo(text)
        self.previous = text

    def close(self) -> None:
        """End the live line, so what follows starts on a fresh one."""
        if self.live and self.previous:
            click.echo()


def follow(snapshots: Iterator[dict[str, Any]], line: ProgressLine | None = None) -> dict[str, Any]:
    """Draw every snapshot and return the last one."""
    line = line or ProgressLine()
    job: dict[str, Any] = {}
    try:
        for job in snapshots:
            line.show(progress_line(job))
    finally:
        line.close()
    return job


def outcome_message(job: dict[str, Any]) -> str:
    """The closing sentence of a watch: where the adapter is, or why the job did not complete."""
    status = job.get("status")
    if status == "completed":
        return f"Job {job['id']} completed; download the adapter with `clara jobs download {job['id']}`."
    if status == "failed":
        error = job.get("error") or {}
        return f"Job {job['id']} failed ({error.get('code', 'unknown')}): {error.get('message', 'no message')}"
    return f"Job {job.get('id')} ended {status}."
