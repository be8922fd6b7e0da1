"""Exact and near-duplicate removal across a whole build; the first occurrence of a text is kept.

Both keep state between batches, and only of the documents they kept: for exact dedup a 128-bit
hash in a set (about 85 bytes per document); for near dedup a signature of num_perm * 4 bytes
and 12 bytes per LSH band, 704 bytes per kept document at the defaults.
"""

from __future__ import annotations

import logging

import numpy as np
import xxhash

from dataset_builder.quality.minhash import DEFAULT_NUM_PERM, band_keys, lsh_parameters, signatures

logger = logging.getLogger(__name__)


class ExactDeduplicator:
    """Drops texts identical to one kept earlier, by their 128-bit xxh3 hash."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def keep(self, texts: list[str]) -> list[bool]:
        """For each text, whether it is the first of its kind so far (it is then remembered)."""
        seen = self._seen
        verdicts = []
        for text in texts:
            digest = xxhash.xxh3_128_intdigest(text.encode("utf-8", "surrogatepass"))
            verdicts.append(digest not in seen)
            seen.add(digest)
        return verdicts


class _BandIndex:
    """Band keys of the kept texts with each text's slot, as sorted runs that merge as they grow."""

    # 12 bytes per key, against about 90 for a dict entry; a batch is looked up with one binary
    # search per run, and merging two sorted runs is a linear timsort pass. Runs merge like a
    # binary counter, so there are O(log n) of them.

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into keys, slot) for every stored key equal to a looked-up one."""
        found_queries, found_slots = [], []
        for run_keys, run_slots in self._runs:
            first = np.searchsorted(run_keys, keys, side="left")
            counts = np.searchsorted(run_keys, keys, side="right") - first
            hits = np.flatnonzero(counts)
            if not len(hits):
                continue
            repeats = counts[hits]
            queries = np.repeat(hits, repeats)
            # Positions first[hit], first[hit] + 1, ... for every hit, without a Python loop.
            offsets = np.arange(len(queries)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
            found_queries.append(queries)
            found_slots.append(run_slots[np.repeat(first[hits], repeats) + offsets])
        if not found_queries:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(found_queries), np.concatenate(found_slots).astype(np.int64)

    def add(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Index keys with their slots."""
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        self._runs.append((keys[order], slots[order].astype(np.uint32)))
        while len(self._runs) > 1 and 2 * len(self._runs[-1][0]) >= len(self._runs[-2][0]):
            (older_keys, older_slots), (newer_keys, newer_slots) = self._runs[-2:]
            merged_keys = np.concatenate((older_keys, newer_keys))
            order = np.argsort(merged_keys, kind="stable")
            self._runs[-2:] = [(merged_keys[order], np.concatenate((older_slots, newer_slots))[order])]


class NearDeduplicator:
    """Drops texts whose MinHash-estimated Jaccard similarity with a kept text reaches the threshold."""

    # Candidates come from LSH: a text is compared only with kept texts that share one of its band
    # keys (banding as in lsh_parameters: datasketch's optimisation, weighted towards recall). A
    # candidate is dropped only when the estimate over the whole signature reaches the threshold,
    # so an LSH false positive never costs a document.

    def __init__(self, threshold: float = 0.8, num_perm: int = DEFAULT_NUM_PERM) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands, self.rows = lsh_parameters(threshold, num_perm)
        # Agreeing bins needed: the estimate is agreements / num_perm; the epsilon absorbs float error.
        self._min_agreements = int(np.ceil(threshold * num_perm - 1e-9))
        self._index = _BandIndex()
        self._signatures = np.empty((1024, num_perm), dtype=np.uint32)
        self._kept = 0

    def keep(self, texts: list[str]) -> list[bool]:
        """For each text, whether it is not a near duplicate of a text kept so far (it is then kept)."""
        if not texts:
            return []
        batch_signatures = signatures(texts, self.num_perm)
        keys = band_keys(batch_signatures, self.bands, self.rows)
        duplicate = self._matches_kept(batch_signatures, keys)
        self._resolve_within_batch(batch_signatures, keys, duplicate)
        kept = np.flatnonzero(~duplicate)
        slots = self._store(batch_signatures[kept])
        self._index.add(keys[kept].ravel(), np.repeat(slots, self.bands))
        return (~duplicate).tolist()

    def _similar(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Whether each pair of signatures (row by row) agrees in enough bins."""
        return np.count_nonzero(first == second, axis=1) >= self._min_agreements

    def _matches_kept(self, batch_signatures: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Per text of the batch, whether it is a near duplicate of a text kept by an earlier batch."""
        queries, slots = self._index.lookup(keys.ravel())
        pairs = np.unique(np.stack((queries // self.bands, slots)), axis=1)
        texts, slots = pairs
        duplicate = np.zeros(len(keys), dtype=bool)
        duplicate[texts[self._similar(batch_signatures[texts], self._signatures[slots])]] = True
        return duplicate

    def _resolve_within_batch(self, batch_signatures: np.ndarray, keys: np.ndarray, duplicate: np.ndarray) -> None:
        """Mark texts that are near duplicates of an earlier text of the batch that is itself kept."""
        earlier, later = _pairs_sharing_a_key(keys, candidates=np.flatnonzero(~duplicate))
        similar = self._similar(batch_signatures[earlier], batch_signatures[later])
        # Few texts have an earlier similar one; those are settled in order, as earlier ones may go too.
        partners: dict[int, list[int]] = {}
        for first, second in zip(earlier[similar].tolist(), later[similar].tolist(), strict=True):
            partners.setdefault(second, []).append(first)
        for text in sorted(partners):
            duplicate[text] = any(not duplicate[first] for first in partners[text])

    def _store(self, kept_signatures: np.ndarray) -> np.ndarray:
        """Keep signatures; returns their slots."""
        count = len(kept_signatures)
        while self._kept + count > len(self._signatures):
            self._signatures = np.concatenate((self._signatures, np.empty_like(self._signatures)))
        slots = np.arange(self._kept, self._kept + count)
        self._signatures[slots] = kept_signatures
        self._kept += count
        return slots


def _pairs_sharing_a_key(keys: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (earlier, later) pair of candidate texts, by index, with at least one equal band key."""
    bands = keys.shape[1]
    flat = keys[candidates].ravel()
    owners = np.repeat(candidates, bands)
    order = np.lexsort((owners, flat))
    flat, owners = flat[order], owners[order]
    group_starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    sizes = np.diff(np.append(group_starts, len(flat)))
    # Within a group sorted by text, each member pairs with every member before it.
    position_in_group = np.arange(len(flat)) - np.repeat(group_starts, sizes)
    later = np.repeat(np.arange(len(flat)), position_in_group)
    earlier = np.repeat(np.repeat(group_starts, sizes), position_in_group)
    earlier += np.arange(len(later)) - np.repeat(np.cumsum(position_in_group) - position_in_group, position_in_group)
    pairs = np.unique(np.stack((owners[earlier], owners[later])), axis=1)
    pairs = pairs[:, pairs[0] < pairs[1]]
    return pairs[0], pairs[1]
