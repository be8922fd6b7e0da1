"""Continuous training: a new job that starts from a finished job's adapter and can replay its data.

The API imports this module (adapter_settings, for continuous job requests): it must stay free of torch and
the other training libraries, as tests/integration/test_api_imports.py checks.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.config import LoraHyperparameters
from trainers.record_format import dataset_problems

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class ParentJob:
    """What a continuous job needs of its parent: its adapter, its data and how it split them."""

    adapter_dir: Path
    """The parent's published adapter."""
    dataset_path: Path
    """The parent's training file, for replay and for its held-out records."""
    validation_path: Path | None = None
    """The parent's validation file, when it trained on a dataset with one."""
    hyperparameters: LoraHyperparameters = field(default_factory=LoraHyperparameters)
    """The parent's hyperparameters: its validation_split, seed and max_seq_length rebuild its split."""
    quantization_bits: int | None = None
    """Bits the parent's base model was quantised to; the child loads the base the same way."""


def parent_problems(parent: ParentJob | None, replay_fraction: float) -> list[str]:
    """Return every problem with continuing from this parent."""
    if parent is None:
        return ["parent_job_id: a continuous job needs a parent job"]
    problems = []
    config = Path(parent.adapter_dir) / ADAPTER_CONFIG
    if not config.is_file():
        problems.append(f"parent_job_id: the parent's adapter is missing ({config} does not exist)")
    else:
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            problems.append(f"parent_job_id: the parent's adapter config cannot be read ({error})")
    needs_data = replay_fraction > 0 or parent.validation_path is None and parent.hyperparameters.validation_split
    if needs_data:
        problems.extend(f"parent_job_id: the parent's training data {problem}"
                        for problem in dataset_problems(Path(parent.dataset_path)))
    if parent.validation_path is not None:
        problems.extend(f"parent_job_id: the parent's validation data {problem}"
                        for problem in dataset_problems(Path(parent.validation_path)))
    return problems


def adapter_settings(adapter_dir: Path) -> dict[str, Any]:
    """The rank, alpha and target modules the parent adapter was trained with."""
    config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    targets = config.get("target_modules")
    return {
        "lora_rank": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "target_modules": sorted(targets) if isinstance(targets, (list, set)) else targets,
    }


def replay_sample(examples: Sequence[dict[str, list[int]]], fraction: float, seed: int,
                  max_seq_length: int) -> list[dict[str, list[int]]]:
    """A seeded sample of `fraction` of the parent's examples, cut to the child's sequence length."""
    if fraction <= 0 or not examples:
        return []
    count = max(1, round(fraction * len(examples)))
    chosen = random.Random(seed).sample(range(len(examples)), min(count, len(examples)))
    sample = []
    for index in sorted(chosen):
        example = examples[index]
        cut = {name: list(values[:max_seq_length]) for name, values in example.items()}
        if any(label != -100 for label in cut["labels"]):
            sample.append(cut)
    logger.info("Replaying %s of the parent's %s training examples.", len(sample), len(examples))
    return sample
