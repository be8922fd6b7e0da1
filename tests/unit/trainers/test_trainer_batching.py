"""batch_size counts records per step whether or not batches are packed, and the run reports its step size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trainers.config import LoraHyperparameters
from trainers.lora import TrainingRequest, train
from trainers.training_data import prepare


def run(tmp_path: Path, model_dir: Path, dataset: Path, reporter: Any, packing: bool) -> Any:
    hyperparameters = LoraHyperparameters(num_epochs=1.0, batch_size=4, max_seq_length=512, packing=packing,
                                          learning_rate=1e-3, seed=5)
    request = TrainingRequest(str(model_dir), dataset, tmp_path / f"adapter-{packing}", hyperparameters)
    return train(request, reporter)


@pytest.fixture
def sixteen_records(tmp_path: Path, demo_dataset: Path) -> Path:
    """Sixteen demo records of 74 to 160 tokens: three or more fit one row of 512."""
    lines = demo_dataset.read_text(encoding="utf-8").splitlines(keepends=True)[:16]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_packing_keeps_the_records_and_tokens_of_a_step(
    tmp_path: Path, tiny_model_dir: Path, sixteen_records: Path, reporter_factory: Callable[..., Any]
) -> None:
    padded_reporter, packed_reporter = reporter_factory(), reporter_factory()
    padded = run(tmp_path, tiny_model_dir, sixteen_records, padded_reporter, packing=False)
    packed = run(tmp_path, tiny_model_dir, sixteen_records, packed_reporter, packing=True)
    assert packed.metrics["packed"] is True and padded.metrics["packed"] is False
    # Sixteen records in batches of four: four optimizer steps either way (packed rows used to count as the batch,
    # so four rows of four records each made a single step).
    assert padded.metrics["total_steps"] == packed.metrics["total_steps"] == 4
    assert [p.step for p in packed_reporter.reports] == [1, 2, 3, 4]
    for result in (padded, packed):
        assert result.metrics["records_per_step"] == 4
    assert packed.metrics["tokens_per_step"] == padded.metrics["tokens_per_step"]
    assert packed.metrics["trained_tokens"] == padded.metrics["trained_tokens"]
    # tokens_per_step is the mean real tokens of four records.
    assert packed.metrics["tokens_per_step"] == round(packed.metrics["trained_tokens"] / 4)


def test_step_size_counts_records_and_their_mean_tokens(
    tiny_model_dir: Path, sixteen_records: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = prepare(sixteen_records, None, None, LoraHyperparameters(packing=True), tokenizer, None)
    tokens = sum(len(example["input_ids"]) for example in data.train)
    assert data.step_size(batch_size=2, gradient_accumulation_steps=3) == {
        "records_per_step": 6, "tokens_per_step": round(6 * tokens / 16)}
