"""Tests for LoRA hyperparameter defaults, bounds and validation."""

from __future__ import annotations

import json
import math

import pytest

from trainers.config import (
    EXCLUSIVE_MIN,
    HYPERPARAMETER_BOUNDS,
    INTEGER_FIELDS,
    MAX_TARGET_MODULES,
    LoraHyperparameters,
    TrainingConfigError,
)

DEFAULTS = {
    "num_epochs": 1.0,
    "max_steps": None,
    "learning_rate": 2e-4,
    "batch_size": 4,
    "gradient_accumulation_steps": 1,
    "max_seq_length": 512,
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "target_modules": None,
    "warmup_ratio": 0.0,
    "seed": 42,
    "packing": "auto",
    "gradient_checkpointing": None,
    "quantization_bits": None,
    "save_steps": None,
    "save_total_limit": 2,
    "validation_split": 0.0,
    "eval_steps": None,
    "early_stopping_patience": None,
    "replay_fraction": 0.0,
}


def test_defaults_are_valid_and_complete() -> None:
    hyperparameters = LoraHyperparameters()
    assert hyperparameters.problems() == []
    assert hyperparameters.to_dict() == DEFAULTS


def test_from_dict_fills_defaults_and_stores_floats() -> None:
    hyperparameters = LoraHyperparameters.from_dict({"num_epochs": 3, "lora_rank": 16, "target_modules": ["q_proj"]})
    values = hyperparameters.to_dict()
    assert values == {**DEFAULTS, "num_epochs": 3.0, "lora_rank": 16, "lora_alpha": 16.0, "target_modules": ["q_proj"]}
    assert isinstance(values["num_epochs"], float)
    assert json.loads(json.dumps(values)) == values


def test_from_dict_round_trips_to_dict() -> None:
    original = LoraHyperparameters.from_dict({"max_steps": 30, "learning_rate": 5e-3, "target_modules": "all-linear"})
    assert LoraHyperparameters.from_dict(original.to_dict()) == original


def test_from_dict_names_unknown_keys_together_with_other_problems() -> None:
    with pytest.raises(TrainingConfigError) as raised:
        LoraHyperparameters.from_dict({"epochs": 2, "rank": 4, "batch_size": 0})
    assert raised.value.problems == [
        "epochs: unknown hyperparameter",
        "rank: unknown hyperparameter",
        "batch_size: must be between 1 and 512",
    ]


def test_from_dict_rejects_a_non_mapping() -> None:
    with pytest.raises(TrainingConfigError, match="must be an object"):
        LoraHyperparameters.from_dict(["num_epochs", 1])  # type: ignore[arg-type]


def test_error_message_joins_problems() -> None:
    error = TrainingConfigError(["a: one", "b: two"])
    assert str(error) == "a: one; b: two"
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("values", "expected_fields"),
    [
        ({"learning_rate": 0, "batch_size": True, "lora_dropout": 1.0},
         ["learning_rate", "batch_size", "lora_dropout"]),
        ({"num_epochs": "3", "max_steps": 2.5, "seed": -1}, ["num_epochs", "max_steps", "seed"]),
        ({"max_seq_length": 8, "lora_rank": 0, "lora_alpha": 0, "warmup_ratio": 0.6},
         ["max_seq_length", "lora_rank", "lora_alpha", "warmup_ratio"]),
        ({"gradient_accumulation_steps": None, "target_modules": "q_proj", "learning_rate": math.nan},
         ["learning_rate", "gradient_accumulation_steps", "target_modules"]),
    ],
)
def test_problems_collects_every_problem(values: dict, expected_fields: list[str]) -> None:
    problems = LoraHyperparameters(**values).problems()
    assert sorted(problem.split(":")[0] for problem in problems) == sorted(expected_fields)


def test_bool_is_not_accepted_as_a_number() -> None:
    problems = LoraHyperparameters(max_steps=True, lora_alpha=False).problems()  # type: ignore[arg-type]
    assert problems == ["max_steps: must be an integer", "lora_alpha: must be a number"]


@pytest.mark.parametrize("name", sorted(HYPERPARAMETER_BOUNDS))
def test_bounds_are_inclusive_except_exclusive_minimums(name: str) -> None:
    low, high = HYPERPARAMETER_BOUNDS[name]
    step = 1 if name in INTEGER_FIELDS else 1e-6

    def problems_for(value: float) -> list[str]:
        return [p for p in LoraHyperparameters(**{name: value}).problems() if p.startswith(f"{name}:")]

    assert problems_for(high) == []
    assert problems_for(high + step) != []
    assert problems_for(low - step) != []
    if name in EXCLUSIVE_MIN:
        assert problems_for(low) != []
        assert problems_for(low + step) == []
    else:
        assert problems_for(low) == []


def test_max_steps_none_means_epochs() -> None:
    assert LoraHyperparameters(max_steps=None, num_epochs=2.5).problems() == []


@pytest.mark.parametrize("target_modules", [None, "all-linear", ["q_proj", "v_proj"], ["model.layers.0.mlp.up_proj"]])
def test_target_modules_accepted(target_modules: object) -> None:
    assert LoraHyperparameters(target_modules=target_modules).problems() == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target_modules", "message"),
    [
        ("q_proj", 'must be "all-linear", a list of module names, or null'),
        ([], "must name at least one module"),
        (["q-proj"], "item 0 must be a module name"),
        (["q_proj\n"], "item 0 must be a module name"),
        (["q_proj", 3], "item 1 must be a module name"),
        (["q_proj", "q_proj"], "must not name a module twice"),
        ([f"m{i}" for i in range(MAX_TARGET_MODULES + 1)], f"must name at most {MAX_TARGET_MODULES} modules"),
        ({"q_proj": True}, "must be a list of module names"),
    ],
)
def test_target_modules_rejected(target_modules: object, message: str) -> None:
    problems = LoraHyperparameters(target_modules=target_modules).problems()  # type: ignore[arg-type]
    assert len(problems) == 1
    assert problems[0].startswith("target_modules: ")
    assert message in problems[0]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"packing": "yes"}, ['packing: must be true, false or "auto"']),
        ({"packing": 1}, ['packing: must be true, false or "auto"']),
        ({"gradient_checkpointing": "on"}, ["gradient_checkpointing: must be true, false or null"]),
        ({"quantization_bits": 2}, ["quantization_bits: must be 4 or 8"]),
        ({"quantization_bits": True}, ["quantization_bits: must be 4 or 8"]),
        ({"save_total_limit": 0, "validation_split": 0.6}, ["save_total_limit: must be between 1 and 100",
                                                            "validation_split: must be between 0 and 0.5"]),
    ],
)
def test_new_settings_are_checked(values: dict, expected: list[str]) -> None:
    assert LoraHyperparameters(**values).problems() == expected


@pytest.mark.parametrize("name", ["save_steps", "eval_steps", "early_stopping_patience", "max_steps"])
def test_nullable_counts_accept_null(name: str) -> None:
    assert LoraHyperparameters(**{name: None}).problems() == []


@pytest.mark.parametrize(
    ("trainer_type", "values", "expected"),
    [
        ("lora", {}, []),
        ("qlora", {"quantization_bits": 8}, []),
        ("continuous", {"replay_fraction": 0.2}, []),
        ("lora", {"quantization_bits": 4}, ["quantization_bits: only qlora jobs quantise the base model; "
                                            "use trainer_type qlora"]),
        ("qlora", {"replay_fraction": 0.1}, ["replay_fraction: only continuous jobs replay a parent's data"]),
        ("continuous", {"quantization_bits": 4}, ["quantization_bits: a continuous job keeps its parent's "
                                                  "quantisation"]),
        ("dpo", {}, ["trainer_type: must be one of lora, qlora, continuous"]),
    ],
)
def test_trainer_type_problems(trainer_type: str, values: dict, expected: list[str]) -> None:
    assert LoraHyperparameters(**values).trainer_type_problems(trainer_type) == expected


@pytest.mark.parametrize(("asked", "quantized", "expected"),
                         [(None, True, True), (None, False, False), (False, True, False), (True, False, True)])
def test_gradient_checkpointing_defaults_to_on_for_quantised_models(asked: bool | None, quantized: bool,
                                                                     expected: bool) -> None:
    assert LoraHyperparameters(gradient_checkpointing=asked).wants_gradient_checkpointing(quantized) is expected
