"""Keep encoded training examples on disk, keyed by everything that decides how a dataset tokenizes."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import transformers
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Bump when the layout of an entry changes, so older entries read as misses.
FORMAT_VERSION = 1
SUFFIX = ".npz"
# A temporary file untouched this long belongs to a writer that died; writing an entry takes seconds.
STALE_TEMP_SECONDS = 24 * 3600


@dataclass
class CacheEntry:
    """Encoded examples of one dataset and the counts the encoder reported for it."""

    examples: list[dict[str, list[int]]]
    num_records: int
    skipped: int
    rejected: int


def file_digest(path: Path) -> str:
    """Return the sha256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Return a sha256 over the tokenizer's full state: vocabulary, rules, special and added tokens, chat template."""
    state: dict[str, Any] = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "special_tokens": tokenizer.special_tokens_map,
        "special_ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                        tokenizer.unk_token_id],
        "added_tokens": {str(index): repr(token) for index, token in tokenizer.added_tokens_decoder.items()},
        "chat_template": tokenizer.chat_template,
        # A library upgrade may tokenize the same files differently, so it starts a fresh cache.
        "versions": [transformers.__version__, tokenizers.__version__],
    }
    if getattr(tokenizer, "backend_tokenizer", None) is not None:
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
        # transformers sets truncation and padding on the backend for each call, so they say nothing lasting.
        backend.pop("truncation", None)
        backend.pop("padding", None)
        state["backend"] = backend
    else:
        state["vocab"] = sorted(tokenizer.get_vocab().items())
        sp_model = getattr(tokenizer, "sp_model", None)
        if sp_model is not None:
            state["sentencepiece"] = hashlib.sha256(sp_model.serialized_model_proto()).hexdigest()
    text = json.dumps(state, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(
    data_path: Path, tokenizer: PreTrainedTokenizerBase, max_seq_length: int, template_version: int
) -> str:
    """Return the key of a dataset's encoding: file bytes, tokenizer, templates, max_seq_length and format."""
    parts = {
        "data": file_digest(data_path),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template_version": template_version,
        "max_seq_length": max_seq_length,
        "format_version": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def entry_path(cache_dir: Path, key: str) -> Path:
    """Return where the entry for a key lives."""
    return Path(cache_dir) / f"{key}{SUFFIX}"


def read_entry(cache_dir: Path, key: str) -> CacheEntry | None:
    """Return the cached entry for a key; None when there is none or it cannot be read."""
    path = entry_path(cache_dir, key)
    try:
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            input_ids, labels, offsets = arrays["input_ids"], arrays["labels"], arrays["offsets"]
        entry = _entry_from_arrays(key, meta, input_ids, labels, offsets)
        _touch(path)
        return entry
    # Whatever is wrong with an entry (truncated, bit-flipped, another layout), the data can be encoded again.
    except Exception as error:
        logger.warning("Ignoring the unreadable token cache entry %s: %s", path, error)
        return None


def _entry_from_arrays(
    key: str, meta: dict[str, Any], input_ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray
) -> CacheEntry:
    """Rebuild examples from flat token arrays; raise ValueError when the arrays do not fit together."""
    if meta.get("key") != key or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError("the entry was written for another key or format")
    if (input_ids.shape != labels.shape or offsets.ndim != 1 or len(offsets) != meta["num_examples"] + 1
            or offsets[0] != 0 or offsets[-1] != len(input_ids) or np.any(np.diff(offsets) <= 0)):
        raise ValueError("the token arrays do not match the entry's offsets")
    # Slicing Python lists is much faster than turning every numpy slice into a list on its own.
    flat_ids, flat_labels, bounds = input_ids.tolist(), labels.tolist(), offsets.tolist()
    examples = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        # Unpadded examples attend to every token, so the mask is rebuilt rather than stored.
        examples.append({"input_ids": flat_ids[start:end], "attention_mask": [1] * (end - start),
                         "labels": flat_labels[start:end]})
    return CacheEntry(examples, meta["num_records"], meta["skipped"], meta["rejected"])


def write_entry(cache_dir: Path, key: str, entry: CacheEntry) -> None:
    """Store an entry atomically: a reader sees the whole file or none; failures are logged, not raised."""
    cache_dir = Path(cache_dir)
    lengths = [len(example["input_ids"]) for example in entry.examples]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    meta = {"key": key, "format_version": FORMAT_VERSION, "num_examples": len(lengths),
            "num_records": entry.num_records, "skipped": entry.skipped, "rejected": entry.rejected}
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "input_ids": _flat_int32([example["input_ids"] for example in entry.examples], offsets[-1]),
        "labels": _flat_int32([example["labels"] for example in entry.examples], offsets[-1]),
        "offsets": offsets,
    }
    temp_name = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_files(cache_dir)
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=f".{key}.", suffix=".tmp", delete=False) as handle:
            temp_name = handle.name
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, entry_path(cache_dir, key))
        temp_name = None
    except OSError as error:
        # The cache only saves time; a full or read-only disk must not stop training.
        logger.warning("Could not write the token cache entry to %s: %s", cache_dir, error)
    finally:
        if temp_name is not None:
            Path(temp_name).unlink(missing_ok=True)


def prune(cache_dir: Path, max_bytes: int) -> list[Path]:
    """Delete the least recently used entries until the cache holds at most max_bytes; return what went."""
    entries = []
    for path in Path(cache_dir).glob(f"*{SUFFIX}"):
        try:
            status = path.stat()
        except OSError:
            continue  # Another worker pruned it first.
        entries.append((status.st_mtime, status.st_size, path))
    total = sum(size for _, size, _ in entries)
    removed = []
    # Oldest use first; a hit refreshes an entry's mtime, so the entries in use stay.
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            logger.warning("Could not delete the token cache entry %s: %s", path, error)
            continue
        total -= size
        removed.append(path)
    if removed:
        logger.info("Deleted %s token cache entries to keep %s under %s bytes.", len(removed), cache_dir, max_bytes)
    return removed


def _touch(path: Path) -> None:
    """Mark an entry as just used, so pruning keeps it."""
    try:
        os.utime(path)
    except OSError:
        pass  # A read-only cache still serves hits; it is only pruned less well.


def _remove_stale_temp_files(cache_dir: Path) -> None:
    """Delete temporary files that writers killed mid-write left behind, once no live writer can own them."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for path in cache_dir.glob(".*.tmp"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            # Another writer finished or removed it first.
            continue


def _flat_int32(rows: list[list[int]], total: int) -> np.ndarray:
    """Concatenate lists of token ids into one int32 array."""
    return np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(total))
