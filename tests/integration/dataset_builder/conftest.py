"""Fixtures for the dataset builder's sources: a PostgreSQL database of each test's own, and contexts."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from dataset_builder.sources import DocumentTable, SourceContext

ADMIN_DATABASE_URL = os.environ.get("CLARA_TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin(statement: sql.Composable) -> None:
    conn = psycopg2.connect(ADMIN_DATABASE_URL)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


@pytest.fixture
def source_database_url() -> Iterator[str]:
    """An empty database of this test's own, dropped afterwards."""
    name = f"clara_test_src_{uuid.uuid4().hex[:12]}"
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield ADMIN_DATABASE_URL.rsplit("/", 1)[0] + "/" + name
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


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
