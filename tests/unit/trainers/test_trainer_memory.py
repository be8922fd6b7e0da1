"""Out of memory while loading a model is reported as such, and the model's memory is freed once train returns.

A CPU has no GPU memory to run out of, so transformers' loading function is wrapped to load the model for real and
then raise torch.OutOfMemoryError, as a GPU that is too small would.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from trainers.config import LoraHyperparameters
from trainers.continuous import ParentJob
from trainers.lora import ModelLoadError, OutOfMemory, TrainingRequest, build_peft_model, train

GPU_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB"


def hyperparameters(**values: Any) -> LoraHyperparameters:
    return LoraHyperparameters(max_steps=2, batch_size=2, max_seq_length=64, **values)


@pytest.fixture
def loaded_models(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref]:
    """Make every base model load succeed and then run out of memory; collect weak references to the models."""
    references: list[weakref.ref] = []
    real = AutoModelForCausalLM.from_pretrained

    def load_then_run_out(*args: Any, **kwargs: Any) -> Any:
        model = real(*args, **kwargs)
        references.append(weakref.ref(model))
        raise torch.OutOfMemoryError(GPU_MESSAGE)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", load_then_run_out)
    return references


@pytest.mark.parametrize("trainer_type", ["qlora", "lora"])
def test_out_of_memory_while_loading_is_reported_and_the_model_freed(
    tmp_path: Path, tiny_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any],
    loaded_models: list[weakref.ref], trainer_type: str,
) -> None:
    request = TrainingRequest(str(tiny_model_dir), demo_dataset, tmp_path / "adapter", hyperparameters(),
                              trainer_type=trainer_type)
    with pytest.raises(OutOfMemory, match="Lower batch_size") as raised:
        train(request, reporter_factory())
    assert not isinstance(raised.value, ModelLoadError)
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)
    assert len(loaded_models) == 1
    # The exception is still held here, with its traceback, yet the model it passed through is gone.
    assert loaded_models[0]() is None
    assert not (tmp_path / "adapter").exists()


def test_out_of_memory_while_loading_the_parents_adapter_is_reported_and_the_base_freed(
    tmp_path: Path, tiny_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent_dir = tmp_path / "parent"
    build_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraHyperparameters()) \
        .save_pretrained(parent_dir)
    bases: list[weakref.ref] = []

    def run_out(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        bases.append(weakref.ref(model))
        raise torch.OutOfMemoryError(GPU_MESSAGE)

    monkeypatch.setattr(PeftModel, "from_pretrained", run_out)
    request = TrainingRequest(str(tiny_model_dir), demo_dataset, tmp_path / "adapter", hyperparameters(),
                              trainer_type="continuous",
                              parent=ParentJob(adapter_dir=parent_dir, dataset_path=demo_dataset))
    with pytest.raises(OutOfMemory, match="gradient_checkpointing") as raised:
        train(request, reporter_factory())
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)
    assert len(bases) == 1 and bases[0]() is None


def test_a_failed_training_step_frees_the_model(
    tmp_path: Path, tiny_model_dir: Path, demo_dataset: Path, reporter_factory: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trainers.loop import ClaraTrainer

    models: list[weakref.ref] = []

    def fail(self: ClaraTrainer, model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        models.append(weakref.ref(model))
        raise RuntimeError("a kernel failed")

    monkeypatch.setattr(ClaraTrainer, "training_step", fail)
    request = TrainingRequest(str(tiny_model_dir), demo_dataset, tmp_path / "adapter", hyperparameters())
    with pytest.raises(RuntimeError, match="a kernel failed") as raised:
        train(request, reporter_factory())
    # Held by the caller (a task logging it, say), the exception no longer keeps the model alive.
    assert raised.value.__traceback__ is not None
    assert len(models) == 1 and models[0]() is None
