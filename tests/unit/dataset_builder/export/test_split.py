"""Train/validation assignment: determinism, proportions, seeds, and the split spec's validation."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dataset_builder.split import SplitSpec, assign_split, canonical_json


def records(count: int) -> list[dict[str, Any]]:
    """Return `count` distinct instruction records."""
    return [{"instruction": f"Frage {index}?", "input": "", "output": f"Antwort {index}."} for index in range(count)]


def test_the_same_record_gets_the_same_split_across_calls_and_copies() -> None:
    record = {"messages": [{"role": "user", "content": "Hallo"}, {"role": "assistant", "content": "Grüß Gott"}]}
    reordered = {"messages": [{"content": "Hallo", "role": "user"}, {"content": "Grüß Gott", "role": "assistant"}]}

    splits = {assign_split(dict(record), 0.5, 7) for _ in range(20)} | {assign_split(reordered, 0.5, 7)}

    assert len(splits) == 1
    assert canonical_json(record) == canonical_json(reordered)
    assert canonical_json(record).decode("utf-8").startswith('{"messages":[{"content":"Hallo","role":"user"}')


def test_assignment_does_not_depend_on_order_or_batching() -> None:
    items = records(2000)
    in_order = {item["instruction"]: assign_split(item, 0.2, 42) for item in items}
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)

    in_batches = {}
    for start in range(0, len(shuffled), 37):
        in_batches.update({item["instruction"]: assign_split(item, 0.2, 42) for item in shuffled[start:start + 37]})

    assert in_batches == in_order


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.3, 0.5])
def test_the_validation_share_is_within_one_percent_of_the_fraction(fraction: float) -> None:
    items = records(10_000)

    share = sum(assign_split(item, fraction, 42) == "validation" for item in items) / len(items)

    assert abs(share - fraction) <= 0.01


def test_fraction_zero_puts_everything_in_train() -> None:
    assert {assign_split(item, 0.0, seed) for item in records(2000) for seed in (0, 1)} == {"train"}


def test_different_seeds_give_different_assignments() -> None:
    items = records(1000)
    first = [assign_split(item, 0.3, 1) for item in items]
    second = [assign_split(item, 0.3, 2) for item in items]

    differing = sum(a != b for a, b in zip(first, second, strict=True)) / len(items)

    # Independent assignments differ for 2 * 0.3 * 0.7 = 42% of the records.
    assert 0.35 < differing < 0.49


def test_assignment_is_stable_across_releases() -> None:
    # Pinned: changing the hash would silently move records of rebuilt datasets between splits.
    items = records(20)

    assignment = "".join("v" if assign_split(item, 0.3, 42) == "validation" else "t" for item in items)

    assert assignment == "vvtttvttttvtvtttvttt"


def test_spec_defaults_and_assign() -> None:
    spec = SplitSpec.from_dict({})
    item = records(1)[0]

    assert (spec.validation_fraction, spec.seed, spec.problems()) == (0.05, 42, [])
    assert SplitSpec.from_dict(None) == spec
    assert spec.assign(item) == assign_split(item, 0.05, 42)
    assert SplitSpec.from_dict({"validation_fraction": 0, "seed": 2**32 - 1}).problems() == []
    assert SplitSpec.from_dict({"validation_fraction": 0.25, "seed": 9}).to_dict() == {
        "validation_fraction": 0.25, "seed": 9,
    }


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([0.1], ["split: must be an object, not list"]),
        ({"fraction": 0.1}, ["split.fraction: unknown key; use validation_fraction, seed"]),
        ({"validation_fraction": -0.01}, ["split.validation_fraction: must be between 0 and 0.5"]),
        ({"validation_fraction": 0.51}, ["split.validation_fraction: must be between 0 and 0.5"]),
        ({"validation_fraction": "0.1"}, ["split.validation_fraction: must be a number"]),
        ({"validation_fraction": True}, ["split.validation_fraction: must be a number"]),
        ({"validation_fraction": float("nan")}, ["split.validation_fraction: must be a number"]),
        ({"seed": -1}, ["split.seed: must be between 0 and 4294967295"]),
        ({"seed": 2**32}, ["split.seed: must be between 0 and 4294967295"]),
        ({"seed": 1.0}, ["split.seed: must be an integer"]),
        ({"seed": True}, ["split.seed: must be an integer"]),
        ({"validation_fraction": 1, "seed": "x", "extra": 1},
         ["split.extra: unknown key; use validation_fraction, seed",
          "split.validation_fraction: must be between 0 and 0.5", "split.seed: must be an integer"]),
    ],
)
def test_spec_problems_are_all_reported(data: Any, expected: list[str]) -> None:
    assert SplitSpec.from_dict(data).problems() == expected
