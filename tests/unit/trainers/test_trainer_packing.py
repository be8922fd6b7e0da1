"""Tests for sample packing: the bin packing itself, the packed collator, and equivalence on the tiny model."""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from trainers.data import IGNORE_INDEX, load_dataset
from trainers.model_loading import ATTENTION_IMPLEMENTATIONS
from trainers.packing import PackedCollator, pack_examples, pad_rows, row_record_count, should_pack

# Token ids say which record and position they come from, so a test can trace every token back.
STRIDE = 10_000


def synthetic_examples(lengths: list[int], bos_label: bool = True) -> list[dict[str, list[int]]]:
    """Examples whose token at position p of record r is r * STRIDE + p; every third label is masked."""
    examples = []
    for record, length in enumerate(lengths):
        input_ids = [record * STRIDE + position for position in range(length)]
        labels = [IGNORE_INDEX if position % 3 == 1 else token for position, token in enumerate(input_ids)]
        if bos_label:
            labels[0] = IGNORE_INDEX
        examples.append({"input_ids": input_ids, "attention_mask": [1] * length, "labels": labels})
    return examples


def split_row(row: dict[str, list[int]]) -> list[tuple[list[int], list[int], list[int]]]:
    """Cut a packed row at every position 0 into (input_ids, labels, position_ids) per record."""
    starts = [index for index, position in enumerate(row["position_ids"]) if position == 0]
    bounds = [*starts, len(row["input_ids"])]
    return [
        (row["input_ids"][start:end], row["labels"][start:end], row["position_ids"][start:end])
        for start, end in zip(bounds, bounds[1:], strict=False)
    ]


def seeded_lengths(count: int, low: int, high: int, seed: int = 0) -> list[int]:
    generator = random.Random(seed)
    return [generator.randint(low, high) for _ in range(count)]


LENGTH_MIXES = {
    "uniform-short": [5] * 40,
    "mixed": seeded_lengths(300, 2, 64),
    "exactly-full": [64, 64, 64],
    "full-and-short": [64, 2, 63, 1, 64, 32, 32, 33, 31, 64],
    "long-tail": [60] * 5 + seeded_lengths(200, 2, 12, seed=1),
    "single": [17],
}


# ---- pack_examples ----

@pytest.mark.parametrize("lengths", LENGTH_MIXES.values(), ids=LENGTH_MIXES.keys())
def test_packing_keeps_every_token_of_every_record_exactly_once(lengths: list[int]) -> None:
    examples = synthetic_examples(lengths)
    rows = pack_examples(examples, max_seq_length=64)
    packed = Counter(
        (token // STRIDE, position, token)
        for row in rows for ids, _, positions in split_row(row) for token, position in zip(ids, positions, strict=True)
    )
    original = Counter(
        (record, position, token)
        for record, example in enumerate(examples) for position, token in enumerate(example["input_ids"])
    )
    assert packed == original
    assert sum(row_record_count(row) for row in rows) == len(examples)


@pytest.mark.parametrize("lengths", LENGTH_MIXES.values(), ids=LENGTH_MIXES.keys())
def test_packed_rows_fit_and_keep_records_whole_and_in_order(lengths: list[int]) -> None:
    examples = synthetic_examples(lengths)
    rows = pack_examples(examples, max_seq_length=64)
    for row in rows:
        assert set(row) == {"input_ids", "labels", "position_ids"}
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) <= 64
        for ids, labels, positions in split_row(row):
            record = ids[0] // STRIDE
            assert ids == examples[record]["input_ids"]
            assert positions == list(range(len(ids)))
            assert labels == [IGNORE_INDEX, *examples[record]["labels"][1:]]


def test_packing_masks_the_first_label_even_when_the_record_had_one() -> None:
    examples = synthetic_examples([4, 6, 5], bos_label=False)
    assert examples[1]["labels"][0] != IGNORE_INDEX
    (row,) = pack_examples(examples, max_seq_length=64)
    for ids, labels, _ in split_row(row):
        assert labels[0] == IGNORE_INDEX
        assert labels[1:] == examples[ids[0] // STRIDE]["labels"][1:]


def test_packing_is_deterministic() -> None:
    examples = synthetic_examples(seeded_lengths(500, 2, 128, seed=3))
    assert pack_examples(examples, 128) == pack_examples(examples, 128)


@pytest.mark.parametrize(("low", "high"), [(2, 40), (8, 200), (100, 256)])
def test_packing_fills_rows_well(low: int, high: int) -> None:
    lengths = seeded_lengths(3000, low, high, seed=4)
    rows = pack_examples(synthetic_examples(lengths), max_seq_length=256)
    # No two records longer than half a row can share one, so the optimum needs at least this many rows.
    lower_bound = max(math.ceil(sum(lengths) / 256), sum(1 for length in lengths if length > 128))
    # Best fit decreasing needs at most 11/9 of the optimum plus a little; on such mixes it comes very close.
    assert len(rows) <= lower_bound * 1.03 + 1


def test_packing_a_hundred_thousand_records_is_fast() -> None:
    lengths = seeded_lengths(100_000, 2, 64, seed=5)
    examples = [{"input_ids": [1] * length, "labels": [1] * length} for length in lengths]
    started = time.perf_counter()
    rows = pack_examples(examples, max_seq_length=2048)
    # Generous for a slow CI machine, yet far below what a quadratic search over open rows would take.
    assert time.perf_counter() - started < 20
    assert sum(len(row["input_ids"]) for row in rows) == sum(lengths)
    assert len(rows) == math.ceil(sum(lengths) / 2048)


def test_packing_refuses_examples_longer_than_a_row() -> None:
    with pytest.raises(ValueError, match="longer than max_seq_length 8"):
        pack_examples(synthetic_examples([4, 9]), max_seq_length=8)


def test_packing_nothing_gives_no_rows() -> None:
    assert pack_examples([], max_seq_length=8) == []


# ---- should_pack ----

@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        ([500] * 100, False),
        ([480, 500, 512, 490] * 25, False),
        (seeded_lengths(100, 20, 512), True),
        ([512] * 10 + seeded_lengths(90, 20, 200), True),
        ([512] + [300] * 99, False),
        (seeded_lengths(100, 300, 512), False),
        # A step trains on batch_size records packed or not, so records of one length gain nothing.
        ([30] * 100, False),
        ([128] * 100, False),
        ([200] * 100, False),
        ([], False),
        ([10], False),
    ],
    ids=["uniform-long", "nearly-uniform", "mixed", "long-tail", "one-long-outlier", "mixed-too-long-to-share",
         "uniform-very-short", "uniform-quarter", "uniform-two-fifths", "empty", "single"],
)
def test_should_pack(lengths: list[int], expected: bool) -> None:
    assert should_pack(lengths, 512) is expected


def test_should_pack_sees_no_padding_to_save_in_batches_of_one() -> None:
    lengths = seeded_lengths(100, 20, 512)
    assert should_pack(lengths, 512, batch_size=8)
    assert not should_pack(lengths, 512, batch_size=1)


# ---- PackedCollator ----

def test_packed_rows_pad_with_a_sequence_of_their_own() -> None:
    rows = [
        {"input_ids": [0, 5, 6, 0, 7], "labels": [-100, 5, 6, -100, 7], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [0, 8], "labels": [-100, 8], "position_ids": [0, 1]},
    ]
    batch = pad_rows(rows, pad_token_id=3, pad_to_multiple_of=4)
    assert set(batch) == {"input_ids", "labels", "position_ids", "num_real_tokens", "use_cache"}
    assert batch["input_ids"].tolist() == [[0, 5, 6, 0, 7, 3, 3, 3], [0, 8, 3, 3, 3, 3, 3, 3]]
    assert batch["labels"].tolist() == [[-100, 5, 6, -100, 7, -100, -100, -100], [-100, 8] + [-100] * 6]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert batch["num_real_tokens"] == 7 and isinstance(batch["num_real_tokens"], int)
    assert batch["use_cache"] is False


def test_packed_rows_without_multiple_pad_to_the_longest_row() -> None:
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "position_ids": [0, 1, 2]},
            {"input_ids": [4], "labels": [-100], "position_ids": [0]}]
    batch = pad_rows(rows, pad_token_id=0)
    assert batch["input_ids"].shape == (2, 3)
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]


def test_packed_collator_packs_only_the_records_of_its_batch() -> None:
    examples = synthetic_examples([5, 3, 6, 2])
    batch = PackedCollator(pad_token_id=0, max_seq_length=8)(examples)
    # Best fit decreasing: 6 + 2 and 5 + 3 fill two rows of 8; every record of the batch is there, no other.
    assert batch["input_ids"].shape == (2, 8)
    assert batch["num_real_tokens"] == 16
    assert sorted(batch["input_ids"].flatten().tolist()) == sorted(
        token for example in examples for token in example["input_ids"])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1], [0, 1, 2, 3, 4, 0, 1, 2]]


# ---- equivalence with running each record alone ----

@pytest.fixture(scope="module")
def demo_examples(tiny_model_dir: Path, demo_dataset: Path) -> list[dict[str, list[int]]]:
    """Encoded demo records of 74 to 160 tokens, the longest cut at 160; two to four share a row of 384."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return load_dataset(demo_dataset, tokenizer, max_seq_length=160).examples[:24]


def load_tiny_model(model_dir: Path, attention: str) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention, dtype=torch.float32)
    return model.eval()


def packed_forward(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Run a packed batch as a trainer would, without the token count the model does not take."""
    inputs = {name: value for name, value in batch.items() if name != "num_real_tokens"}
    with torch.no_grad():
        return model(**inputs)


def test_clara_selects_only_attention_the_packing_test_covers() -> None:
    # Clara loads with these and no other; the equivalence test below runs under each of them.
    assert ATTENTION_IMPLEMENTATIONS == ("sdpa", "eager")


@pytest.mark.parametrize("attention", ATTENTION_IMPLEMENTATIONS)
def test_packed_logits_and_loss_equal_each_record_run_alone(
    tiny_model_dir: Path, demo_examples: list[dict[str, list[int]]], attention: str
) -> None:
    model = load_tiny_model(tiny_model_dir, attention)
    assert model.config._attn_implementation == attention
    rows = pack_examples(demo_examples, max_seq_length=384)
    assert max(row_record_count(row) for row in rows) >= 3
    # The collator packs a batch of records exactly as training does.
    batch = PackedCollator(model.config.pad_token_id, max_seq_length=384, pad_to_multiple_of=8)(demo_examples)
    assert batch["input_ids"].shape[0] == len(rows)
    packed = packed_forward(model, batch)
    loss_sum = trained = 0.0
    for row_index, row in enumerate(rows):
        offset = 0
        for ids, _, _ in split_row(row):
            example = next(example for example in demo_examples if example["input_ids"] == ids)
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([ids]), labels=torch.tensor([example["labels"]]))
            torch.testing.assert_close(packed.logits[row_index, offset:offset + len(ids)], alone.logits[0],
                                       atol=1e-4, rtol=1e-4)
            count = sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)
            loss_sum += float(alone.loss) * count
            trained += count
            offset += len(ids)
    assert float(packed.loss) == pytest.approx(loss_sum / trained, rel=1e-5)


def test_packed_rows_would_leak_across_records_without_position_ids(
    tiny_model_dir: Path, demo_examples: list[dict[str, list[int]]]
) -> None:
    """The equivalence above is not vacuous: one causal sequence over the row gives other logits."""
    model = load_tiny_model(tiny_model_dir, "sdpa")
    row = pack_examples(demo_examples, max_seq_length=384)[0]
    first, second = split_row(row)[:2]
    with torch.no_grad():
        joined = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
        alone = model(input_ids=torch.tensor([second[0]])).logits[0]
    start = len(first[0])
    assert (joined[start:start + len(second[0])] - alone).abs().max() > 1e-2


def test_packed_batch_through_a_lora_model_matches_records_alone(
    tiny_model_dir: Path, demo_examples: list[dict[str, list[int]]]
) -> None:
    model = get_peft_model(load_tiny_model(tiny_model_dir, "sdpa"), LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
    )).eval()
    rows = pack_examples(demo_examples[:8], max_seq_length=384)
    packed = packed_forward(model, pad_rows(rows, model.config.pad_token_id))
    for row_index, row in enumerate(rows):
        offset = 0
        for ids, _, _ in split_row(row):
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(packed.logits[row_index, offset:offset + len(ids)], alone, atol=1e-4, rtol=1e-4)
            offset += len(ids)
