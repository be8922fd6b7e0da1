"""Tests for the on-disk cache of encoded examples and its use by load_dataset."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from trainers import data, token_cache
from trainers.data import TEMPLATE_VERSION, load_dataset
from trainers.token_cache import CacheEntry, cache_key, prune, read_entry, tokenizer_fingerprint, write_entry

# Rejects conversations that start with a system message, so loading also counts rejected records.
STRICT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)
LONG_PROMPT = {"instruction": "Lange Frage zur Baugenehmigung. " * 30, "output": "Kurz."}


@pytest.fixture
def tokenizer(chat_model_dir: Path) -> PreTrainedTokenizerBase:
    """A fresh chat tokenizer of this test's own, which it may change."""
    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    tokenizer.chat_template = STRICT_TEMPLATE
    return tokenizer


@pytest.fixture
def dataset_path(jsonl: Callable[..., Path], sample_records: list[dict]) -> Path:
    """Sample records plus one whose prompt leaves nothing to train within 96 tokens."""
    return jsonl([*sample_records, LONG_PROMPT])


@pytest.fixture
def count_encodings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the records load_dataset encodes, to tell a cache hit from a miss."""
    calls: list[int] = []
    original = data.encode_record

    def counting(*args: object, **kwargs: object) -> dict[str, list[int]] | None:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(data, "encode_record", counting)
    return calls


def entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.iterdir()) if cache_dir.exists() else []


def test_hit_returns_identical_examples_and_counts(
    tmp_path: Path, dataset_path: Path, tokenizer: PreTrainedTokenizerBase, count_encodings: list[int]
) -> None:
    cache_dir = tmp_path / "cache"
    first = load_dataset(dataset_path, tokenizer, 96, cache_dir=cache_dir)
    assert len(count_encodings) == 6
    second = load_dataset(dataset_path, tokenizer, 96, cache_dir=cache_dir)
    assert len(count_encodings) == 6
    assert second.examples == first.examples
    assert (second.num_records, second.skipped, second.rejected, second.num_tokens) == (
        first.num_records, first.skipped, first.rejected, first.num_tokens)
    assert (first.num_records, first.skipped, first.rejected) == (6, 1, 1)
    assert len(entries(cache_dir)) == 1


def test_cached_examples_equal_encoding_without_cache(
    tmp_path: Path, dataset_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    load_dataset(dataset_path, tokenizer, 96, cache_dir=tmp_path / "cache")
    cached = load_dataset(dataset_path, tokenizer, 96, cache_dir=tmp_path / "cache")
    assert cached.examples == load_dataset(dataset_path, tokenizer, 96).examples


def test_changed_file_contents_miss(
    tmp_path: Path, jsonl: Callable[..., Path], sample_records: list[dict], tokenizer: PreTrainedTokenizerBase,
    count_encodings: list[int],
) -> None:
    cache_dir = tmp_path / "cache"
    path = jsonl(sample_records, name="train.jsonl")
    load_dataset(path, tokenizer, 96, cache_dir=cache_dir)
    jsonl([*sample_records[:-1], {"text": "Neu."}], name="train.jsonl")
    changed = load_dataset(path, tokenizer, 96, cache_dir=cache_dir)
    assert len(count_encodings) == 10
    assert changed.examples == load_dataset(path, tokenizer, 96).examples
    assert len(entries(cache_dir)) == 2


def add_token(tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.add_tokens(["Bürgerbüro"])


def change_template(tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.chat_template = STRICT_TEMPLATE.replace("'<|'", "'[['")


def add_special_token(tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|end|>"]})


def drop_template(tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.chat_template = None


def change_normalizer(tokenizer: PreTrainedTokenizerBase) -> None:
    from tokenizers import normalizers

    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()


@pytest.mark.parametrize("change", [add_token, change_template, add_special_token, drop_template, change_normalizer])
def test_changed_tokenizer_misses(
    tmp_path: Path, dataset_path: Path, tokenizer: PreTrainedTokenizerBase, chat_model_dir: Path,
    change: Callable[[PreTrainedTokenizerBase], None],
) -> None:
    cache_dir = tmp_path / "cache"
    before = cache_key(dataset_path, tokenizer, 96, TEMPLATE_VERSION)
    load_dataset(dataset_path, tokenizer, 96, cache_dir=cache_dir)
    change(tokenizer)
    assert tokenizer.name_or_path == str(chat_model_dir)
    assert cache_key(dataset_path, tokenizer, 96, TEMPLATE_VERSION) != before
    # The changed tokenizer gets its own encoding, not the one cached for the old tokenizer.
    cached = load_dataset(dataset_path, tokenizer, 96, cache_dir=cache_dir)
    assert cached.examples == load_dataset(dataset_path, tokenizer, 96).examples
    assert len(entries(cache_dir)) == 2


def test_max_seq_length_and_template_version_are_part_of_the_key(
    tmp_path: Path, dataset_path: Path, tokenizer: PreTrainedTokenizerBase, count_encodings: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache_dir = tmp_path / "cache"
    load_dataset(dataset_path, tokenizer, 96, cache_dir=cache_dir)
    shorter = load_dataset(dataset_path, tokenizer, 32, cache_dir=cache_dir)
    assert len(count_encodings) == 12
    assert max(len(example["input_ids"]) for example in shorter) == 32
    monkeypatch.setattr(data, "TEMPLATE_VERSION", TEMPLATE_VERSION + 1)
    load_dataset(dataset_path, tokenizer, 96, cache_dir=cache_dir)
    assert len(count_encodings) == 18
    assert len(entries(cache_dir)) == 3


def test_fingerprint_is_stable_across_loads_and_calls(chat_model_dir: Path) -> None:
    first = AutoTokenizer.from_pretrained(chat_model_dir)
    fingerprint = tokenizer_fingerprint(first)
    # A padded, truncated call leaves settings on the backend that must not change the key.
    first(["Bürgerbüro", "Anmeldung des Wohnsitzes"], padding=True, truncation=True, max_length=4)
    assert tokenizer_fingerprint(first) == fingerprint
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(chat_model_dir)) == fingerprint


def test_different_tokenizers_with_the_same_vocabulary_differ(plain_model_dir: Path, chat_model_dir: Path) -> None:
    plain = AutoTokenizer.from_pretrained(plain_model_dir)
    chat = AutoTokenizer.from_pretrained(chat_model_dir)
    assert plain.get_vocab() == chat.get_vocab()
    assert tokenizer_fingerprint(plain) != tokenizer_fingerprint(chat)


def corrupt_by_truncation(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_by_flipping_a_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    # Past the zip's first local header, inside the stored token arrays.
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))


def corrupt_by_garbage(path: Path) -> None:
    path.write_bytes(b"not a cache entry")


def corrupt_by_emptying(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("corrupt", [corrupt_by_truncation, corrupt_by_flipping_a_byte, corrupt_by_garbage,
                                     corrupt_by_emptying])
def test_corrupt_entry_is_a_logged_miss_and_gets_replaced(
    tmp_path: Path, dataset_path: Path, tokenizer: PreTrainedTokenizerBase, caplog: pytest.LogCaptureFixture,
    count_encodings: list[int], corrupt: Callable[[Path], None],
) -> None:
    cache_dir = tmp_path / "cache"
    expected = load_dataset(dataset_path, tokenizer, 96, cache_dir=cache_dir).examples
    (entry,) = entries(cache_dir)
    corrupt(entry)
    with caplog.at_level(logging.WARNING, logger="trainers.token_cache"):
        assert load_dataset(dataset_path, tokenizer, 96, cache_dir=cache_dir).examples == expected
    assert "unreadable token cache entry" in caplog.text
    assert len(count_encodings) == 12
    assert load_dataset(dataset_path, tokenizer, 96, cache_dir=cache_dir).examples == expected
    assert len(count_encodings) == 12


def test_entry_under_another_key_is_a_miss(tmp_path: Path) -> None:
    entry = CacheEntry([{"input_ids": [1, 2], "attention_mask": [1, 1], "labels": [-100, 2]}], 1, 0, 0)
    write_entry(tmp_path, "a" * 64, entry)
    (tmp_path / f"{'a' * 64}.npz").rename(tmp_path / f"{'b' * 64}.npz")
    assert read_entry(tmp_path, "b" * 64) is None
    assert read_entry(tmp_path, "c" * 64) is None


def test_entry_round_trip_keeps_ids_labels_and_counts(tmp_path: Path) -> None:
    examples = [
        {"input_ids": [0, 70_000, 5], "attention_mask": [1, 1, 1], "labels": [-100, 70_000, 5]},
        {"input_ids": [0, 9], "attention_mask": [1, 1], "labels": [-100, -100]},
    ]
    write_entry(tmp_path, "k" * 64, CacheEntry(examples, num_records=5, skipped=2, rejected=1))
    assert read_entry(tmp_path, "k" * 64) == CacheEntry(examples, 5, 2, 1)
    write_entry(tmp_path, "e" * 64, CacheEntry([], num_records=3, skipped=3, rejected=0))
    assert read_entry(tmp_path, "e" * 64) == CacheEntry([], 3, 3, 0)


def test_write_leaves_no_temporary_files(
    tmp_path: Path, dataset_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    cache_dir = tmp_path / "deep" / "cache"
    load_dataset(dataset_path, tokenizer, 96, cache_dir=cache_dir)
    load_dataset(dataset_path, tokenizer, 64, cache_dir=cache_dir)
    assert [path.suffix for path in entries(cache_dir)] == [".npz", ".npz"]


def test_write_removes_temporary_files_of_dead_writers_only(tmp_path: Path) -> None:
    stale, live = tmp_path / ".dead.x1.tmp", tmp_path / ".busy.x2.tmp"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))
    write_entry(tmp_path, "k" * 64, CacheEntry([], num_records=1, skipped=1, rejected=0))
    assert not stale.exists()
    assert live.exists()


def test_failed_write_leaves_nothing_and_training_data_still_loads(
    tmp_path: Path, dataset_path: Path, tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        args[0].write(b"PK\x03\x04 half an entry")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    cache_dir = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="trainers.token_cache"):
        dataset = load_dataset(dataset_path, tokenizer, 96, cache_dir=cache_dir)
    assert len(dataset) == 4
    assert "Could not write the token cache entry" in caplog.text
    assert entries(cache_dir) == []


def test_file_changed_while_encoding_is_not_cached(
    tmp_path: Path, jsonl: Callable[..., Path], sample_records: list[dict], tokenizer: PreTrainedTokenizerBase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = jsonl(sample_records, name="train.jsonl")
    original = data._encode_file

    def encode_then_rewrite(*args: object) -> data.EncodedDataset:
        dataset = original(*args)
        jsonl([{"text": "Ganz anderer Inhalt."}], name="train.jsonl")
        return dataset

    monkeypatch.setattr(data, "_encode_file", encode_then_rewrite)
    load_dataset(path, tokenizer, 96, cache_dir=tmp_path / "cache")
    assert entries(tmp_path / "cache") == []


def test_no_cache_dir_writes_nothing(tmp_path: Path, dataset_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    before = sorted(tmp_path.rglob("*"))
    load_dataset(dataset_path, tokenizer, 96)
    assert sorted(tmp_path.rglob("*")) == before


def test_unreadable_data_file_raises_as_without_cache(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing.jsonl", tokenizer, 96, cache_dir=tmp_path / "cache")


def test_entry_files_hold_no_pickles(tmp_path: Path, dataset_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    load_dataset(dataset_path, tokenizer, 96, cache_dir=tmp_path / "cache")
    (entry,) = entries(tmp_path / "cache")
    with np.load(entry, allow_pickle=False) as arrays:
        assert set(arrays.files) == {"meta", "input_ids", "labels", "offsets"}
        assert arrays["input_ids"].dtype == np.int32
    assert token_cache.entry_path(tmp_path / "cache", entry.stem) == entry


def _entry_of(tmp_path: Path, key: str, tokens: int, used_seconds_ago: float) -> Path:
    """Write an entry of about 8 bytes a token and date its last use."""
    write_entry(tmp_path, key, CacheEntry([{"input_ids": list(range(tokens)), "attention_mask": [1] * tokens,
                                            "labels": list(range(tokens))}], 1, 0, 0))
    path = tmp_path / f"{key}.npz"
    used = time.time() - used_seconds_ago
    os.utime(path, (used, used))
    return path


def test_prune_deletes_least_recently_used_entries_until_under_the_limit(tmp_path: Path) -> None:
    oldest = _entry_of(tmp_path, "a" * 64, 2000, used_seconds_ago=300)
    middle = _entry_of(tmp_path, "b" * 64, 2000, used_seconds_ago=200)
    newest = _entry_of(tmp_path, "c" * 64, 2000, used_seconds_ago=100)
    size = newest.stat().st_size
    assert prune(tmp_path, 3 * size) == []
    assert prune(tmp_path, 2 * size) == [oldest]
    assert prune(tmp_path, 0) == [middle, newest]
    assert not list(tmp_path.glob("*.npz"))


def test_a_hit_keeps_an_entry_from_being_pruned(tmp_path: Path) -> None:
    used = _entry_of(tmp_path, "a" * 64, 2000, used_seconds_ago=300)
    unused = _entry_of(tmp_path, "b" * 64, 2000, used_seconds_ago=200)
    assert read_entry(tmp_path, "a" * 64) is not None
    assert prune(tmp_path, used.stat().st_size) == [unused]
    assert used.exists()
