"""Request checks look at the spec alone: what only a store can tell is left to the worker's full check."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset_builder.build_spec import BuildSpecError, parse_spec
from dataset_builder.sources import DocumentTable, SourceContext, request_problems


@pytest.fixture
def context(tmp_path: Path) -> SourceContext:
    return SourceContext(
        source_database_url="postgresql://postgres@127.0.0.1:5432/unused", documents_table=DocumentTable(),
        chroma_path=str(tmp_path / "chroma"), chroma_url=None, neo4j_uri="bolt://127.0.0.1:9", neo4j_user=None,
        neo4j_password=None, upload_path=lambda dataset_id: tmp_path / f"{dataset_id}.parquet",
    )


def test_a_chroma_collection_and_its_filter_are_left_to_the_store(context: SourceContext, tmp_path: Path) -> None:
    spec = {"type": "chroma", "collection": "nowhere", "where": {"law": {"$like": "x"}}}
    assert request_problems(spec, context, 0) == []
    # Nothing reached a Chroma store: the embedded client would have made its directory.
    assert not (tmp_path / "chroma").exists()


def test_request_checks_still_name_every_bad_field(context: SourceContext) -> None:
    spec = {"type": "chroma", "collection": "", "top_k": 0, "where": ["law"], "path": "/x"}
    assert request_problems(spec, context, 2) == [
        "sources[2].path: unknown field; expected one of collection, query_text, top_k, type, where",
        "sources[2].collection: must not be empty",
        "sources[2].top_k: must be between 1 and 1000000",
        "sources[2].where: must be an object",
    ]


def test_parse_spec_without_the_stores_checks_every_part(context: SourceContext) -> None:
    request = {"name": "x", "sources": [{"type": "chroma", "collection": "nowhere"}, {"type": "neo4j", "depth": 9}],
               "quality": {"languages": ["xx"]}, "format": {"kind": "text", "mapping": {"text": "{content.__class__}"}}}
    with pytest.raises(BuildSpecError) as raised:
        parse_spec(request, context, reach_stores=False)
    fields = {problem.partition(": ")[0] for problem in raised.value.problems}
    assert fields == {"sources[1].depth", "quality.languages", "format.mapping.text"}, raised.value.problems
    accepted = parse_spec({"name": "x", "sources": [{"type": "chroma", "collection": "nowhere"}]}, context,
                          reach_stores=False)
    assert accepted.sources == [{"type": "chroma", "collection": "nowhere"}]
