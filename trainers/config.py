"""LoRA hyperparameters, their bounds, and validation that reports every problem at once."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Inclusive bounds, shared with the API schema. Names in EXCLUSIVE_MIN exclude their lower bound.
HYPERPARAMETER_BOUNDS: dict[str, tuple[float | int, float | int]] = {
    "num_epochs": (0, 100),
    "max_steps": (1, 1_000_000),
    "learning_rate": (0, 1),
    "batch_size": (1, 512),
    "gradient_accumulation_steps": (1, 1024),
    "max_seq_length": (16, 131072),
    "lora_rank": (1, 1024),
    "lora_alpha": (0, 8192),
    "lora_dropout": (0, 0.9),
    "warmup_ratio": (0, 0.5),
    "seed": (0, 2**32 - 1),
    "save_steps": (1, 1_000_000),
    "save_total_limit": (1, 100),
    "validation_split": (0, 0.5),
    "eval_steps": (1, 1_000_000),
    "early_stopping_patience": (1, 1000),
    "replay_fraction": (0, 1),
}
EXCLUSIVE_MIN: frozenset[str] = frozenset({"num_epochs", "learning_rate", "lora_alpha"})
INTEGER_FIELDS: frozenset[str] = frozenset(
    {"max_steps", "batch_size", "gradient_accumulation_steps", "max_seq_length", "lora_rank", "seed",
     "save_steps", "save_total_limit", "eval_steps", "early_stopping_patience"}
)
FLOAT_FIELDS: frozenset[str] = frozenset(HYPERPARAMETER_BOUNDS) - INTEGER_FIELDS
# Numbers that may be null: null picks a default that depends on the run (its length, its trainer type).
NULLABLE_FIELDS: frozenset[str] = frozenset({"max_steps", "save_steps", "eval_steps", "early_stopping_patience"})
QUANTIZATION_BITS = (4, 8)
PACKING_CHOICES = ("auto", True, False)
TRAINER_TYPES = ("lora", "qlora", "continuous")

ALL_LINEAR = "all-linear"
MAX_TARGET_MODULES = 64
TARGET_MODULE_PATTERN = re.compile(r"^[A-Za-z0-9_.]+$")


class TrainingConfigError(ValueError):
    """A training request is invalid; `problems` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class LoraHyperparameters:
    """Hyperparameters of one LoRA fine-tuning run."""

    num_epochs: float = 1.0
    """Passes over the dataset; fractions stop part way through the last pass."""
    max_steps: int | None = None
    """Optimizer steps to run; when set, overrides num_epochs."""
    learning_rate: float = 2e-4
    """Peak learning rate of the linear schedule."""
    batch_size: int = 4
    """Records per forward pass, packed or not; an optimizer step trains on batch_size * gradient_accumulation_steps."""
    gradient_accumulation_steps: int = 1
    """Forward passes whose gradients add up to one optimizer step."""
    max_seq_length: int = 512
    """Tokens kept per record; longer records are truncated."""
    lora_rank: int = 8
    """Rank r of the low-rank update matrices."""
    lora_alpha: float = 16.0
    """Scale of the update; the effective factor is lora_alpha / lora_rank."""
    lora_dropout: float = 0.05
    """Dropout probability on the LoRA input."""
    target_modules: list[str] | str | None = None
    """Module name suffixes to adapt, "all-linear", or None for peft's default for the model type."""
    warmup_ratio: float = 0.0
    """Share of the total steps spent warming the learning rate up from zero."""
    seed: int = 42
    """Seed for weight initialisation, dropout and data order."""
    packing: bool | str = "auto"
    """Lay a batch's records out in shared rows instead of padding each; "auto" packs when that saves padding."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass to save memory; None: on for qlora, off otherwise."""
    quantization_bits: int | None = None
    """qlora only: 4 (NF4 with double quantisation) or 8; None means 4 for qlora."""
    save_steps: int | None = None
    """Optimizer steps between checkpoints; None: about every tenth of the run. Raised to bound checkpoints per run."""
    save_total_limit: int = 2
    """Checkpoints kept; older ones are deleted once a newer one is complete."""
    validation_split: float = 0.0
    """Share of the training file held out for evaluation when no validation split is given."""
    eval_steps: int | None = None
    """Optimizer steps between evaluations; None: about every tenth of the run. Raised to bound evaluations per run."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without a lower eval_loss, keeping the best one's weights; None never stops."""
    replay_fraction: float = 0.0
    """continuous only: share of the parent job's training records mixed into the new data."""

    def problems(self) -> list[str]:
        """Return every problem with these values as "field: message"; empty when valid."""
        found: list[str] = []
        for name in HYPERPARAMETER_BOUNDS:
            problem = _number_problem(name, getattr(self, name))
            if problem:
                found.append(f"{name}: {problem}")
        found.extend(f"target_modules: {problem}" for problem in _target_modules_problems(self.target_modules))
        if self.packing not in PACKING_CHOICES or not isinstance(self.packing, (bool, str)):
            found.append('packing: must be true, false or "auto"')
        if self.gradient_checkpointing is not None and not isinstance(self.gradient_checkpointing, bool):
            found.append("gradient_checkpointing: must be true, false or null")
        bits = self.quantization_bits
        if bits is not None and (isinstance(bits, bool) or bits not in QUANTIZATION_BITS):
            found.append("quantization_bits: must be 4 or 8")
        return found

    def trainer_type_problems(self, trainer_type: str) -> list[str]:
        """Return the problems of combining these values with a trainer type."""
        if trainer_type not in TRAINER_TYPES:
            return [f"trainer_type: must be one of {', '.join(TRAINER_TYPES)}"]
        found = []
        if trainer_type == "lora" and self.quantization_bits is not None:
            found.append("quantization_bits: only qlora jobs quantise the base model; use trainer_type qlora")
        if trainer_type == "continuous" and self.quantization_bits is not None:
            found.append("quantization_bits: a continuous job keeps its parent's quantisation")
        if trainer_type != "continuous" and self.replay_fraction:
            found.append("replay_fraction: only continuous jobs replay a parent's data")
        return found

    def wants_gradient_checkpointing(self, quantized: bool) -> bool:
        """Whether to checkpoint activations: as asked, else on for quantised models."""
        return quantized if self.gradient_checkpointing is None else self.gradient_checkpointing

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraHyperparameters:
        """Build hyperparameters from a mapping, filling defaults; raise TrainingConfigError when invalid."""
        if not isinstance(data, Mapping):
            raise TrainingConfigError([f"hyperparameters: must be an object, not {type(data).__name__}"])
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        hyperparameters = cls(**{key: value for key, value in data.items() if key in known})
        problems = [f"{key}: unknown hyperparameter" for key in unknown] + hyperparameters.problems()
        if problems:
            raise TrainingConfigError(problems)
        hyperparameters._normalise()
        return hyperparameters

    def to_dict(self) -> dict[str, Any]:
        """Return all fields as a JSON-serialisable dict."""
        values = dataclasses.asdict(self)
        if isinstance(self.target_modules, list):
            values["target_modules"] = list(self.target_modules)
        return values

    def _normalise(self) -> None:
        """Store whole numbers given for float fields as floats so to_dict is stable."""
        for name in FLOAT_FIELDS:
            setattr(self, name, float(getattr(self, name)))
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)


def _number_problem(name: str, value: object) -> str | None:
    """Return why a numeric field's value is unacceptable, or None when it is fine."""
    if name in NULLABLE_FIELDS and value is None:
        return None
    integer = name in INTEGER_FIELDS
    # bool is a subclass of int, but true/false as a step count is always a client mistake.
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return "must be an integer" if integer else "must be a number"
    if not integer and not math.isfinite(value):
        return "must be a finite number"
    low, high = HYPERPARAMETER_BOUNDS[name]
    if name in EXCLUSIVE_MIN:
        if not low < value <= high:
            return f"must be greater than {low} and at most {high}"
    elif not low <= value <= high:
        return f"must be between {low} and {high}"
    return None


def _target_modules_problems(value: object) -> list[str]:
    """Return every problem with a target_modules value."""
    if value is None or value == ALL_LINEAR:
        return []
    if isinstance(value, str):
        return [f'must be "{ALL_LINEAR}", a list of module names, or null']
    if not isinstance(value, (list, tuple)):
        return ["must be a list of module names"]
    problems: list[str] = []
    if not value:
        problems.append("must name at least one module")
    if len(value) > MAX_TARGET_MODULES:
        problems.append(f"must name at most {MAX_TARGET_MODULES} modules")
    for index, name in enumerate(value):
        if not isinstance(name, str) or not TARGET_MODULE_PATTERN.fullmatch(name):
            problems.append(f"item {index} must be a module name of letters, digits, '_' and '.'")
    names = [name for name in value if isinstance(name, str)]
    if len(set(names)) != len(names):
        problems.append("must not name a module twice")
    return problems
