"""Exact and near-duplicate removal: first occurrence kept, across batches, at the configured threshold."""

from __future__ import annotations

import numpy as np
import pytest
from datasketch.lsh import _optimal_param

from dataset_builder.quality.dedup import ExactDeduplicator, NearDeduplicator, _BandIndex, _pairs_sharing_a_key
from dataset_builder.quality.minhash import lsh_parameters, shingle_text, signatures

PARAGRAPH = (
    "(1) Die Bundesanstalt kann gegenüber einem Institut, das gegen die Vorschriften dieses Gesetzes "
    "verstößt, Anordnungen treffen, die geeignet und erforderlich sind, um Verstöße zu unterbinden. Sie "
    "kann insbesondere die Auszahlung von Gewinnen untersagen oder beschränken, wenn das Institut die "
    "Anforderungen an die Eigenmittelausstattung nicht erfüllt. (2) Vor einer Anordnung nach Absatz 1 "
    "ist das Institut anzuhören, es sei denn, dass Gefahr im Verzug ist. Die Anordnung ist schriftlich "
    "zu begründen und dem Institut zuzustellen."
)
# The same paragraph with a few words changed: "Bundesanstalt" -> "Aufsichtsbehörde", two more edits.
EDITED = (
    PARAGRAPH.replace("Die Bundesanstalt", "Die Aufsichtsbehörde")
    .replace("untersagen oder beschränken", "untersagen")
    .replace("schriftlich", "in Textform")
)
# Same topic and vocabulary, different paragraph.
SAME_TOPIC = (
    "(1) Die Bundesanstalt überwacht die Einhaltung der Vorschriften über die Eigenmittelausstattung der "
    "Institute. Hierzu kann sie von jedem Institut Auskünfte über alle Geschäftsangelegenheiten verlangen "
    "und Prüfungen vornehmen. (2) Das Institut hat der Bundesanstalt auf Verlangen Unterlagen vorzulegen "
    "und Zutritt zu seinen Geschäftsräumen zu gewähren; Widerspruch und Anfechtungsklage gegen ein "
    "Auskunftsverlangen haben keine aufschiebende Wirkung."
)


def _jaccard(first: str, second: str) -> float:
    def shingles(text: str) -> set[str]:
        prepared = shingle_text(text)
        return {prepared[i : i + 5] for i in range(len(prepared) - 4)}

    a, b = shingles(first), shingles(second)
    return len(a & b) / len(a | b)


def test_exact_keeps_first_occurrence_across_batches() -> None:
    deduplicator = ExactDeduplicator()
    assert deduplicator.keep(["a", "b", "a"]) == [True, True, False]
    assert deduplicator.keep(["b", "c", "A", "a "]) == [False, True, True, True]


def test_near_duplicate_removed_and_same_topic_kept() -> None:
    assert 0.8 <= _jaccard(PARAGRAPH, EDITED) < 1.0
    assert _jaccard(PARAGRAPH, SAME_TOPIC) < 0.3
    assert NearDeduplicator(0.8).keep([PARAGRAPH, EDITED, SAME_TOPIC]) == [True, False, True]


def test_near_duplicates_found_across_batches() -> None:
    deduplicator = NearDeduplicator(0.8)
    assert deduplicator.keep([PARAGRAPH]) == [True]
    assert deduplicator.keep([SAME_TOPIC, EDITED, EDITED + " "]) == [True, False, False]


def test_a_removed_text_does_not_shadow_later_ones() -> None:
    def edited(words: list[str], start: int, tag: str) -> list[str]:
        return [
            f"{tag}{i}" if start <= i < start + 10 and (i - start) % 2 == 0 else word for i, word in enumerate(words)
        ]

    first = PARAGRAPH.split()
    second = edited(first, 0, "neu")  # near the first
    third = edited(second, 40, "anders")  # near the second, not near the first
    texts = [" ".join(words) for words in (first, second, third)]
    assert _jaccard(texts[0], texts[1]) >= 0.8 and _jaccard(texts[1], texts[2]) >= 0.8
    assert _jaccard(texts[0], texts[2]) < 0.75
    assert NearDeduplicator(0.8).keep(texts) == [True, False, True]


def test_threshold_is_respected() -> None:
    similarity = _jaccard(PARAGRAPH, EDITED)
    assert NearDeduplicator(round(similarity - 0.1, 2)).keep([PARAGRAPH, EDITED]) == [True, False]
    assert NearDeduplicator(round(similarity + 0.1, 2)).keep([PARAGRAPH, EDITED]) == [True, True]
    respaced = PARAGRAPH.replace(" ", "  \n")
    assert NearDeduplicator(1.0).keep([PARAGRAPH, EDITED, respaced]) == [True, True, False]


def test_candidates_below_the_threshold_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # One row per band: any shared bin makes a candidate, so only the verification can keep SAME_TOPIC.
    monkeypatch.setattr("dataset_builder.quality.dedup.lsh_parameters", lambda threshold, num_perm: (num_perm, 1))
    assert NearDeduplicator(0.8).keep([PARAGRAPH, SAME_TOPIC, EDITED]) == [True, True, False]


def test_signature_estimates_jaccard() -> None:
    rng = np.random.default_rng(7)
    vocabulary = [f"wort{i}" for i in range(3000)]
    base = list(rng.choice(vocabulary, size=400))
    for changed in (10, 40, 120):
        other = list(base)
        for position in rng.choice(len(base), size=changed, replace=False):
            other[position] = "ersatz" + str(position)
        first, second = " ".join(base), " ".join(other)
        estimate = float(np.mean(np.equal(*signatures([first, second], 256))))
        assert estimate == pytest.approx(_jaccard(first, second), abs=0.08)


def test_signatures_of_equal_texts_are_equal_and_short_texts_work() -> None:
    result = signatures(["Ab", "ab", "x", "", "Ein etwas längerer Text."], 128)
    assert result.shape == (5, 128)
    assert (result[0] == result[1]).all()
    assert not (result[0] == result[2]).all()
    assert (result != 0xFFFFFFFF).all()


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.5, 128), (0.7, 64), (0.8, 128), (0.9, 256)])
def test_banding_is_datasketchs_with_equal_weights(threshold: float, num_perm: int) -> None:
    assert lsh_parameters(threshold, num_perm, 0.5) == _optimal_param(threshold, num_perm, 0.5, 0.5)


def test_default_banding_favours_recall() -> None:
    bands, rows = lsh_parameters(0.8, 128)
    assert bands * rows <= 128
    assert 1 - (1 - 0.8**rows) ** bands > 0.9


def test_pairs_sharing_a_key_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 12, size=(40, 3)).astype(np.uint64)
    candidates = np.sort(rng.choice(40, size=30, replace=False))
    earlier, later = _pairs_sharing_a_key(keys, candidates)
    expected = {
        (int(i), int(j))
        for i in candidates
        for j in candidates
        if i < j and set(keys[i].tolist()) & set(keys[j].tolist())
    }
    assert set(zip(earlier.tolist(), later.tolist(), strict=True)) == expected
    assert len(earlier) == len(expected)


def test_band_index_finds_every_equal_key_across_merged_runs() -> None:
    index = _BandIndex()
    stored = {}
    rng = np.random.default_rng(5)
    for batch in range(12):
        keys = rng.integers(0, 50, size=20 + batch).astype(np.uint64)
        slots = np.arange(len(keys)) + 1000 * batch
        index.add(keys, slots)
        for key, slot in zip(keys.tolist(), slots.tolist(), strict=True):
            stored.setdefault(key, set()).add(slot)
    queries = np.arange(60, dtype=np.uint64)
    found, slots = index.lookup(queries)
    got: dict[int, set[int]] = {}
    for query, slot in zip(found.tolist(), slots.tolist(), strict=True):
        got.setdefault(query, set()).add(slot)
    assert got == stored
    assert len(found) == sum(map(len, stored.values()))
