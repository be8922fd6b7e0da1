"""The eval loss is a mean over every trained token of the validation set, and runs bound their evaluations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers import loop
from trainers.config import LoraHyperparameters
from trainers.data import IGNORE_INDEX, CausalLMCollator, load_dataset
from trainers.evaluation import effective_interval
from trainers.lora import TrainingRequest, train
from trainers.progress import ProgressReporter, ReporterCallback
from trainers.training_data import Examples


@pytest.fixture(scope="module")
def validation(tiny_model_dir: Path, demo_dataset: Path) -> list[dict[str, list[int]]]:
    """Seven demo records of different lengths: batches of four end with a short batch of three."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = load_dataset(demo_dataset, tokenizer, max_seq_length=160).examples[:7]
    assert len({len(example["input_ids"]) for example in examples}) > 3
    return examples


def token_mean_loss(model: torch.nn.Module, examples: list[dict[str, list[int]]]) -> float:
    """Sum of the next-token losses of every trained token, each record run alone, over their count."""
    total, count = 0.0, 0
    with torch.no_grad():
        for example in examples:
            logits = model(input_ids=torch.tensor([example["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(example["labels"][1:])
            total += float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX,
                                                             reduction="sum"))
            count += int((labels != IGNORE_INDEX).sum())
    return total / count


def eval_loss(model: torch.nn.Module, examples: list[dict[str, list[int]]], batch_size: int, scratch: Path,
              pad_token_id: int) -> float:
    hyperparameters = LoraHyperparameters(batch_size=batch_size, max_steps=1)
    plan = loop.LoopPlan(total_steps=1, store=None, resume_from=None, has_validation=True,
                         gradient_checkpointing=False, device="cpu", bf16=False, eval_interval=1, save_interval=1)
    collator = CausalLMCollator(pad_token_id)
    trainer = loop.make_trainer(model, hyperparameters, plan, scratch, Examples(examples), Examples(examples),
                                collator, collator, ReporterCallback(ProgressReporter()))
    return trainer.evaluate()["eval_loss"]


def test_eval_loss_is_the_token_mean_whatever_the_batch_size(
    tmp_path: Path, tiny_model_dir: Path, validation: list[dict[str, list[int]]]
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    expected = token_mean_loss(model, validation)
    one = eval_loss(model, validation, 1, tmp_path / "one", model.config.pad_token_id)
    four = eval_loss(model, validation, 4, tmp_path / "four", model.config.pad_token_id)
    assert one == pytest.approx(expected, rel=1e-5)
    assert four == pytest.approx(expected, rel=1e-5)
    # The mean of per-record means differs, so the equality above is no accident of uniform records.
    with torch.no_grad():
        per_record = [token_mean_loss(model, [example]) for example in validation]
    assert sum(per_record) / len(per_record) != pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(("requested", "total_steps", "limit", "expected"), [
    (1, 1_000_000, 200, 5000),
    (1, 100, 200, 1),
    (None, 100, 200, 10),
    (None, 10_000, 200, 1000),
    (7, 1000, 100, 10),
    (50, 1000, 100, 50),
    (None, 1, 200, 1),
])
def test_effective_interval_bounds_the_count_per_run(requested: int | None, total_steps: int, limit: int,
                                                     expected: int) -> None:
    interval = effective_interval(requested, total_steps, limit)
    assert interval == expected
    assert total_steps // interval <= limit


def test_a_run_evaluates_and_checkpoints_at_most_as_often_as_allowed(
    tmp_path: Path, tiny_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any]
) -> None:
    hyperparameters = LoraHyperparameters(max_steps=6, eval_steps=1, save_steps=1, validation_split=0.2,
                                          batch_size=4, max_seq_length=128, packing=False, seed=3)
    request = TrainingRequest(str(tiny_model_dir), demo_dataset, tmp_path / "adapter", hyperparameters,
                              checkpoint_dir=tmp_path / "checkpoints", max_evaluations=2, max_checkpoints=3)
    reporter = reporter_factory()
    result = train(request, reporter)
    assert result.status == "completed"
    assert [step for step, _ in reporter.evaluations] == [3, 6]
    assert [checkpoint.step for checkpoint, _ in reporter.checkpoints] == [2, 4, 6]
    assert result.metrics["eval_interval"] == 3 and result.metrics["save_interval"] == 2
