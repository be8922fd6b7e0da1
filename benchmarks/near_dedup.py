"""Clara's near-duplicate stage against datasketch's MinHash + MinHashLSH, on the same texts in one run.

Both sides see the same 5-character shingles of the same lowercased, whitespace-normalised texts,
the same threshold and num_perm, and keep the first occurrence: a text is removed when the LSH
index of the texts kept so far returns a candidate for it. datasketch removes on any shared
band; Clara also requires the estimated Jaccard similarity to reach the threshold, so it does
not follow datasketch's LSH false positives. The figures beyond throughput and agreement come from
a ground truth neither side computes: a text is a near duplicate when its exact shingle Jaccard
similarity with some earlier text reaches the threshold. Candidates for it come from a separate
MinHashLSH at a much lower threshold (a pair at the threshold is a candidate with probability
above 0.99), each checked exactly. Against it, each side's precision (its removals that are near
duplicates) and recall (the near duplicates it removes).

    python benchmarks/near_dedup.py [N]    # the first N texts of the law corpus (default 20000)
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

from datasketch import MinHash, MinHashLSH

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataset_builder.quality.dedup import NearDeduplicator  # noqa: E402
from dataset_builder.quality.minhash import DEFAULT_NUM_PERM, SHINGLE_SIZE, shingle_text  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpora" / "gesetze-paragraphs.jsonl.gz"
BATCH_SIZE = 1000
CANDIDATE_THRESHOLD = 0.5
"""LSH threshold of the ground truth's candidate search, far enough below any tested threshold."""


def _clara(texts: list[str], threshold: float, num_perm: int) -> tuple[set[int], float]:
    """Indices Clara removes, and its seconds, fed in the pipeline's batches."""
    deduplicator = NearDeduplicator(threshold=threshold, num_perm=num_perm)
    removed: set[int] = set()
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH_SIZE):
        verdicts = deduplicator.keep(texts[start : start + BATCH_SIZE])
        removed.update(start + offset for offset, keep in enumerate(verdicts) if not keep)
    return removed, time.perf_counter() - started


def _shingles(text: str) -> set[bytes]:
    prepared = shingle_text(text)
    if len(prepared) < SHINGLE_SIZE:
        return {prepared.encode("utf-8")}
    return {prepared[i : i + SHINGLE_SIZE].encode("utf-8") for i in range(len(prepared) - SHINGLE_SIZE + 1)}


def _jaccard(first: str, second: str) -> float:
    first_shingles, second_shingles = _shingles(first), _shingles(second)
    return len(first_shingles & second_shingles) / len(first_shingles | second_shingles)


def _datasketch(texts: list[str], threshold: float, num_perm: int) -> tuple[dict[int, list[int]], list[MinHash], float]:
    """Removed index -> the kept indices it matched, every text's MinHash, and datasketch's seconds."""
    index = MinHashLSH(threshold=threshold, num_perm=num_perm)
    pairs: dict[int, list[int]] = {}
    minhashes = []
    started = time.perf_counter()
    for position, text in enumerate(texts):
        signature = MinHash(num_perm=num_perm)
        signature.update_batch(list(_shingles(text)))
        minhashes.append(signature)
        matches = index.query(signature)
        if matches:
            pairs[position] = matches
        else:
            index.insert(position, signature)
    return pairs, minhashes, time.perf_counter() - started


def _true_near_duplicates(texts: list[str], minhashes: list[MinHash], threshold: float) -> set[int]:
    """Indices of texts whose exact Jaccard similarity with some earlier text reaches the threshold."""
    candidates = MinHashLSH(threshold=CANDIDATE_THRESHOLD, num_perm=minhashes[0].hashvalues.size)
    duplicates = set()
    for position, signature in enumerate(minhashes):
        # Shingle sets are made per candidate pair: kept for every text, they would take gigabytes.
        if any(_jaccard(texts[position], texts[earlier]) >= threshold for earlier in candidates.query(signature)):
            duplicates.add(position)
        candidates.insert(position, signature)
    return duplicates


def _precision_recall(removed: set[int], truth: set[int]) -> tuple[float, float]:
    """Fraction of removals that are near duplicates, and of near duplicates that are removed."""
    hits = len(removed & truth)
    return (round(hits / len(removed), 4) if removed else 1.0), (round(hits / len(truth), 4) if truth else 1.0)


def compare_with_datasketch(texts: list[str], threshold: float = 0.8, num_perm: int = DEFAULT_NUM_PERM) -> dict:
    """Throughput of both on the same texts, and how many of datasketch's duplicates Clara finds."""
    clara_removed, clara_seconds = _clara(texts, threshold, num_perm)
    pairs, minhashes, datasketch_seconds = _datasketch(texts, threshold, num_perm)
    found = sum(1 for removed in pairs if removed in clara_removed)
    # Outside the timings: which of datasketch's removals are near duplicates by the exact Jaccard similarity
    # with at least one of the kept texts it matched.
    genuine = [removed for removed, kept in pairs.items()
               if max(_jaccard(texts[removed], texts[match]) for match in kept) >= threshold]
    genuine_found = sum(1 for removed in genuine if removed in clara_removed)
    genuine_fraction = round(genuine_found / len(genuine), 4) if genuine else 1.0
    truth = _true_near_duplicates(texts, minhashes, threshold)
    clara_precision, clara_recall = _precision_recall(clara_removed, truth)
    datasketch_precision, datasketch_recall = _precision_recall(set(pairs), truth)
    clara_rate = len(texts) / clara_seconds
    datasketch_rate = len(texts) / datasketch_seconds
    return {
        "true_near_duplicates": len(truth),
        "clara_precision": clara_precision,
        "clara_recall": clara_recall,
        "datasketch_precision": datasketch_precision,
        "datasketch_recall": datasketch_recall,
        "clara_docs_per_second": round(clara_rate, 1),
        "datasketch_docs_per_second": round(datasketch_rate, 1),
        "speedup": round(clara_rate / datasketch_rate, 2),
        "datasketch_duplicate_pairs": len(pairs),
        "clara_found_fraction_of_datasketch_pairs": round(found / len(pairs), 4) if pairs else 1.0,
        "clara_removed": len(clara_removed),
        "datasketch_removed": len(pairs),
        "datasketch_pairs_below_threshold": len(pairs) - len(genuine),
        "clara_found_fraction_of_datasketch_pairs_at_threshold": genuine_fraction,
        "clara_removed_not_removed_by_datasketch": len(clara_removed - pairs.keys()),
    }


def _corpus_texts(limit: int) -> list[str]:
    texts = []
    with gzip.open(CORPUS, "rt", encoding="utf-8") as lines:
        for line in lines:
            texts.append(json.loads(line)["text"])
            if len(texts) >= limit:
                break
    return texts


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    print(json.dumps(compare_with_datasketch(_corpus_texts(count)), indent=2))
