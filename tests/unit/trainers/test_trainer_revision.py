"""A hub model's revision is resolved once, loaded for tokenizer and weights alike, and recorded with the run.

The hub is never contacted: HF_HUB_OFFLINE is set, and the hub cache is laid out by hand with the tiny model as
one commit of a made-up repository, which is exactly what a worker finds after a download.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest

from trainers.checkpoints import CheckpointStore
from trainers.config import LoraHyperparameters
from trainers.lora import REVISION_KEY, TrainingRequest, train

HUB_ID = "clara-test/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A hub cache holding the tiny model as commit COMMIT of HUB_ID, its main branch."""
    repository = tmp_path / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(tiny_model_dir, repository / "snapshots" / COMMIT)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return repository


def request(root: Path, base_model: str, **values: Any) -> TrainingRequest:
    hyperparameters = LoraHyperparameters(max_steps=4, batch_size=2, max_seq_length=64, save_steps=2, **values)
    return TrainingRequest(base_model, Path(__file__).parents[3] / "examples" / "demo-train.jsonl",
                           root / "adapter", hyperparameters, checkpoint_dir=root / "checkpoints")


def test_a_hub_model_run_records_the_commit_it_loaded(
    tmp_path: Path, hub_cache: Path, reporter_factory: Callable[..., Any]
) -> None:
    reporter = reporter_factory()
    result = train(request(tmp_path, HUB_ID), reporter)
    assert result.status == "completed"
    assert result.metrics[REVISION_KEY] == COMMIT
    # Checkpoints carry it too, so that a resumed attempt loads the same commit.
    assert [checkpoint.metrics[REVISION_KEY] for checkpoint, _ in reporter.checkpoints] == [COMMIT, COMMIT]


def test_a_resumed_run_loads_the_commit_its_checkpoint_names(
    tmp_path: Path, hub_cache: Path, reporter_factory: Callable[..., Any]
) -> None:
    stopped = train(request(tmp_path, HUB_ID), reporter_factory(time_up_after=2))
    assert stopped.status == "time_limit"
    assert CheckpointStore(tmp_path / "checkpoints", 2).latest().metrics[REVISION_KEY] == COMMIT
    # The branch moves on meanwhile, to a commit this cache has not got: the resume must not follow it.
    (hub_cache / "refs" / "main").write_text("f" * 40)
    resumed = train(request(tmp_path, HUB_ID), reporter_factory())
    assert resumed.status == "completed" and resumed.metrics["resumed_from_step"] == 3
    assert resumed.metrics[REVISION_KEY] == COMMIT


def test_a_local_model_directory_has_no_revision(tmp_path: Path, tiny_model_dir: Path,
                                                 reporter_factory: Callable[..., Any]) -> None:
    result = train(request(tmp_path, str(tiny_model_dir)), reporter_factory())
    assert result.metrics[REVISION_KEY] is None
