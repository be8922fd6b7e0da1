"""`clara datasets`: build from specs, upload files, list, show, preview and download datasets."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import click

from cli.client import ClaraError, Client, pass_client
from cli.config_files import apply_overrides, load_spec
from cli.output import (
    json_option,
    output_path,
    page_options,
    print_fields,
    print_json,
    print_page,
    status_text,
)

DATASETS = "/api/datasets"
FORMATS = ("jsonl", "parquet", "csv")
SPLITS = ("train", "validation")


def _records(dataset: dict[str, Any]) -> str:
    """Records per split from the manifest, e.g. 950/50; '-' until built."""
    records = (dataset.get("manifest") or {}).get("records") or {}
    return "/".join(str(records.get(split, 0)) for split in SPLITS) if records else "-"


DATASET_COLUMNS = [
    ("id", lambda d: d["id"]), ("name", lambda d: d["name"]), ("kind", lambda d: d.get("kind")),
    ("status", lambda d: d["status"]), ("train/val", _records), ("owner", lambda d: d.get("owner")),
    ("created", lambda d: (d.get("created_at") or "")[:19]),
]


@click.group()
def datasets() -> None:
    """Build, upload and inspect datasets."""


def dataset_id_argument(function):
    """The ID argument, checked to be a UUID before anything is sent."""
    return click.argument("dataset_id", metavar="ID", type=click.UUID)(function)


def _announce(dataset: dict[str, Any], verb: str, as_json: bool) -> None:
    if as_json:
        print_json(dataset)
    else:
        click.echo(f"{verb} dataset {dataset['id']} ({dataset['name']}): {dataset['status']}.")


@datasets.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a field, e.g. --set split.seed=7 (repeatable).")
@json_option
@pass_client
def build(client: Client, spec: Path, assignments: tuple[str, ...], as_json: bool) -> None:
    """Start a build from a YAML or JSON spec with the fields of POST /api/datasets."""
    body = apply_overrides(load_spec(spec), assignments)
    _announce(client.post(DATASETS, body), "Building", as_json)


@datasets.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Dataset name (default: the file name).")
@click.option("--description", default="", help="What the records are.")
@click.option("--format", "file_format", type=click.Choice(FORMATS), help="Default: the file's extension.")
@click.option("--wait", is_flag=True, help="Wait until a worker has checked and stored the file; fail if refused.")
@json_option
@pass_client
def upload(client: Client, file: Path, name: str | None, description: str, file_format: str | None, wait: bool,
           as_json: bool) -> None:
    """Upload a JSONL, CSV or Parquet file of training records; a worker checks every record, then stores them."""
    form = {"description": description, **({"name": name} if name else {}),
            **({"format": file_format} if file_format else {})}
    try:
        with open(file, "rb") as handle:
            dataset = client.post(f"{DATASETS}/upload", None, files={"file": (file.name, handle)}, data=form)
    except OSError as exc:
        raise ClaraError(f"Cannot read {file}: {exc.strerror or exc}") from None
    if wait:
        dataset = _wait(client, dataset)
        if dataset["status"] != "completed":
            error = dataset.get("error") or {}
            raise ClaraError(f"Upload {dataset['id']} {dataset['status']}: {error.get('message', 'no reason given')}")
    _announce(dataset, "Uploaded", as_json)


def _wait(client: Client, dataset: dict[str, Any], interval: float = 1.0) -> dict[str, Any]:
    """Poll the dataset until its job has ended, and return it then."""
    while not dataset.get("is_terminal"):
        time.sleep(interval)
        dataset = client.get(f"{DATASETS}/{dataset['id']}")
    return dataset


@datasets.command("list")
@page_options
@json_option
@pass_client
def list_datasets(client: Client, status: str | None, limit: int, after: str | None, as_json: bool) -> None:
    """List datasets, newest first."""
    page = client.get(DATASETS, {"status": status, "limit": limit, "after": after})
    print_page(page, DATASET_COLUMNS, as_json, "datasets", "clara datasets list")


@datasets.command()
@dataset_id_argument
@json_option
@pass_client
def show(client: Client, dataset_id: uuid.UUID, as_json: bool) -> None:
    """Show one dataset: status, progress and, once built, its manifest summary."""
    dataset = client.get(f"{DATASETS}/{dataset_id}")
    if as_json:
        print_json(dataset)
        return
    manifest = dataset.get("manifest") or {}
    error = dataset.get("error")
    print_fields([
        ("id", dataset["id"]), ("name", dataset["name"]), ("description", dataset.get("description") or None),
        ("kind", dataset.get("kind")), ("status", status_text(dataset["status"])), ("owner", dataset.get("owner")),
        ("created", dataset.get("created_at")), ("finished", dataset.get("finished_at")),
        ("progress", dataset.get("progress")), ("records", manifest.get("records")),
        ("counts", manifest.get("counts")), ("removed", manifest.get("removed")),
        ("redactions", manifest.get("redactions")), ("formats", sorted((manifest.get("files") or {}).keys())),
        ("fingerprint", manifest.get("fingerprint")),
        ("error", f"{error['code']}: {error['message']}" if error else None),
    ])


@datasets.command()
@dataset_id_argument
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True)
@click.option("--limit", type=click.IntRange(1, 100), default=5, show_default=True)
@json_option
@pass_client
def preview(client: Client, dataset_id: uuid.UUID, split: str, limit: int, as_json: bool) -> None:
    """Show the first records of a split, as the trainers will read them (one JSON object a line)."""
    answer = client.get(f"{DATASETS}/{dataset_id}/preview", {"split": split, "limit": limit})
    if as_json:
        print_json(answer)
        return
    for record in answer["data"]:
        click.echo(json.dumps(record, ensure_ascii=False))


@datasets.command()
@dataset_id_argument
@click.option("--format", "file_format", type=click.Choice(FORMATS), default="jsonl", show_default=True)
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="File or directory to write.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@pass_client
def download(client: Client, dataset_id: uuid.UUID, file_format: str, split: str, output: Path | None,
             force: bool) -> None:
    """Download one split of a built dataset in one format (default DATASET-ID-SPLIT.FORMAT)."""
    path = output_path(output, f"dataset-{dataset_id}-{split}.{file_format}", force)
    size = client.download(f"{DATASETS}/{dataset_id}/files/{file_format}", path, {"split": split})
    click.echo(f"Saved the {split} split of dataset {dataset_id} to {path} ({size:,} bytes).")
