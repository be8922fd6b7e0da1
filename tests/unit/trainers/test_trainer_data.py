"""Tests for dataset validation, record encoding with loss masks, and batching."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from trainers.config import TrainingConfigError
from trainers.data import (
    IGNORE_INDEX,
    CausalLMCollator,
    RecordEncodingError,
    encode_record,
    load_dataset,
)
from trainers.record_format import dataset_problems

GOOD = {"text": "Ein gültiger Datensatz."}


def trained_spans(tokenizer: PreTrainedTokenizerBase, encoded: dict[str, list[int]]) -> list[str]:
    """Decode each run of tokens that carry a label."""
    spans: list[list[int]] = []
    previous_trained = False
    for token_id, label in zip(encoded["input_ids"], encoded["labels"], strict=False):
        trained = label != IGNORE_INDEX
        if trained:
            assert label == token_id
            if not previous_trained:
                spans.append([])
            spans[-1].append(token_id)
        previous_trained = trained
    return [tokenizer.decode(span) for span in spans]


def full_text(tokenizer: PreTrainedTokenizerBase, encoded: dict[str, list[int]]) -> str:
    return tokenizer.decode(encoded["input_ids"])


# ---- dataset_problems ----

@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"text": ', "line 3: invalid JSON (Expecting value)"),
        ('["a list"]', "line 3: record must be a JSON object"),
        ('{"instruction": "Frage", "output": 5}', "line 3: field 'output' must be a string"),
        ('{"instruction": "Frage"}', "line 3: field 'output' is missing"),
        ('{"instruction": "Frage", "input": 1, "output": "x"}', "line 3: field 'input' must be a string"),
        ('{"text": "  "}', "line 3: field 'text' must not be empty"),
        ('{"prompt": "a", "completion": "b"}', "line 3: record has none of text, instruction/output, messages"),
        ('{"text": "a", "messages": []}',
         "line 3: record mixes text and messages; use exactly one of text, instruction/output, messages"),
        ('{"messages": "hi"}', "line 3: messages must be a non-empty list"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}, '
         '{"role": "assistant", "content": "c"}]}',
         "line 3: messages[1].role must be one of system, user, assistant"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null}]}',
         "line 3: messages[1].content must be a string"),
        ('{"messages": [{"role": "user", "content": "a"}]}',
         "line 3: messages must contain at least one assistant message"),
    ],
)
def test_dataset_problems_names_the_line_and_the_problem(jsonl: Callable[..., Path], line: str, expected: str) -> None:
    path = jsonl([GOOD, "", line, GOOD])
    assert dataset_problems(path) == [expected]


def test_dataset_problems_reports_every_problem_of_a_record(jsonl: Callable[..., Path]) -> None:
    path = jsonl([{"messages": [{"role": "x", "content": 1}, "hi"]}])
    assert dataset_problems(path) == [
        "line 1: messages[0].role must be one of system, user, assistant",
        "line 1: messages[0].content must be a string",
        "line 1: messages[1] must be an object with role and content",
        "line 1: messages must contain at least one assistant message",
    ]


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_dataset_problems_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    assert dataset_problems(path) == ["the file holds no records"]


def test_dataset_problems_stops_after_max_problems(jsonl: Callable[..., Path]) -> None:
    path = jsonl(["not json"] * 30)
    problems = dataset_problems(path, max_problems=5)
    assert problems[:5] == [f"line {n}: invalid JSON (Expecting value)" for n in range(1, 6)]
    assert problems[5:] == ["and more problems after line 5"]


def test_dataset_problems_flags_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' + '{"text": "Bürger"}\n'.encode("latin-1"))
    assert dataset_problems(path) == ["line 2: line is not valid UTF-8"]


def test_dataset_problems_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "ok"}\n')
    assert dataset_problems(path) == []


def test_dataset_problems_missing_file(tmp_path: Path) -> None:
    problems = dataset_problems(tmp_path / "missing.jsonl")
    assert len(problems) == 1 and problems[0].startswith("cannot read the file")


def test_demo_dataset_is_valid(demo_dataset: Path) -> None:
    assert dataset_problems(demo_dataset) == []
    assert sum(1 for line in demo_dataset.read_text(encoding="utf-8").splitlines() if line.strip()) >= 50


# ---- encode_record without a chat template ----

def test_text_record_trains_every_token(plain_tokenizer: PreTrainedTokenizerBase) -> None:
    encoded = encode_record({"text": "Die Anmeldung ist kostenlos."}, plain_tokenizer, 128)
    assert encoded["input_ids"][0] == plain_tokenizer.bos_token_id
    assert encoded["labels"][0] == IGNORE_INDEX
    assert encoded["labels"][1:] == encoded["input_ids"][1:]
    assert encoded["input_ids"][-1] == plain_tokenizer.eos_token_id
    assert encoded["attention_mask"] == [1] * len(encoded["input_ids"])


def test_instruction_record_trains_only_the_output(plain_tokenizer: PreTrainedTokenizerBase) -> None:
    record = {"instruction": "Wie lange gilt der Ausweis?", "input": "", "output": "Zehn Jahre."}
    encoded = encode_record(record, plain_tokenizer, 128)
    assert full_text(plain_tokenizer, encoded) == (
        "<s>### Instruction:\nWie lange gilt der Ausweis?\n\n### Response:\nZehn Jahre.</s>"
    )
    assert trained_spans(plain_tokenizer, encoded) == ["Zehn Jahre.</s>"]


def test_instruction_input_block_appears_when_input_is_given(plain_tokenizer: PreTrainedTokenizerBase) -> None:
    record = {"instruction": "Übersetze.", "input": "Bürgerbüro", "output": "citizens' office"}
    encoded = encode_record(record, plain_tokenizer, 128)
    assert full_text(plain_tokenizer, encoded) == (
        "<s>### Instruction:\nÜbersetze.\n\n### Input:\nBürgerbüro\n\n### Response:\ncitizens' office</s>"
    )
    assert trained_spans(plain_tokenizer, encoded) == ["citizens' office</s>"]


def test_messages_record_trains_only_assistant_turns(
    plain_tokenizer: PreTrainedTokenizerBase, sample_records: list[dict]
) -> None:
    encoded = encode_record(sample_records[3], plain_tokenizer, 256)
    assert full_text(plain_tokenizer, encoded) == (
        "<s>### System:\nAnswer briefly.\n\n### User:\nDo I need a permit for a garden shed?\n\n### Assistant:\n"
        "Small sheds are often exempt, but check the development plan.</s>\n\n### User:\nWho can tell me for sure?"
        "\n\n### Assistant:\nThe building authority.</s>"
    )
    assert trained_spans(plain_tokenizer, encoded) == [
        "Small sheds are often exempt, but check the development plan.</s>",
        "The building authority.</s>",
    ]


def test_plain_template_keeps_special_token_text_in_user_content_literal(
    plain_tokenizer: PreTrainedTokenizerBase,
) -> None:
    record = {"instruction": "Erkläre </s> bitte.", "output": "Das ist ein Steuerzeichen."}
    encoded = encode_record(record, plain_tokenizer, 128)
    assert encoded["input_ids"].count(plain_tokenizer.eos_token_id) == 1


def test_messages_after_the_last_assistant_turn_are_dropped(plain_tokenizer: PreTrainedTokenizerBase) -> None:
    record = {"messages": [
        {"role": "user", "content": "Hallo"},
        {"role": "assistant", "content": "Guten Tag."},
        {"role": "user", "content": "Noch eine Frage"},
    ]}
    assert "Noch eine Frage" not in full_text(plain_tokenizer, encode_record(record, plain_tokenizer, 128))


# ---- encode_record with a chat template ----

def test_chat_template_messages_train_only_assistant_turns(
    chat_tokenizer: PreTrainedTokenizerBase, sample_records: list[dict]
) -> None:
    encoded = encode_record(sample_records[3], chat_tokenizer, 256)
    assert full_text(chat_tokenizer, encoded) == chat_tokenizer.apply_chat_template(
        sample_records[3]["messages"], tokenize=False
    )
    assert encoded["input_ids"].count(chat_tokenizer.bos_token_id) == 1
    assert trained_spans(chat_tokenizer, encoded) == [
        "Small sheds are often exempt, but check the development plan.</s>",
        "The building authority.</s>",
    ]


def test_chat_template_instruction_becomes_a_conversation(
    chat_tokenizer: PreTrainedTokenizerBase, sample_records: list[dict]
) -> None:
    encoded = encode_record(sample_records[2], chat_tokenizer, 256)
    assert full_text(chat_tokenizer, encoded) == (
        "<s><|user|>\nTranslate into English.\n\nBewohnerparkausweis\n<|assistant|>\nResidents' parking permit</s>"
    )
    assert trained_spans(chat_tokenizer, encoded) == ["Residents' parking permit</s>"]


def test_chat_template_text_record_trains_every_token(chat_tokenizer: PreTrainedTokenizerBase) -> None:
    encoded = encode_record({"text": "Hundesteuer"}, chat_tokenizer, 64)
    assert trained_spans(chat_tokenizer, encoded) == ["Hundesteuer</s>"]


def test_template_that_rewrites_earlier_turns_still_masks_correctly(
    chat_tokenizer: PreTrainedTokenizerBase, sample_records: list[dict]
) -> None:
    tokenizer = chat_tokenizer.__class__.from_pretrained(chat_tokenizer.name_or_path)
    # Only the final assistant turn gets a marker, as reasoning templates do, so renders are not prefixes.
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' }}"
        "{% if m['role'] == 'assistant' and loop.last %}{{ '[final] ' }}{% endif %}"
        "{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    encoded = encode_record(sample_records[3], tokenizer, 256)
    assert full_text(tokenizer, encoded).startswith("<s>system: Answer briefly.\nuser: ")
    # A token that merges the template's space with the reply's first letter is trained with the reply.
    assert trained_spans(tokenizer, encoded) == [
        " Small sheds are often exempt, but check the development plan.</s>\n",
        "[final] The building authority.</s>\n",
    ]


def test_template_that_rejects_a_conversation_raises(
    chat_tokenizer: PreTrainedTokenizerBase, sample_records: list[dict]
) -> None:
    tokenizer = chat_tokenizer.__class__.from_pretrained(chat_tokenizer.name_or_path)
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(RecordEncodingError, match="roles must alternate"):
        encode_record(sample_records[4], tokenizer, 64)


# ---- truncation and loading ----

def test_long_records_are_truncated(plain_tokenizer: PreTrainedTokenizerBase) -> None:
    encoded = encode_record({"text": "Bürgerbüro " * 200}, plain_tokenizer, 32)
    assert len(encoded["input_ids"]) == len(encoded["labels"]) == len(encoded["attention_mask"]) == 32


def test_record_without_trainable_token_after_truncation_is_none(plain_tokenizer: PreTrainedTokenizerBase) -> None:
    record = {"instruction": "Bitte lesen Sie den folgenden langen Text. " * 20, "output": "Ja."}
    assert encode_record(record, plain_tokenizer, 32) is None
    assert encode_record(record, plain_tokenizer, 2048) is not None


def test_load_dataset_encodes_and_counts_skipped(
    jsonl: Callable[..., Path], plain_tokenizer: PreTrainedTokenizerBase, sample_records: list[dict]
) -> None:
    long_prompt = {"instruction": "Lange Frage zur Baugenehmigung. " * 30, "output": "Kurz."}
    dataset = load_dataset(jsonl([*sample_records, "", long_prompt]), plain_tokenizer, 96)
    assert (len(dataset), dataset.num_records, dataset.skipped, dataset.rejected) == (5, 6, 1, 0)
    assert max(len(example["input_ids"]) for example in dataset) == 96


def test_load_dataset_counts_records_the_template_rejects(
    jsonl: Callable[..., Path], chat_tokenizer: PreTrainedTokenizerBase, sample_records: list[dict]
) -> None:
    tokenizer = chat_tokenizer.__class__.from_pretrained(chat_tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    dataset = load_dataset(jsonl(sample_records), tokenizer, 128)
    assert (len(dataset), dataset.rejected) == (4, 1)


def test_load_dataset_rejects_invalid_lines(
    jsonl: Callable[..., Path], plain_tokenizer: PreTrainedTokenizerBase
) -> None:
    with pytest.raises(TrainingConfigError, match="line 2: invalid JSON"):
        load_dataset(jsonl([GOOD, "{"]), plain_tokenizer, 64)


def test_collator_pads_on_the_right_ignores_padding_and_counts_real_tokens() -> None:
    collator = CausalLMCollator(pad_token_id=3, pad_to_multiple_of=4)
    batch = collator([
        {"input_ids": [0, 5, 6], "attention_mask": [1, 1, 1], "labels": [-100, 5, 6]},
        {"input_ids": [0, 7, 8, 9, 10], "attention_mask": [1] * 5, "labels": [-100, -100, 8, 9, 10]},
    ])
    assert batch["input_ids"].tolist() == [[0, 5, 6, 3, 3, 3, 3, 3], [0, 7, 8, 9, 10, 3, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 5, 6, -100, -100, -100, -100, -100],
                                        [-100, -100, 8, 9, 10, -100, -100, -100]]
    assert batch["input_ids"].dtype == torch.long
    assert batch["num_real_tokens"] == 8 and isinstance(batch["num_real_tokens"], int)
