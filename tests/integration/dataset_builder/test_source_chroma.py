"""The chroma source with the offline all-MiniLM-L6-v2 embeddings, on an embedded PersistentClient and
through the HTTP client against a real Chroma server (CLARA_CHROMA_URL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from dataset_builder.sources import SourceContext, read_source, source_problems
from dataset_builder.sources.chroma import chroma_client, open_collection
from dataset_builder.sources.embeddings import FUNCTION_NAME, MiniLMEmbeddingFunction, embedding_function, load_model

RECORDS = {
    "health": ("Health data such as diagnoses and treatment reports must be encrypted, and every access "
               "to a patient's medical file is logged.", {"law": "SGB V", "title": "Patient files"}),
    "moving": ("Citizens who move into a flat must register their new address at the citizens' office "
               "within two weeks.", {"law": "BMG", "title": "Registering an address"}),
    "landlord": ("The landlord confirms in writing that the tenant has moved in.", {"law": "BMG"}),
    "cartax": ("Vehicle tax is collected by direct debit from the owner's bank account once a year.",
               {"law": "KraftStG", "title": "Vehicle tax"}),
    "dogs": ("Dogs must be registered with the municipality and wear a tax tag on their collar.",
             {"law": "Hundesteuer"}),
    "building": ("A building permit is needed for new houses, extensions and most conversions.",
                 {"law": "BauO", "title": "Building permits"}),
    "objection": ("An objection to an administrative decision must be filed within one month.",
                  {"law": "VwGO", "year": 2022}),
    "benefits": ("Unemployment benefit is paid to people who are able to work and in need of support.",
                 {"law": "SGB II", "year": 2005}),
}


@pytest.fixture(params=["embedded", "server"])
def make_context(request: pytest.FixtureRequest,
                 make_context: Callable[..., SourceContext]) -> Iterator[Callable[..., SourceContext]]:
    """Contexts on the embedded client, or on the HTTP client of the shared server, emptied afterwards."""
    if request.param == "embedded":
        yield make_context
        return
    url = request.getfixturevalue("chroma_server_url")

    def _make(**overrides: Any) -> SourceContext:
        return make_context(**{"chroma_url": url, **overrides})

    yield _make
    client = chroma_client(_make())
    for collection in client.list_collections():
        client.delete_collection(collection.name)


@pytest.fixture
def context(make_context: Callable[..., SourceContext]) -> SourceContext:
    """A context whose embedded Chroma holds RECORDS in collection "documents"."""
    context = make_context()
    collection = chroma_client(context).create_collection("documents", embedding_function=embedding_function())
    collection.add(
        ids=list(RECORDS),
        documents=[text for text, _ in RECORDS.values()],
        metadatas=[metadata for _, metadata in RECORDS.values()],
    )
    return context


def read(spec: dict[str, Any], context: SourceContext) -> list[list[Any]]:
    return list(read_source({"type": "chroma", "collection": "documents", **spec}, context))


def ids(spec: dict[str, Any], context: SourceContext) -> list[str]:
    return [document.id for batch in read(spec, context) for document in batch]


def test_query_returns_the_semantically_closest_first(context: SourceContext) -> None:
    assert ids({"query_text": "privacy of medical records", "top_k": 3}, context)[0] == "health"
    assert ids({"query_text": "my pet needs a licence", "top_k": 3}, context)[0] == "dogs"
    assert ids({"query_text": "challenging a decision by the authority", "top_k": 1}, context) == ["objection"]
    assert ids({"query_text": "paying tax on my car", "top_k": 1}, context) == ["cartax"]


def test_query_results_come_in_bounded_batches(make_context, context: SourceContext) -> None:
    small = make_context(batch_size=3)
    batches = read({"query_text": "registration", "top_k": 8}, small)
    assert [len(batch) for batch in batches] == [3, 3, 2]


def test_where_filter_limits_query_results(context: SourceContext) -> None:
    found = ids({"query_text": "privacy of medical records", "top_k": 5, "where": {"law": "BMG"}}, context)
    assert sorted(found) == ["landlord", "moving"]


def test_several_where_keys_must_all_match(context: SourceContext) -> None:
    assert ids({"where": {"law": "VwGO", "year": 2022}}, context) == ["objection"]
    assert ids({"where": {"law": "VwGO", "year": 2005}}, context) == []
    assert ids({"where": {"year": {"$gte": 2000}}}, context) == ["objection", "benefits"]


def test_get_without_query_pages_through_the_collection(make_context, context: SourceContext) -> None:
    batches = read({"top_k": 7}, make_context(batch_size=3))
    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert ids({}, context) == list(RECORDS)


def test_documents_carry_content_metadata_and_title(context: SourceContext) -> None:
    by_id = {document.id: document for batch in read({}, context) for document in batch}
    health = by_id["health"]
    assert health.source == "chroma"
    assert health.fields == {"title": "Patient files", "content": RECORDS["health"][0],
                             "metadata": {"law": "SGB V", "title": "Patient files"}}
    assert health.text == RECORDS["health"][0]
    assert by_id["landlord"].fields["title"] == ""


def test_missing_collection_is_a_problem(context: SourceContext) -> None:
    assert source_problems({"type": "chroma", "collection": "archive"}, context, 1) == [
        "sources[1].collection: no Chroma collection named 'archive'"
    ]


def test_bad_where_is_a_problem(context: SourceContext) -> None:
    problems = source_problems({"type": "chroma", "collection": "documents", "where": {"law": {"$like": "x"}}},
                               context, 0)
    assert len(problems) == 1 and problems[0].startswith("sources[0].where: Expected where operator")


def test_collection_persists_the_offline_function(context: SourceContext) -> None:
    collection = open_collection(chroma_client(context), "documents")
    assert collection.configuration_json["embedding_function"] == {
        "type": "known", "name": FUNCTION_NAME, "config": {"model": "all-MiniLM-L6-v2"}
    }
    assert isinstance(collection._embedding_function, MiniLMEmbeddingFunction)


def test_collection_embedded_by_chroma_default_function_can_be_queried(context: SourceContext) -> None:
    # Chroma's default function is the same model; add vectors ourselves, as its ONNX model is not here.
    collection = chroma_client(context).create_collection("legacy")
    assert collection.configuration_json["embedding_function"]["name"] == "default"
    texts = [RECORDS["health"][0], RECORDS["cartax"][0]]
    collection.add(ids=["health", "cartax"], documents=texts, embeddings=embedding_function()(texts))
    spec = {"type": "chroma", "collection": "legacy", "query_text": "tax for cars", "top_k": 2}
    assert source_problems(spec, context, 0) == []
    assert [d.id for batch in read_source(spec, context) for d in batch] == ["cartax", "health"]


@register_embedding_function
class OtherModelFunction(EmbeddingFunction[Documents]):
    """A stand-in for a collection embedded by some other model."""

    def __init__(self) -> None:
        pass

    def __call__(self, input: Documents) -> Embeddings:
        return [np.ones(8, dtype=np.float32) for _ in input]

    @staticmethod
    def name() -> str:
        return "clara_test_other_model"

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> OtherModelFunction:
        return OtherModelFunction()

    def get_config(self) -> dict[str, Any]:
        return {}


def test_collection_of_another_model_cannot_be_queried_but_can_be_read(context: SourceContext) -> None:
    collection = chroma_client(context).create_collection("other", embedding_function=OtherModelFunction())
    collection.add(ids=["x"], documents=["some text"])
    query = {"type": "chroma", "collection": "other", "query_text": "text"}
    assert source_problems(query, context, 2) == [
        "sources[2].query_text: collection 'other' was embedded with 'clara_test_other_model'; "
        "Clara can only query collections embedded with all-MiniLM-L6-v2"
    ]
    assert [d.id for batch in read_source({"type": "chroma", "collection": "other"}, context) for d in batch] == ["x"]


def test_embedding_function_gives_unit_vectors_from_one_model(tmp_path: Path) -> None:
    vectors = MiniLMEmbeddingFunction()(["Datenschutz", "data protection", "Hundesteuer"])
    assert len(vectors) == 3 and all(vector.shape == (384,) for vector in vectors)
    assert all(abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4 for vector in vectors)
    assert load_model() is load_model()


def test_records_live_where_the_context_points(context: SourceContext) -> None:
    # With a server URL nothing may be written locally: the HTTP client, not the embedded one, was used.
    if context.chroma_url:
        assert not Path(context.chroma_path).exists()
        response = requests.get(f"{context.chroma_url}/api/v2/tenants/default_tenant/databases/default_database"
                                "/collections", timeout=10)
        assert [collection["name"] for collection in response.json()] == ["documents"]
    else:
        assert Path(context.chroma_path).is_dir()
