"""Validate JSONL training records and turn them into token ids with loss masks."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from trainers import token_cache
from trainers.record_format import iter_records

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Bump whenever the plain templates or encode_record change the tokens a record becomes, so cached
# encodings made by the old code are not reused.
TEMPLATE_VERSION = 1


class RecordEncodingError(ValueError):
    """A valid record cannot be rendered with the tokenizer's chat template."""


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered record and whether the model learns to produce it."""

    text: str
    trained: bool
    eos_after: bool = False
    """Append the eos token, trained, right after this piece."""


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Return whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def record_segments(record: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> list[Segment]:
    """Render a valid record as text segments marked trained or not."""
    if "text" in record:
        return [Segment(record["text"], trained=True, eos_after=True)]
    if "messages" in record:
        messages = record["messages"]
    elif not has_chat_template(tokenizer):
        return _instruction_segments(record["instruction"], record.get("input", ""), record["output"])
    else:
        # A chat model is served through its template, so instruction records are trained the same way.
        prompt = record["instruction"]
        if record.get("input"):
            prompt = f"{prompt}\n\n{record['input']}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    # Messages after the last assistant turn teach nothing and would only use up the sequence length.
    last = max(index for index, message in enumerate(messages) if message["role"] == "assistant")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages[: last + 1]]
    if has_chat_template(tokenizer):
        return _chat_template_segments(messages, tokenizer)
    return _plain_chat_segments(messages)


def _instruction_segments(instruction: str, input_text: str, output: str) -> list[Segment]:
    """Render an instruction record with the plain instruction template."""
    prompt = f"### Instruction:\n{instruction}\n\n"
    if input_text:
        prompt += f"### Input:\n{input_text}\n\n"
    prompt += "### Response:\n"
    return [Segment(prompt, trained=False), Segment(output, trained=True, eos_after=True)]


def _plain_chat_segments(messages: Sequence[Mapping[str, str]]) -> list[Segment]:
    """Render a conversation with the plain "### Role:" template, training only assistant turns."""
    segments: list[Segment] = []
    prompt = ""
    for index, message in enumerate(messages):
        separator = "\n\n" if index else ""
        prompt += f"{separator}### {message['role'].capitalize()}:\n"
        if message["role"] == "assistant":
            segments.append(Segment(prompt, trained=False))
            segments.append(Segment(message["content"], trained=True, eos_after=True))
            prompt = ""
        else:
            prompt += message["content"]
    return segments


def _chat_template_segments(
    messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase
) -> list[Segment]:
    """Render a conversation with the tokenizer's chat template, training only assistant turns."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    segments: list[Segment] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start, end = _assistant_span(tokenizer, messages, index, full, cursor)
        segments.append(Segment(full[cursor:start], trained=False))
        segments.append(Segment(full[start:end], trained=True))
        cursor = end
    segments.append(Segment(full[cursor:], trained=False))
    return segments


def _assistant_span(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], index: int, full: str, cursor: int
) -> tuple[int, int]:
    """Return the character span of assistant turn `index` within the rendered conversation."""
    turn = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
    if index:
        prompt = _render(tokenizer, messages[:index], add_generation_prompt=True)
        if len(prompt) >= cursor and turn.startswith(prompt) and full.startswith(turn):
            return len(prompt), len(turn)
    # Templates that rewrite earlier turns (for example to drop reasoning) are not prefix-stable,
    # so fall back to finding the reply and the end-of-turn text the template put after it.
    content = messages[index]["content"]
    start = full.find(content, cursor)
    reply_in_turn = turn.rfind(content)
    if start < 0 or reply_in_turn < 0:
        raise RecordEncodingError(f"the chat template output does not contain messages[{index}]")
    end = start + len(content)
    closing = turn[reply_in_turn + len(content):]
    if closing and full.startswith(closing, end):
        end += len(closing)
    return start, end


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """Render messages with the chat template as text."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as error:
        raise RecordEncodingError(f"the chat template rejects this conversation ({error})") from error


def tokenize_segments(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], parse_special_tokens: bool
) -> list[list[int]]:
    """Tokenize the joined texts once and return, per text, the token ids that end inside it."""
    if not tokenizer.is_fast:
        # Slow tokenizers have no offsets; tokenizing pieces separately is the best they allow.
        return [
            tokenizer(text, add_special_tokens=False, split_special_tokens=not parse_special_tokens)["input_ids"]
            for text in texts
        ]
    starts = []
    position = 0
    for text in texts:
        starts.append(position)
        position += len(text)
    encoding = tokenizer(
        "".join(texts),
        add_special_tokens=False,
        return_offsets_mapping=True,
        split_special_tokens=not parse_special_tokens,
    )
    pieces: list[list[int]] = [[] for _ in texts]
    for token_id, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=False):
        # A token that merges a template's trailing space with the reply's first letter belongs to the reply.
        last_char = max(start, end - 1)
        pieces[bisect.bisect_right(starts, last_char) - 1].append(token_id)
    return pieces


def encode_record(
    record: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> dict[str, list[int]] | None:
    """Encode a valid record as input_ids, attention_mask and labels; None when nothing is left to train."""
    segments = [segment for segment in record_segments(record, tokenizer) if segment.text or segment.eos_after]
    # Chat templates write their own special tokens; user text in the plain templates must not create any.
    templated = has_chat_template(tokenizer) and "text" not in record
    pieces = tokenize_segments(tokenizer, [segment.text for segment in segments], parse_special_tokens=templated)
    input_ids: list[int] = []
    labels: list[int] = []
    eos_id = tokenizer.eos_token_id
    for segment, ids in zip(segments, pieces, strict=False):
        input_ids.extend(ids)
        labels.extend(ids if segment.trained else [IGNORE_INDEX] * len(ids))
        if segment.eos_after and eos_id is not None:
            input_ids.append(eos_id)
            labels.append(eos_id)
    bos_id = tokenizer.bos_token_id
    if bos_id is not None and (not input_ids or input_ids[0] != bos_id):
        input_ids.insert(0, bos_id)
        labels.insert(0, IGNORE_INDEX)
    input_ids, labels = input_ids[:max_seq_length], labels[:max_seq_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


class EncodedDataset(torch.utils.data.Dataset):
    """Encoded examples; `skipped` counts records with nothing trainable left, `rejected` those the template refused."""

    def __init__(self, examples: list[dict[str, list[int]]], num_records: int, skipped: int, rejected: int) -> None:
        self.examples = examples
        self.num_records = num_records
        self.skipped = skipped
        self.rejected = rejected

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]

    @property
    def num_tokens(self) -> int:
        """Total tokens across all examples."""
        return sum(len(example["input_ids"]) for example in self.examples)


def load_dataset(
    path: Path, tokenizer: PreTrainedTokenizerBase, max_seq_length: int, cache_dir: Path | None = None
) -> EncodedDataset:
    """Read and encode every record of a JSONL file, reusing the encoding cached in cache_dir when it matches."""
    if cache_dir is None:
        return _encode_file(path, tokenizer, max_seq_length)
    try:
        before = _file_state(path)
        key = token_cache.cache_key(Path(path), tokenizer, max_seq_length, TEMPLATE_VERSION)
    except OSError:
        # An unreadable file gets its proper error from the encoder.
        return _encode_file(path, tokenizer, max_seq_length)
    entry = token_cache.read_entry(cache_dir, key)
    if entry is not None:
        logger.info("Loaded %s encoded records of %s from the token cache (%s skipped, %s rejected).",
                    len(entry.examples), path, entry.skipped, entry.rejected)
        return EncodedDataset(entry.examples, entry.num_records, entry.skipped, entry.rejected)
    dataset = _encode_file(path, tokenizer, max_seq_length)
    if _file_state(path) != before:
        logger.warning("Not caching the encoding of %s because the file changed while it was read.", path)
    else:
        token_cache.write_entry(cache_dir, key, token_cache.CacheEntry(
            dataset.examples, dataset.num_records, dataset.skipped, dataset.rejected))
    return dataset


def _file_state(path: Path) -> tuple[int, int]:
    """Return a file's size and modification time, which change when it is rewritten."""
    stat = Path(path).stat()
    return stat.st_size, stat.st_mtime_ns


def _encode_file(path: Path, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> EncodedDataset:
    """Read and encode every record of a JSONL file for causal-LM training."""
    examples: list[dict[str, list[int]]] = []
    num_records = skipped = rejected = 0
    for number, record in iter_records(path):
        num_records += 1
        try:
            example = encode_record(record, tokenizer, max_seq_length)
        except RecordEncodingError as error:
            logger.warning("Skipping line %s of %s: %s.", number, path, error)
            rejected += 1
            continue
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    if skipped:
        logger.warning(
            "Skipped %s of %s records that have no trainable token within %s tokens.",
            skipped, num_records, max_seq_length,
        )
    logger.info("Encoded %s records from %s for training.", len(examples), path)
    return EncodedDataset(examples, num_records=num_records, skipped=skipped, rejected=rejected)


class CausalLMCollator:
    """Pads examples on the right into tensors; padded labels are ignored by the loss."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor | int]:
        """Stack a batch of examples into padded tensors, plus num_real_tokens, the count of unpadded tokens."""
        length = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for feature in features:
            padding = length - len(feature["input_ids"])
            batch["input_ids"].append(list(feature["input_ids"]) + [self.pad_token_id] * padding)
            batch["attention_mask"].append(list(feature["attention_mask"]) + [0] * padding)
            batch["labels"].append(list(feature["labels"]) + [IGNORE_INDEX] * padding)
        tensors: dict[str, torch.Tensor | int] = {name: torch.tensor(rows, dtype=torch.long)
                                                  for name, rows in batch.items()}
        # A Python int, not a tensor: the Trainer would move a tensor to the GPU and reading it back syncs.
        tensors["num_real_tokens"] = sum(len(feature["input_ids"]) for feature in features)
        return tensors
