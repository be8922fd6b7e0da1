"""The three trainer types end to end on the tiny model, evaluation, and the out-of-memory path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from trainers.config import LoraHyperparameters, TrainingConfigError
from trainers.continuous import ParentJob, replay_sample
from trainers.loop import ClaraTrainer
from trainers.lora import OutOfMemory, TrainingRequest, build_model, check_request, train
from trainers.progress import ReporterCallback

BASE = {"batch_size": 4, "learning_rate": 5e-3, "max_seq_length": 128, "lora_dropout": 0.0, "seed": 11,
        "packing": False}


def run(root: Path, model_dir: Path, dataset: Path, reporter: Any, trainer_type: str = "lora",
        parent: ParentJob | None = None, **hyperparameters: Any) -> Any:
    request = TrainingRequest(str(model_dir), dataset, root / "adapter",
                              LoraHyperparameters.from_dict({**BASE, **hyperparameters}), trainer_type=trainer_type,
                              parent=parent, checkpoint_dir=root / "checkpoints", cache_dir=root / "cache")
    return request, train(request, reporter)


@pytest.fixture(scope="module")
def parent_run(tmp_path_factory: pytest.TempPathFactory, plain_model_dir: Path, demo_dataset: Path,
               reporter_factory: Callable[..., Any]) -> tuple[TrainingRequest, Any, Any]:
    """A LoRA job with a held-out tenth, which the continuous tests continue."""
    reporter = reporter_factory()
    request, result = run(tmp_path_factory.mktemp("parent"), plain_model_dir, demo_dataset, reporter,
                          max_steps=30, validation_split=0.2, learning_rate=2e-2, target_modules="all-linear")
    return request, result, reporter


def test_lora_evaluates_on_the_held_out_split(parent_run: tuple[TrainingRequest, Any, Any]) -> None:
    _, result, reporter = parent_run
    metrics = result.metrics
    assert result.status == "completed"
    assert metrics["validation_examples"] > 0
    assert metrics["num_examples"] + metrics["validation_examples"] == metrics["num_records"] - metrics[
        "skipped_records"]
    # Every tenth of the run (3 steps) and at the end; the last evaluation is the reported one.
    assert [step for step, _ in reporter.evaluations] == list(range(3, 31, 3))
    last = reporter.evaluations[-1][1]
    assert metrics["eval_loss"] == last["eval_loss"]
    assert metrics["perplexity"] == pytest.approx(float(torch.tensor(last["eval_loss"]).exp()), rel=1e-5)
    assert reporter.evaluations[-1][1]["eval_loss"] < reporter.evaluations[0][1]["eval_loss"]
    assert [c.step for c, _ in reporter.checkpoints][-2:] == [27, 30]
    assert reporter.checkpoints[-1][0].metrics["eval_loss"] == metrics["eval_loss"]


def test_continuous_starts_from_the_parents_weights(
    tmp_path: Path, plain_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any],
    parent_run: tuple[TrainingRequest, Any, Any],
) -> None:
    parent_request, parent_result, parent_reporter = parent_run
    parent = ParentJob(adapter_dir=parent_result.adapter_dir, dataset_path=demo_dataset,
                       hyperparameters=parent_request.hyperparameters)
    reporter = reporter_factory()
    _, result = run(tmp_path, plain_model_dir, demo_dataset, reporter, trainer_type="continuous", parent=parent,
                    max_steps=6, learning_rate=1e-3, replay_fraction=0.5, seed=12)
    metrics = result.metrics
    assert result.status == "completed"
    # The parent's own held-out records, evaluated with the weights the child starts from: the parent's loss.
    assert metrics["parent_eval_loss_before"] == pytest.approx(parent_result.metrics["eval_loss"], rel=1e-4)
    assert metrics["forgetting"] == pytest.approx(metrics["parent_eval_loss_after"]
                                                  - metrics["parent_eval_loss_before"])
    # The first losses continue where the parent ended, far below where training from the base model began.
    def mean(pairs: list[tuple[int, float]]) -> float:
        return sum(loss for _, loss in pairs) / len(pairs)

    parent_first, parent_last = mean(parent_reporter.losses[:3]), mean(parent_reporter.losses[-3:])
    child_first = mean(reporter.losses[:3])
    assert abs(child_first - parent_last) < abs(child_first - parent_first) / 3
    assert metrics["replayed_examples"] > 0
    assert metrics["lora_rank"] == parent_request.hyperparameters.lora_rank


def test_replay_sample_is_seeded_and_cut_to_length() -> None:
    examples = [{"input_ids": list(range(n + 2)), "attention_mask": [1] * (n + 2), "labels": [-100] + list(
        range(1, n + 2))} for n in range(40)]
    first = replay_sample(examples, 0.25, seed=5, max_seq_length=16)
    assert first == replay_sample(examples, 0.25, seed=5, max_seq_length=16)
    assert first != replay_sample(examples, 0.25, seed=6, max_seq_length=16)
    assert len(first) == 10
    assert all(len(example["input_ids"]) <= 16 for example in first)
    assert replay_sample(examples, 0.0, seed=5, max_seq_length=16) == []


def test_qlora_trains_a_4_bit_base_on_the_cpu(
    tmp_path: Path, plain_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any],
) -> None:
    reporter = reporter_factory()
    request, result = run(tmp_path, plain_model_dir, demo_dataset, reporter, trainer_type="qlora", max_steps=12)
    assert result.status == "completed"
    assert result.metrics["quantization_bits"] == 4 and result.metrics["gradient_checkpointing"] is True
    losses = [loss for _, loss in reporter.losses]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == request.hyperparameters.lora_rank
    model = build_model(request, "cpu", False, 4, gradient_checkpointing=True)
    assert any(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())


def test_out_of_memory_ends_with_advice(
    tmp_path: Path, plain_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def out_of_memory(self: ClaraTrainer, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ClaraTrainer, "training_step", out_of_memory)
    with pytest.raises(OutOfMemory) as caught:
        run(tmp_path, plain_model_dir, demo_dataset, reporter_factory(), max_steps=3, batch_size=8)
    message = str(caught.value)
    assert "batch_size (now 8" in message and "max_seq_length (now 128)" in message and "qlora" in message


@pytest.mark.parametrize(
    ("trainer_type", "overrides", "parent", "expected"),
    [
        ("continuous", {}, None, "parent_job_id: a continuous job needs a parent job"),
        ("lora", {"quantization_bits": 4}, None, "quantization_bits: only qlora jobs"),
        ("lora", {"early_stopping_patience": 2}, None, "early_stopping_patience: needs validation data"),
        ("continuous", {}, "missing", "parent_job_id: the parent's adapter is missing"),
    ],
)
def test_check_request_names_every_problem(tmp_path: Path, plain_model_dir: Path, demo_dataset: Path,
                                           trainer_type: str, overrides: dict, parent: str | None,
                                           expected: str) -> None:
    parent_job = ParentJob(tmp_path / "no-adapter", demo_dataset) if parent else None
    request = TrainingRequest(str(plain_model_dir), demo_dataset, tmp_path / "out",
                              LoraHyperparameters.from_dict({**BASE, **overrides}), trainer_type=trainer_type,
                              parent=parent_job)
    with pytest.raises(TrainingConfigError) as caught:
        check_request(request)
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(("losses", "patience", "stops_at"),
                         [([3.0, 2.0, 2.5, 2.4, 1.0], 2, 4), ([3.0, 2.0, 1.0], 1, None), ([2.0, 2.0], 1, 2)])
def test_early_stopping_counts_evaluations_without_improvement(
    tmp_path: Path, reporter_factory: Callable[..., Any], losses: list[float], patience: int, stops_at: int | None,
) -> None:
    callback = ReporterCallback(reporter_factory(), early_stopping_patience=patience)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    state, control = TrainerState(max_steps=100), TrainerControl()
    stopped = None
    for number, loss in enumerate(losses, start=1):
        state.global_step = number
        callback.on_evaluate(args, state, control, metrics={"eval_loss": loss})
        if control.should_training_stop and stopped is None:
            stopped = number
    assert stopped == stops_at
    assert callback.stopped_early is (stops_at is not None)


def test_early_stopping_restores_the_best_evaluations_weights(tmp_path: Path,
                                                              reporter_factory: Callable[..., Any]) -> None:
    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    callback = ReporterCallback(reporter_factory(), early_stopping_patience=1)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    state, control = TrainerState(max_steps=100), TrainerControl()
    for step, (loss, weight) in enumerate([(3.0, 1.0), (2.0, 2.0), (2.5, 3.0)], start=1):
        with torch.no_grad():
            model.weight.fill_(weight)
            model.bias.fill_(weight)
        state.global_step = step
        callback.on_evaluate(args, state, control, metrics={"eval_loss": loss}, model=model)
    assert callback.stopped_early and callback.best_step == 2 and callback.best_eval["eval_loss"] == 2.0
    assert callback.restore_best(model)
    assert torch.all(model.weight == 2.0)
    # Frozen weights were never copied, so they stay as they are.
    assert torch.all(model.bias == 3.0)


def test_restore_best_does_nothing_without_an_early_stop(tmp_path: Path,
                                                          reporter_factory: Callable[..., Any]) -> None:
    model = torch.nn.Linear(2, 2)
    callback = ReporterCallback(reporter_factory(), early_stopping_patience=3)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    callback.on_evaluate(args, TrainerState(global_step=1), TrainerControl(), metrics={"eval_loss": 1.0}, model=model)
    assert not callback.restore_best(model)


def test_an_early_stopped_run_publishes_its_best_checkpoints_adapter(
    tmp_path: Path, plain_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any],
) -> None:
    reporter = reporter_factory()
    # A learning rate this high makes the held-out loss climb after the first steps, so patience runs out.
    _, result = run(tmp_path, plain_model_dir, demo_dataset, reporter, max_steps=40, learning_rate=0.5,
                    validation_split=0.2, eval_steps=2, save_steps=2, save_total_limit=40,
                    early_stopping_patience=2)
    metrics = result.metrics
    evaluations = dict(reporter.evaluations)
    best_step = min(evaluations, key=lambda step: evaluations[step]["eval_loss"])
    assert result.status == "completed" and metrics["stopped_early"]
    assert metrics["best_step"] == best_step < metrics["total_steps"]
    assert metrics["eval_loss"] == evaluations[best_step]["eval_loss"]
    published = load_file(result.adapter_dir / "adapter_model.safetensors")
    best = load_file(tmp_path / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    last = load_file(tmp_path / "checkpoints" / f"checkpoint-{metrics['total_steps']}" / "adapter_model.safetensors")
    assert published.keys() == best.keys()
    assert all(torch.equal(published[name], best[name]) for name in published)
    assert not all(torch.equal(published[name], last[name]) for name in published)
