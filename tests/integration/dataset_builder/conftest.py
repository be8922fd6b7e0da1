"""Fixtures for the dataset builder's sources: a PostgreSQL database of each test's own, a Chroma server, contexts."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dataset_builder.sources import DocumentTable, SourceContext
from tests.conftest import free_port, stop_process

CHROMA_START_TIMEOUT = 60


@pytest.fixture
def source_database_url(empty_database_url: str) -> str:
    """An empty database of this test's own, where the sources find their documents table."""
    return empty_database_url


@pytest.fixture
def make_context(tmp_path: Path) -> Callable[..., SourceContext]:
    """Build a source context on tmp_path; keyword arguments replace its fields."""

    def _make(**overrides: Any) -> SourceContext:
        fields: dict[str, Any] = {
            "source_database_url": "",
            "documents_table": DocumentTable(),
            "chroma_path": str(tmp_path / "chroma"),
            "chroma_url": None,
            "neo4j_uri": None,
            "neo4j_user": None,
            "neo4j_password": None,
            "upload_path": lambda dataset_id: tmp_path / "uploads" / f"{dataset_id}.parquet",
            "batch_size": 1000,
        }
        fields.update(overrides)
        return SourceContext(**fields)

    return _make


@pytest.fixture(scope="session")
def chroma_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Chroma server (`chroma run`, shipped with chromadb) on a port and directory of its own."""
    directory = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    log = (directory / "server.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("chroma")), "run", "--path", str(directory / "data"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + CHROMA_START_TIMEOUT
    try:
        while True:
            try:
                if requests.get(f"{url}/api/v2/heartbeat", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chroma run did not come up; see {directory / 'server.log'}")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(server, timeout=10)
        log.close()
