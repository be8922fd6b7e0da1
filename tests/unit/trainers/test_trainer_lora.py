"""End-to-end tests that really train LoRA adapters on a tiny local model."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, T5Config

from trainers.config import LoraHyperparameters, TrainingConfigError
from trainers.data import CausalLMCollator, load_dataset
from trainers.lora import (
    TrainingRequest,
    TrainingResult,
    build_peft_model,
    check_request,
    publish_adapter,
    resolve_target_modules,
    train,
)


@dataclass
class TrainedRun:
    request: TrainingRequest
    result: TrainingResult
    reporter: Any


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, chat_model_dir: Path, sample_records: list[dict],
    reporter_factory: Callable[..., Any],
) -> TrainedRun:
    """Train once on the sample records with a chat-template model and share the outcome."""
    root = tmp_path_factory.mktemp("trained")
    dataset = root / "train.jsonl"
    dataset.write_text("".join(json.dumps(record) + "\n" for record in sample_records), encoding="utf-8")
    output_dir = root / "adapter"
    stale = root / "adapter.partial"
    stale.mkdir()
    (stale / "left-over.txt").write_text("from a crashed run")
    hyperparameters = LoraHyperparameters(
        max_steps=24, learning_rate=5e-3, batch_size=2, gradient_accumulation_steps=2, max_seq_length=128,
        lora_rank=8, lora_dropout=0.0, target_modules="all-linear", warmup_ratio=0.1, seed=7,
    )
    request = TrainingRequest(str(chat_model_dir), dataset, output_dir, hyperparameters)
    reporter = reporter_factory()
    return TrainedRun(request, train(request, reporter), reporter)


def mean_loss(model: torch.nn.Module, model_dir: Path, dataset_path: Path) -> float:
    """Mean next-token loss of a model on the trained tokens of a dataset."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = CausalLMCollator(tokenizer.pad_token_id)(list(load_dataset(dataset_path, tokenizer, 128)))
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def test_completed_run_writes_adapter_tokenizer_and_metrics(trained: TrainedRun) -> None:
    output_dir = trained.request.output_dir
    assert trained.result.status == "completed"
    assert trained.result.adapter_dir == output_dir
    names = {path.name for path in output_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert not output_dir.with_name("adapter.partial").exists()
    adapter_config = json.loads((output_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == trained.request.base_model
    assert adapter_config["r"] == 8
    assert json.loads((output_dir / "metrics.json").read_text()) == trained.result.metrics


def test_metrics_describe_the_run(trained: TrainedRun) -> None:
    metrics = trained.result.metrics
    assert metrics["total_steps"] == metrics["planned_steps"] == 24
    assert metrics["num_records"] == metrics["num_examples"] == 5
    assert metrics["trained_tokens"] > 0 and metrics["tokens_per_second"] > 0
    assert metrics["train_runtime_seconds"] > 0
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"]
    assert set(metrics["target_modules"]) >= {"q_proj", "v_proj", "down_proj"}
    assert "lm_head" not in metrics["target_modules"]
    assert metrics["last_loss"] == trained.reporter.reports[-1].loss
    assert metrics["last_loss"] < trained.reporter.reports[0].loss


def test_reporter_saw_every_step(trained: TrainedRun) -> None:
    reports = trained.reporter.reports
    assert [report.step for report in reports] == list(range(1, 25))
    assert all(report.total_steps == 24 for report in reports)
    assert reports[-1].percent == 100.0 and reports[-1].eta_seconds == 0.0
    tokens = [report.trained_tokens for report in reports]
    assert tokens == sorted(tokens) and tokens[0] > 0
    assert tokens[-1] == trained.result.metrics["trained_tokens"]
    # Warmup of 10 percent of 24 steps means the first steps run below the peak learning rate.
    assert reports[0].learning_rate < reports[3].learning_rate <= 5e-3


def test_adapter_lowers_the_loss_on_the_training_data(trained: TrainedRun) -> None:
    model_dir = Path(trained.request.base_model)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    base_loss = mean_loss(base, model_dir, trained.request.dataset_path)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), trained.result.adapter_dir)
    adapted_loss = mean_loss(adapted, model_dir, trained.request.dataset_path)
    assert adapted_loss < base_loss - 0.3


def test_existing_adapter_is_never_overwritten(trained: TrainedRun, reporter_factory: Callable[..., Any]) -> None:
    before = (trained.request.output_dir / "adapter_model.safetensors").read_bytes()
    reporter = reporter_factory()
    with pytest.raises(TrainingConfigError, match="already holds an adapter"):
        train(trained.request, reporter)
    assert reporter.reports == []
    assert (trained.request.output_dir / "adapter_model.safetensors").read_bytes() == before


def test_cancelled_run_writes_nothing(
    tmp_path: Path, plain_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any]
) -> None:
    output_dir = tmp_path / "adapter"
    reporter = reporter_factory(stop_after=3)
    hyperparameters = LoraHyperparameters(num_epochs=2, batch_size=4, max_seq_length=64, learning_rate=5e-3)
    result = train(TrainingRequest(str(plain_model_dir), demo_dataset, output_dir, hyperparameters), reporter)
    assert result.status == "cancelled"
    assert result.adapter_dir is None
    # The reporter asks to stop once it holds three reports, which the fourth step's end notices.
    assert [report.step for report in reporter.reports] == [1, 2, 3, 4]
    assert result.metrics["total_steps"] == 4 < result.metrics["planned_steps"]
    assert result.metrics["target_modules"] == ["q_proj", "v_proj"]
    assert list(tmp_path.iterdir()) == []


def test_check_request_reports_all_problems_at_once(
    tmp_path: Path, plain_model_dir: Path, jsonl: Callable[..., Path]
) -> None:
    dataset = jsonl([{"text": "gut"}, "{not json", {"instruction": "Frage"}])
    hyperparameters = LoraHyperparameters(learning_rate=0, batch_size=0, target_modules=["q_proj", "not_a_module"])
    with pytest.raises(TrainingConfigError) as raised:
        check_request(TrainingRequest(str(plain_model_dir), dataset, tmp_path / "out", hyperparameters))
    problems = raised.value.problems
    assert problems[:2] == ["learning_rate: must be greater than 0 and at most 1",
                            "batch_size: must be between 1 and 512"]
    assert problems[2:4] == ["dataset: line 2: invalid JSON (Expecting property name enclosed in double quotes)",
                             "dataset: line 3: field 'output' is missing"]
    assert len(problems) == 5
    assert problems[4].startswith("target_modules: llama models have no module named 'not_a_module' "
                                  "(adaptable modules: down_proj, embed_tokens, gate_proj, k_proj, lm_head")


def test_check_request_rejects_modules_lora_cannot_adapt(
    tmp_path: Path, plain_model_dir: Path, demo_dataset: Path
) -> None:
    hyperparameters = LoraHyperparameters(target_modules=["self_attn", "mlp", "o_proj"])
    with pytest.raises(TrainingConfigError) as raised:
        check_request(TrainingRequest(str(plain_model_dir), demo_dataset, tmp_path / "out", hyperparameters))
    assert [problem.split(" (")[0] for problem in raised.value.problems] == [
        "target_modules: 'self_attn' names LlamaAttention modules, which LoRA cannot adapt",
        "target_modules: 'mlp' names LlamaMLP modules, which LoRA cannot adapt",
    ]


@pytest.mark.parametrize(
    ("target_modules", "model_type", "expected"),
    [
        (None, "llama", ["q_proj", "v_proj"]),
        (None, "clara-unknown-architecture", "all-linear"),
        ("all-linear", "llama", "all-linear"),
        (["gate_proj"], "llama", ["gate_proj"]),
    ],
)
def test_resolve_target_modules(target_modules: object, model_type: str, expected: object) -> None:
    assert resolve_target_modules(target_modules, model_type) == expected  # type: ignore[arg-type]


def test_check_request_accepts_a_valid_request(tmp_path: Path, plain_model_dir: Path, demo_dataset: Path) -> None:
    hyperparameters = LoraHyperparameters(target_modules=["q_proj", "model.layers.1.mlp.down_proj"])
    check_request(TrainingRequest(str(plain_model_dir), demo_dataset, tmp_path / "out", hyperparameters))


@pytest.mark.parametrize(
    ("base_model", "expected"),
    [
        ("{tmp}/missing-model", "base_model: cannot load {tmp}/missing-model (no such directory)"),
        ("clara-tests/no-such-model", "base_model: cannot load clara-tests/no-such-model ("),
        ("{tmp}", "base_model: cannot load {tmp} ("),
    ],
)
def test_check_request_reports_an_unloadable_base_model(
    tmp_path: Path, demo_dataset: Path, base_model: str, expected: str
) -> None:
    base_model = base_model.format(tmp=tmp_path)
    with pytest.raises(TrainingConfigError) as raised:
        check_request(TrainingRequest(base_model, demo_dataset, tmp_path / "out", LoraHyperparameters()))
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].startswith(expected.format(tmp=tmp_path))


def test_check_request_rejects_a_model_that_is_not_a_causal_lm(tmp_path: Path, demo_dataset: Path) -> None:
    model_dir = tmp_path / "t5"
    T5Config(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64, vocab_size=100).save_pretrained(model_dir)
    with pytest.raises(TrainingConfigError) as raised:
        check_request(TrainingRequest(str(model_dir), demo_dataset, tmp_path / "out", LoraHyperparameters()))
    assert [problem.split(" (")[0] for problem in raised.value.problems] == [
        "base_model: t5 models cannot be trained as causal language models"
    ]


def test_check_request_rejects_a_non_empty_output_dir(
    tmp_path: Path, plain_model_dir: Path, demo_dataset: Path
) -> None:
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("someone else's file")
    with pytest.raises(TrainingConfigError) as raised:
        check_request(TrainingRequest(str(plain_model_dir), demo_dataset, output_dir, LoraHyperparameters()))
    assert raised.value.problems == [f"output_dir: {output_dir} already exists and is not an empty directory"]


def test_train_refuses_a_dataset_with_nothing_to_learn(
    tmp_path: Path, plain_model_dir: Path, jsonl: Callable[..., Path], reporter_factory: Callable[..., Any]
) -> None:
    dataset = jsonl([{"instruction": "Eine sehr lange Frage zum Bauantrag " * 10, "output": "Ja."}])
    request = TrainingRequest(str(plain_model_dir), dataset, tmp_path / "out", LoraHyperparameters(max_seq_length=16))
    with pytest.raises(TrainingConfigError, match="no record has a trainable token within max_seq_length 16"):
        train(request, reporter_factory())
    assert not (tmp_path / "out").exists()


def test_publish_refuses_an_output_dir_filled_meanwhile(tmp_path: Path, plain_model_dir: Path) -> None:
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(plain_model_dir), LoraHyperparameters())
    tokenizer = AutoTokenizer.from_pretrained(plain_model_dir)
    output_dir = tmp_path / "adapter"
    output_dir.mkdir()
    (output_dir / "adapter_config.json").write_text("{}")
    with pytest.raises(FileExistsError):
        publish_adapter(model, tokenizer, {"train_loss": 1.0}, output_dir)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter"]
    assert (output_dir / "adapter_config.json").read_text() == "{}"


def test_publish_replaces_an_empty_output_dir(tmp_path: Path, plain_model_dir: Path) -> None:
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(plain_model_dir), LoraHyperparameters())
    tokenizer = AutoTokenizer.from_pretrained(plain_model_dir)
    output_dir = tmp_path / "adapter"
    output_dir.mkdir()
    publish_adapter(model, tokenizer, {"train_loss": 1.0}, output_dir)
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert json.loads((output_dir / "metrics.json").read_text()) == {"train_loss": 1.0}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter"]
