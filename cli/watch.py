"""`clara jobs watch`: job snapshots from a source, drawn as a live progress line until the job ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from cli.client import Client
from cli.output import progress_line

# A source yields snapshots of a job (the body of GET /api/training/jobs/<id>) until one is terminal.
# Polling is the only source today; a server-sent-events source (GET .../events/stream) can take its
# place with the same signature.
SnapshotSource = Callable[[Client, str], Iterator[dict[str, Any]]]


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
