"""Pack the records of a batch into rows of at most max_seq_length tokens, so padding is not computed."""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Mapping, Sequence

import torch

from trainers.data import IGNORE_INDEX

logger = logging.getLogger(__name__)

# Packing must save more than this share of the tokens the model computes, padding included, to be worth it.
MIN_SAVING = 0.15


def should_pack(lengths: Sequence[int], max_seq_length: int, batch_size: int = 8) -> bool:
    """Pack when sharing rows within each batch of batch_size records saves 15% of the tokens padding computes."""
    # A step trains on batch_size records either way; packing only lays them out in fewer, fuller rows. Records
    # of one length waste no padding, so only mixed lengths can gain.
    if len(lengths) < 2 or batch_size < 2:
        return False
    batches = _shuffled_batches(lengths, batch_size)
    padded = sum(len(batch) * max(batch) for batch in batches)
    packed = sum(_packed_tokens(batch, max_seq_length) for batch in batches)
    return packed < (1 - MIN_SAVING) * padded


def _shuffled_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Split shuffled lengths into batches, as the trainer's sampler would."""
    order = list(lengths)
    # A fixed seed keeps the decision reproducible; the trainer's own shuffle is of the same kind.
    random.Random(0).shuffle(order)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _packed_tokens(lengths: Sequence[int], max_seq_length: int) -> int:
    """Tokens computed when these records share rows of at most max_seq_length, padded to the fullest row."""
    rows = [sum(lengths[item] for item in members) for members in _best_fit_decreasing(lengths, max_seq_length)]
    return len(rows) * max(rows)


def pack_examples(
    examples: Sequence[Mapping[str, Sequence[int]]], max_seq_length: int
) -> list[dict[str, list[int]]]:
    """Pack whole examples into rows with input_ids, labels and per-record position_ids, best fit decreasing."""
    bins = _best_fit_decreasing([len(example["input_ids"]) for example in examples], max_seq_length)
    # Slicing one shared list reuses its int objects instead of creating new ones for every token.
    positions = list(range(max_seq_length))
    return [_join(examples, members, positions) for members in bins]


def _best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign item indices to bins of the given capacity; each item goes to the fullest bin it fits."""
    too_long = [length for length in lengths if length > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} examples are longer than max_seq_length {capacity}, "
                         f"the longest has {max(too_long)} tokens")
    bins: list[list[int]] = []
    # Bins grouped by the room they have left; `rooms` lists the distinct values in order. There are at most
    # capacity + 1 of them, so the sorted list stays short however many bins there are.
    bins_by_room: dict[int, list[int]] = {}
    rooms: list[int] = []
    # Python's sort is stable, so equal lengths keep their input order and the result is deterministic.
    for item in sorted(range(len(lengths)), key=lambda index: -lengths[index]):
        length = lengths[item]
        position = bisect.bisect_left(rooms, length)
        if position == len(rooms):
            bin_index, room = len(bins), capacity
            bins.append([])
        else:
            room = rooms[position]
            bin_index = bins_by_room[room].pop()
            if not bins_by_room[room]:
                del bins_by_room[room]
                del rooms[position]
        bins[bin_index].append(item)
        left = room - length
        if left not in bins_by_room:
            bins_by_room[left] = []
            bisect.insort(rooms, left)
        bins_by_room[left].append(bin_index)
    return bins


def _join(
    examples: Sequence[Mapping[str, Sequence[int]]], members: Sequence[int], positions: list[int]
) -> dict[str, list[int]]:
    """Concatenate examples into one row whose positions restart, and whose first label is ignored, per record."""
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for index in members:
        input_ids, labels = examples[index]["input_ids"], examples[index]["labels"]
        row["input_ids"].extend(input_ids)
        # Unpacked, a record's first label is never used because the loss shifts labels by one; packed, it would
        # train the previous record's last token to predict this record's start.
        row["labels"].append(IGNORE_INDEX)
        row["labels"].extend(labels[1:])
        row["position_ids"].extend(positions[: len(input_ids)])
    return row


def row_record_count(row: Mapping[str, Sequence[int]]) -> int:
    """Return how many records a packed row holds."""
    return sum(1 for position in row["position_ids"] if position == 0)


class PackedCollator:
    """Packs the records of one batch into as few rows as fit max_seq_length, then pads the rows into tensors.

    A batch keeps its batch_size records, so packing changes neither the records nor the tokens of a step, only
    the padding computed; attention stays within each record through position_ids.
    """

    def __init__(self, pad_token_id: int, max_seq_length: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.max_seq_length = max_seq_length
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor | bool | int]:
        """Pack encoded records into rows and stack them, plus num_real_tokens and use_cache=False."""
        return pad_rows(pack_examples(features, self.max_seq_length), self.pad_token_id, self.pad_to_multiple_of)


def pad_rows(rows: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int,
             pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor | bool | int]:
    """Pad packed rows on the right into input_ids, labels and position_ids, plus num_real_tokens and use_cache."""
    length = max(len(row["input_ids"]) for row in rows)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    real_tokens = 0
    for row in rows:
        padding = length - len(row["input_ids"])
        real_tokens += len(row["input_ids"])
        batch["input_ids"].append(list(row["input_ids"]) + [pad_token_id] * padding)
        batch["labels"].append(list(row["labels"]) + [IGNORE_INDEX] * padding)
        # Positions restarting at 0 make the padding tail a sequence of its own instead of part of the last record.
        batch["position_ids"].append(list(row["position_ids"]) + list(range(padding)))
    tensors: dict[str, torch.Tensor | bool | int] = {
        name: torch.tensor(values, dtype=torch.long) for name, values in batch.items()
    }
    # A Python int, not a tensor: the Trainer would move a tensor to the GPU and reading it back syncs.
    tensors["num_real_tokens"] = real_tokens
    # transformers builds the per-record mask from position_ids only without an attention_mask and without
    # a cache, and Llama-style models create a cache whenever use_cache is on, even in training.
    tensors["use_cache"] = False
    return tensors
