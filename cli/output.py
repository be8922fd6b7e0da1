"""What the CLI prints: JSON for scripts, plain tables and key/value blocks for people, the progress line."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from cli.client import ClaraError

BAR_WIDTH = 20
STATUS_COLOURS = {"completed": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def print_json(data: Any) -> None:
    """Print data as indented JSON, keys in the API's order."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return " ".join(str(value).split())


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], empty: str = "Nothing to show.") -> None:
    """Print rows as a left-aligned table with a header line."""
    if not rows:
        click.echo(empty)
        return
    cells = [[_cell(getter(row)) for _, getter in columns] for row in rows]
    widths = [max(len(title), *(len(line[i]) for line in cells)) for i, (title, _) in enumerate(columns)]
    header = "  ".join(title.upper().ljust(width) for (title, _), width in zip(columns, widths, strict=True))
    click.echo(header.rstrip())
    for line in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def print_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """Print `name: value` lines, names aligned; nested values as compact JSON."""
    width = max(len(name) for name, _ in pairs)
    for name, value in pairs:
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False) if value else "-"
        click.echo(f"{name + ':':<{width + 1}} {_cell(value)}")


def status_text(status: str) -> str:
    """A status, coloured when the terminal supports it (click strips colour otherwise)."""
    return click.style(status, fg=STATUS_COLOURS.get(status))


def duration(seconds: float | None) -> str:
    """Seconds as 45s, 3m05s or 2h07m."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(job: dict[str, Any]) -> str:
    """One line for a job's progress: bar, percent, step, loss, tokens/s, ETA and status."""
    progress = job.get("progress") or {}
    metrics = job.get("metrics") or {}
    percent = float(progress.get("percent") or 0.0)
    if job.get("status") == "completed":
        percent = 100.0
    filled = int(BAR_WIDTH * min(percent, 100.0) / 100)
    parts = [f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}]", f"{percent:5.1f}%"]
    total = progress.get("total_steps")
    parts.append(f"step {progress.get('step') or 0}/{total if total else '?'}")
    # A finished job's train_loss is the mean over the run; the bar shows the latest step's loss throughout.
    loss = metrics.get("last_loss", metrics.get("train_loss"))
    parts.append(f"loss {loss:.4f}" if isinstance(loss, int | float) else "loss -")
    speed = metrics.get("tokens_per_second")
    parts.append(f"{speed:,.0f} tok/s" if isinstance(speed, int | float) else "- tok/s")
    if not job.get("is_terminal"):
        parts.append(f"eta {duration(progress.get('eta_seconds'))}")
    stopping = job.get("cancel_requested") and not job.get("is_terminal")
    parts.append(f"({job.get('status', '?')}{', cancelling' if stopping else ''})")
    return "  ".join(parts)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer, for scripts.")
STATUSES = ("pending", "queued", "running", "completed", "failed", "cancelled")


def page_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of every list command: a status filter, the page size and the cursor."""
    command = click.option("--after", metavar="ID", help="The last id of the previous page.")(command)
    command = click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)(command)
    return click.option("--status", type=click.Choice(STATUSES))(command)


def print_page(page: dict[str, Any], columns: Sequence[Column], as_json: bool, noun: str, command: str) -> None:
    """A page of a list: JSON, or a table and how to get the next page."""
    if as_json:
        print_json(page)
        return
    print_table(page["data"], columns, empty=f"No {noun}.")
    if page["has_more"]:
        click.echo(f"More: {command} --after {page['data'][-1]['id']}")


def output_path(given: Path | None, default_name: str, force: bool) -> Path:
    """Where a download goes; an existing file is only replaced with --force."""
    path = given or Path(default_name)
    if path.is_dir():
        path = path / default_name
    if path.exists() and not force:
        raise ClaraError(f"{path} exists; pass --force to replace it or --output for another path.")
    return path
