"""Fixtures for the dataset builder's sources: a PostgreSQL database of each test's own, and contexts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dataset_builder.sources import DocumentTable, SourceContext


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
