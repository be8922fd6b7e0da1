"""Everything a run trains and evaluates on: encoded, split, replayed and packed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from trainers.config import LoraHyperparameters, TrainingConfigError
from trainers.continuous import ParentJob, replay_sample
from trainers.data import CausalLMCollator, load_dataset
from trainers.evaluation import split_examples
from trainers.packing import PackedCollator, should_pack

logger = logging.getLogger(__name__)

Example = dict[str, list[int]]


class Examples(torch.utils.data.Dataset):
    """A list of encoded examples as a map-style dataset."""

    def __init__(self, rows: list[Example]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Example:
        return self.rows[index]


@dataclass
class TrainingData:
    """The examples a run trains and evaluates on; packing happens per batch, in the training collator."""

    train: Examples
    validation: Examples | None
    parent_validation: Examples | None
    packed: bool
    counts: dict[str, int]
    """num_records, num_examples, train_tokens, validation_examples, replayed_examples, skipped_records."""
    max_seq_length: int = 512
    """Longest row a packed batch may build."""

    def collators(self, pad_token_id: int, device: str) -> tuple[Any, Any]:
        """The training collator (packing or padding) and the padding collator evaluation uses."""
        # Multiples of 8 let GPU tensor cores work on whole tiles.
        multiple = 8 if device == "cuda" else None
        padded = CausalLMCollator(pad_token_id, pad_to_multiple_of=multiple)
        if not self.packed:
            return padded, padded
        return PackedCollator(pad_token_id, self.max_seq_length, pad_to_multiple_of=multiple), padded

    def step_size(self, batch_size: int, gradient_accumulation_steps: int) -> dict[str, int]:
        """Records and (mean) real tokens one optimizer step trains on; the same packed or not."""
        records = batch_size * gradient_accumulation_steps
        examples = self.counts["num_examples"]
        mean_tokens = self.counts["train_tokens"] / examples if examples else 0.0
        return {"records_per_step": records, "tokens_per_step": round(records * mean_tokens)}


def prepare(dataset_path: Path, validation_path: Path | None, parent: ParentJob | None,
            hyperparameters: LoraHyperparameters, tokenizer: PreTrainedTokenizerBase,
            cache_dir: Path | None) -> TrainingData:
    """Encode the training file, hold out or load validation, mix in replay, and pack when it pays."""
    max_length = hyperparameters.max_seq_length
    encoded = load_dataset(Path(dataset_path), tokenizer, max_length, cache_dir=cache_dir)
    if validation_path is not None:
        train = list(encoded.examples)
        validation = list(load_dataset(Path(validation_path), tokenizer, max_length, cache_dir=cache_dir).examples)
    else:
        train, validation = split_examples(encoded.examples, hyperparameters.validation_split, hyperparameters.seed)
    replayed: list[Example] = []
    parent_validation: list[Example] | None = None
    if parent is not None:
        parent_train, parent_validation = _parent_split(parent, hyperparameters.replay_fraction > 0, tokenizer,
                                                        cache_dir)
        replayed = replay_sample(parent_train, hyperparameters.replay_fraction, hyperparameters.seed, max_length)
    if not train:
        raise TrainingConfigError([f"dataset: no record has a trainable token within max_seq_length {max_length}"])
    train = train + replayed
    lengths = [len(example["input_ids"]) for example in train]
    packed = _wants_packing(hyperparameters, lengths)
    counts = {
        "num_records": encoded.num_records,
        "num_examples": len(train),
        "train_tokens": sum(lengths),
        "validation_examples": len(validation),
        "replayed_examples": len(replayed),
        "skipped_records": encoded.skipped + encoded.rejected,
    }
    logger.info("Training on %s examples%s, evaluating on %s.", len(train),
                f", each batch packed into rows of up to {max_length} tokens" if packed else "", len(validation))
    return TrainingData(Examples(train), Examples(validation) if validation else None,
                        Examples(parent_validation) if parent_validation else None, packed, counts, max_length)


def _wants_packing(hyperparameters: LoraHyperparameters, lengths: list[int]) -> bool:
    """Pack when asked to, or on "auto" when the lengths are mixed enough for padding to waste time."""
    if hyperparameters.packing == "auto":
        return should_pack(lengths, hyperparameters.max_seq_length, hyperparameters.batch_size)
    return bool(hyperparameters.packing)


def _parent_split(parent: ParentJob, need_train: bool, tokenizer: PreTrainedTokenizerBase,
                  cache_dir: Path | None) -> tuple[list[Example], list[Example] | None]:
    """The parent's training and validation examples, rebuilt exactly as the parent split them.

    Files that are not needed are not read, so a parent whose training file is gone can still be
    continued without replay.
    """
    settings = parent.hyperparameters
    validation: list[Example] = []
    if parent.validation_path is not None:
        validation = list(load_dataset(Path(parent.validation_path), tokenizer, settings.max_seq_length,
                                       cache_dir=cache_dir).examples)
        if not need_train:
            return [], validation or None
    elif not need_train and not settings.validation_split:
        return [], None
    encoded = load_dataset(Path(parent.dataset_path), tokenizer, settings.max_seq_length, cache_dir=cache_dir)
    if parent.validation_path is not None:
        return list(encoded.examples), validation or None
    train, held_out = split_examples(encoded.examples, settings.validation_split, settings.seed)
    return train, held_out or None
