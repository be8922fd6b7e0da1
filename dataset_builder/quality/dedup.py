"""Exact and near-duplicate removal across a whole build; the first occurrence of a text is kept.

Both keep state between batches, and only of the documents they kept: 16 bytes (plus set
overhead) per document for exact dedup; for near dedup a signature of num_perm * 4 bytes and one
dictionary entry per LSH band, about 1.5 KB per kept document at the defaults.
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


class NearDeduplicator:
    """Drops texts whose MinHash-estimated Jaccard similarity with a kept text reaches the threshold.

    Candidates come from LSH: a text is compared only with kept texts that share one of its band
    keys, with the bands and rows datasketch would choose for the threshold. A candidate is
    dropped only when the estimate over the whole signature reaches the threshold, so an LSH
    false positive never costs a document.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = DEFAULT_NUM_PERM) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands, self.rows = lsh_parameters(threshold, num_perm)
        # Agreeing bins needed: the estimate is agreements / num_perm; the epsilon absorbs float error.
        self._min_agreements = int(np.ceil(threshold * num_perm - 1e-9))
        self._tables: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self._signatures = np.empty((1024, num_perm), dtype=np.uint32)
        self._kept = 0

    def keep(self, texts: list[str]) -> list[bool]:
        """For each text, whether it is not a near duplicate of a text kept so far (it is then kept)."""
        batch_signatures = signatures(texts, self.num_perm)
        keys = band_keys(batch_signatures, self.bands, self.rows).tolist()
        verdicts = []
        for signature, text_keys in zip(batch_signatures, keys, strict=True):
            candidates = self._candidates(text_keys)
            duplicate = bool(candidates) and self._matches(signature, candidates)
            if not duplicate:
                self._remember(signature, text_keys)
            verdicts.append(not duplicate)
        return verdicts

    def _candidates(self, text_keys: list[int]) -> list[int]:
        found: list[int] = []
        for table, key in zip(self._tables, text_keys, strict=True):
            hit = table.get(key)
            if hit is None:
                continue
            if isinstance(hit, int):
                found.append(hit)
            else:
                found.extend(hit)
        return found

    def _matches(self, signature: np.ndarray, candidates: list[int]) -> bool:
        kept = self._signatures[np.unique(candidates)]
        agreements = np.count_nonzero(kept == signature, axis=1)
        return bool(agreements.max() >= self._min_agreements)

    def _remember(self, signature: np.ndarray, text_keys: list[int]) -> None:
        slot = self._kept
        if slot == len(self._signatures):
            self._signatures = np.concatenate((self._signatures, np.empty_like(self._signatures)))
        self._signatures[slot] = signature
        self._kept += 1
        # Most keys are unique, so a bucket holds a bare int until a second text arrives.
        for table, key in zip(self._tables, text_keys, strict=True):
            hit = table.get(key)
            if hit is None:
                table[key] = slot
            elif isinstance(hit, int):
                table[key] = [hit, slot]
            else:
                hit.append(slot)
