"""Checkpoints are complete or absent, pruned to the limit, and a resumed run continues exactly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import Trainer

from trainers.checkpoints import METADATA_FILE, REQUIRED_FILES, CheckpointStore
from trainers.config import LoraHyperparameters
from trainers.lora import TrainingRequest, train

HYPERPARAMETERS = {"max_steps": 9, "save_steps": 3, "save_total_limit": 2, "batch_size": 4, "packing": False,
                   "learning_rate": 1e-3, "max_seq_length": 128, "seed": 3}


def stage(store: CheckpointStore, step: int, files: tuple[str, ...] = REQUIRED_FILES) -> Path:
    """Write what the Trainer writes for a checkpoint into staging."""
    staged = store.staging / f"checkpoint-{step}"
    staged.mkdir(parents=True)
    for name in files:
        (staged / name).write_text("x")
    return staged


def test_publish_moves_a_complete_checkpoint_into_place_and_prunes(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "job", limit=2)
    store.prepare()
    for step in (3, 6, 9):
        stage(store, step)
        checkpoint = store.publish(step, f"2026-11-22T00:00:0{step}+00:00", {"train_loss": 1.0 / step})
        assert checkpoint.path == tmp_path / "job" / f"checkpoint-{step}"
    assert [c.step for c in store.list()] == [6, 9]
    assert store.last_pruned == [3]
    assert store.latest().metrics == {"train_loss": pytest.approx(1 / 9)}
    assert not (store.staging / "checkpoint-9").exists()
    assert not any(path.name.startswith("deleting-") for path in store.staging.iterdir())


def test_an_incomplete_checkpoint_is_refused_and_never_listed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "job", limit=3)
    store.prepare()
    stage(store, 4, files=("trainer_state.json",))
    with pytest.raises(FileNotFoundError, match="optimizer.pt"):
        store.publish(4, "now", {})
    assert store.list() == []
    # A directory with the right name but no metadata (say, copied by hand half-way) does not count either.
    (tmp_path / "job" / "checkpoint-8").mkdir()
    assert store.latest() is None


def test_prepare_drops_what_a_dead_attempt_left_in_staging(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "job", limit=2)
    store.prepare()
    stage(store, 5)
    store.prepare()
    assert list(store.staging.iterdir()) == []


def request_for(root: Path, model_dir: Path, dataset: Path, **overrides: Any) -> TrainingRequest:
    return TrainingRequest(str(model_dir), dataset, root / "adapter",
                           LoraHyperparameters.from_dict({**HYPERPARAMETERS, **overrides}),
                           checkpoint_dir=root / "checkpoints", cache_dir=root / "cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, plain_model_dir: Path, demo_dataset: Path,
                  reporter_factory: Callable[..., Any]) -> Any:
    """One run of nine steps without interruption, to compare a resumed run against."""
    reporter = reporter_factory()
    result = train(request_for(tmp_path_factory.mktemp("whole"), plain_model_dir, demo_dataset), reporter)
    return result, reporter


def test_time_limit_checkpoints_and_a_new_run_resumes_exactly(
    tmp_path: Path, plain_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any],
    uninterrupted: Any,
) -> None:
    first = reporter_factory(time_up_after=4)
    stopped = train(request_for(tmp_path, plain_model_dir, demo_dataset), first)
    assert stopped.status == "time_limit" and stopped.adapter_dir is None
    assert [c.step for c, _ in first.checkpoints] == [3, 5]
    checkpoint = tmp_path / "checkpoints" / "checkpoint-5"
    for name in (*REQUIRED_FILES, "rng_state.pth", "adapter_model.safetensors", METADATA_FILE):
        assert (checkpoint / name).is_file(), name
    assert json.loads((checkpoint / METADATA_FILE).read_text())["metrics"]["train_loss"] == first.losses[-1][1]

    second = reporter_factory()
    resumed = train(request_for(tmp_path, plain_model_dir, demo_dataset), second)
    assert resumed.status == "completed"
    assert resumed.metrics["resumed_from_step"] == 5
    assert [step for step, _ in second.losses] == [6, 7, 8, 9]
    # Same data order, optimizer, scheduler and RNG: the resumed steps repeat the uninterrupted run's losses.
    whole_result, whole = uninterrupted
    assert [step for step, _ in whole.losses[5:]] == [6, 7, 8, 9]
    assert [loss for _, loss in second.losses] == pytest.approx([loss for _, loss in whole.losses[5:]], rel=1e-5)
    assert resumed.metrics["train_loss"] == pytest.approx(whole_result.metrics["train_loss"], rel=1e-5)
    assert resumed.metrics["total_steps"] == 9


def test_a_crash_while_saving_leaves_no_checkpoint(
    tmp_path: Path, plain_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def crash(self: Trainer, output_dir: str) -> None:
        raise OSError("disk full")

    # The RNG state is written after the adapter and optimizer: a crash there leaves a half-written directory.
    monkeypatch.setattr(Trainer, "_save_rng_state", crash)
    with pytest.raises(OSError, match="disk full"):
        train(request_for(tmp_path, plain_model_dir, demo_dataset), reporter_factory())
    store = CheckpointStore(tmp_path / "checkpoints", limit=2)
    assert store.list() == []
    assert (store.staging / "checkpoint-3" / "optimizer.pt").is_file()
    assert not (tmp_path / "checkpoints" / "checkpoint-3").exists()
    assert not (tmp_path / "adapter").exists()


EARLY_STOPPING = {"max_steps": 12, "eval_steps": 1, "save_steps": 1, "save_total_limit": 1, "validation_split": 0.2,
                  "early_stopping_patience": 2, "learning_rate": 0.2, "lora_dropout": 0.0}


def adapter_weights(adapter_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_early_stopping_survives_a_resume_and_publishes_the_best_weights(
    tmp_path: Path, plain_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any]
) -> None:
    import torch

    whole = reporter_factory()
    reference = train(request_for(tmp_path / "whole", plain_model_dir, demo_dataset, **EARLY_STOPPING), whole)
    losses = {step: metrics["eval_loss"] for step, metrics in whole.evaluations}
    # With this learning rate the eval loss is lowest at step 5 and two worse evaluations stop the run at step 7.
    assert reference.metrics["stopped_early"] and reference.metrics["best_step"] == 5
    assert reference.metrics["total_steps"] == 7
    assert min(losses, key=losses.get) == 5

    first = reporter_factory(time_up_after=5)
    stopped = train(request_for(tmp_path, plain_model_dir, demo_dataset, **EARLY_STOPPING), first)
    assert stopped.status == "time_limit"
    # Stopped at step 6, one evaluation after the best; the best checkpoint is kept although the limit is 1.
    assert [step for step, _ in first.evaluations] == [1, 2, 3, 4, 5, 6]
    assert [c.step for c in CheckpointStore(tmp_path / "checkpoints", limit=1).list()] == [5, 6]

    second = reporter_factory()
    resumed = train(request_for(tmp_path, plain_model_dir, demo_dataset, **EARLY_STOPPING), second)
    assert resumed.status == "completed" and resumed.metrics["resumed_from_step"] == 6
    # Patience carried over: the first evaluation after the resume is the second without improvement.
    assert [step for step, _ in second.evaluations] == [7]
    assert resumed.metrics["stopped_early"] is True and resumed.metrics["total_steps"] == 7
    assert resumed.metrics["best_step"] == 5
    assert resumed.metrics["eval_loss"] == pytest.approx(losses[5], rel=1e-5)
    published, expected = adapter_weights(resumed.adapter_dir), adapter_weights(reference.adapter_dir)
    assert published.keys() == expected.keys()
    for name, weights in expected.items():
        torch.testing.assert_close(published[name], weights, rtol=1e-4, atol=1e-6)
