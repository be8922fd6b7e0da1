"""Length bounds in characters and words; unset bounds do not apply."""

from __future__ import annotations

import pytest

from dataset_builder.quality.length import LengthFilter, word_counts


@pytest.mark.parametrize(
    ("bounds", "text", "kept"),
    [
        ({"min_chars": 10}, "zehn Zeich", True),
        ({"min_chars": 10}, "neun Zeic", False),
        ({"max_chars": 10}, "zehn Zeich", True),
        ({"max_chars": 10}, "elf Zeichen", False),
        ({"min_words": 3}, "drei kurze Wörter", True),
        ({"min_words": 3}, "zwei Wörter", False),
        ({"max_words": 3}, "drei\n\nkurze\tWörter", True),
        ({"max_words": 3}, "vier kurze Wörter hier", False),
        ({"min_chars": 5, "max_words": 1}, "Einwort", True),
        ({}, "", True),
    ],
)
def test_bounds(bounds: dict[str, int], text: str, kept: bool) -> None:
    assert LengthFilter(**bounds).keep([text]) == [kept]


def test_word_counts_match_str_split() -> None:
    texts = ["", " ", "eins", "  zwei  Wörter ", "a\nb\tc\u00a0d", "§ 12 Abs. 3", "\u3000x\u2003y"]
    assert word_counts(texts).tolist() == [len(text.split()) for text in texts]


def test_active_only_with_a_bound() -> None:
    assert not LengthFilter().active
    assert LengthFilter(max_words=0).active
