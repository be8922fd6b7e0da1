"""Heuristic filters: each drops what it is for, charged to the first filter failed; ordinary prose passes."""

from __future__ import annotations

import itertools

import pytest

from dataset_builder.quality.heuristics import HeuristicFilter, HeuristicThresholds, text_statistics

GERMAN_LAW = (
    "(1) Die zuständige Behörde kann auf Antrag Ausnahmen von den Vorschriften des § 12 Abs. 3 Satz 2 "
    "zulassen, wenn die Sicherheit des Verkehrs nicht beeinträchtigt wird. Der Antrag ist schriftlich zu "
    "stellen und zu begründen.\n\n(2) Die Ausnahme kann befristet und mit Auflagen verbunden werden. Sie ist "
    "zu widerrufen, wenn die Voraussetzungen nach Absatz 1 nicht mehr vorliegen oder der Inhaber gegen "
    "Auflagen verstößt.\n\n(3) Das Nähere regelt das Bundesministerium für Verkehr durch Rechtsverordnung "
    "mit Zustimmung des Bundesrates (BGBl. I S. 2954)."
)
ENGLISH_PROSE = (
    "The committee met on Tuesday to discuss the budget for the coming year. Members agreed that the "
    "library should receive additional funds for its digitisation project, while the proposal to extend "
    "the opening hours of the town hall was postponed until more information about staffing costs is "
    "available. A public consultation will open next month, and residents are invited to submit comments."
)
MARKDOWN_NOTICE = (
    "## Hinweise zur Antragstellung\n\nBitte reichen Sie folgende Unterlagen ein:\n\n- eine Kopie des "
    "Personalausweises,\n- den Nachweis über den Wohnsitz,\n- die Bescheinigung des Arbeitgebers.\n\n"
    "Unvollständige Anträge können leider nicht bearbeitet werden. Bei Fragen wenden Sie sich bitte an "
    "das Bürgerbüro der Stadtverwaltung, das montags bis freitags von acht bis zwölf Uhr geöffnet ist."
)


def _words(count: int, start: int = 0) -> list[str]:
    """Distinct five-letter words, so that nothing repeats by accident."""
    shapes = itertools.product("bdfgklmnprst", "aeiou", "bdfgklmnprst", "aeiou", "nrst")
    return ["".join(shape) for shape in itertools.islice(shapes, start, start + count)]


def _repeated_passage(coverage: float, total: int = 200) -> str:
    """A text of `total` words whose second half-passage repeats the first: `coverage` of it is repeated."""
    repeated = round(coverage * total)
    passage = _words(repeated)
    return " ".join(passage + passage + _words(total - 2 * repeated, start=1000))


def _top_ngram_text(n: int, filler_words: int, units: int = 20) -> str:
    """One n-gram repeated `units` times, each time followed by fresh filler words."""
    ngram = _words(n, start=5000)
    words: list[str] = []
    for unit in range(units):
        words += ngram + _words(filler_words, start=100 + unit * filler_words)
    return " ".join(words)


def _failure(text: str, thresholds: HeuristicThresholds | None = None) -> str | None:
    return HeuristicFilter(thresholds).failures([text])[0]


@pytest.mark.parametrize("text", [GERMAN_LAW, ENGLISH_PROSE, MARKDOWN_NOTICE, "Der Bundesrat hat zugestimmt."])
def test_ordinary_prose_passes(text: str) -> None:
    assert _failure(text) is None


def test_short_texts_are_not_judged_on_repetition() -> None:
    short = "Der Rentenwert beträgt 10 Euro. Der Rentenwert (Ost) beträgt 9 Euro."
    assert _failure(short) is None
    assert _failure(short, HeuristicThresholds(min_words_for_repetition=5)) == "top_2gram_chars"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("1 2 3 4 5 6 7 8 9 ab", "mean_word_length"),
        ("https://example.org/verwaltung/formulare/antrag-auf-erteilung-einer-erlaubnis.pdf", "mean_word_length"),
        ("", "mean_word_length"),
        ("#sparen #jetzt #kaufen #angebot heute nur hier bei uns", "symbol_word_ratio"),
        ("Mehr lesen … weiter lesen … noch mehr …", "symbol_word_ratio"),
        ("• Startseite\n• Über uns\n• Kontakt\n• Impressum\n• Datenschutz", "bullet_lines"),
        ("\n".join(" ".join(_words(12, 40 * line)) + "..." for line in range(3)), "ellipsis_lines"),
        ("2019 2020 2021 2022 2023 Jahr Zahl", "alphabetic_words"),
        ("\n".join(["Jetzt hier klicken und sofort sparen"] * 12 + _words(2)), "duplicate_lines"),
        ("\n".join(_words(40) + [" ".join(_words(30, 500))] * 2), "duplicate_line_chars"),
        (_top_ngram_text(2, 1), "top_2gram_chars"),
        (_top_ngram_text(3, 5), "top_3gram_chars"),
        (_top_ngram_text(4, 8), "top_4gram_chars"),
        (" ".join(_words(40) * 3), "duplicate_5gram_chars"),
        (_repeated_passage(0.49), "duplicate_6gram_chars"),
        (_repeated_passage(0.47), "duplicate_7gram_chars"),
        (_repeated_passage(0.45), "duplicate_8gram_chars"),
        (_repeated_passage(0.43), "duplicate_9gram_chars"),
        (_repeated_passage(0.41), "duplicate_10gram_chars"),
    ],
)
def test_drops(text: str, name: str) -> None:
    assert _failure(text) == name


def test_terminal_punctuation_is_off_by_default_and_works_when_on() -> None:
    hard_wrapped = "Die Behörde kann auf Antrag\nAusnahmen zulassen, wenn die Sicherheit\nnicht beeinträchtigt wird."
    assert "terminal_punctuation" not in HeuristicFilter().filter_names
    assert _failure(hard_wrapped) is None
    strict = HeuristicThresholds(min_terminal_punctuation_lines=0.5)
    assert _failure(hard_wrapped, strict) == "terminal_punctuation"
    assert _failure("Erster Satz.\nZweiter Satz!", strict) is None


def test_statistics_follow_their_definitions() -> None:
    stats = text_statistics(["a1 bb\n#x cc\nbb\n\nbb", "eins zwei drei. vier …"])
    assert stats["words"].tolist() == [6, 5]
    assert stats["mean_word_length"][0] == pytest.approx(2.0)
    assert stats["alphabetic_words"][0] == 1.0
    # One hash word that does not open its line, one ellipsis.
    assert stats["symbol_word_ratio"].tolist() == pytest.approx([0.0, 0.2])
    # Non-empty lines "a1 bb", "#x cc", "bb", "bb": the last repeats the third.
    assert stats["duplicate_lines"][0] == pytest.approx(0.25)
    assert stats["duplicate_line_chars"][0] == pytest.approx(2 / 18)


def test_filters_can_be_switched_off() -> None:
    thresholds = HeuristicThresholds(min_mean_word_length=None, max_mean_word_length=None, max_top_ngram_chars=())
    names = HeuristicFilter(thresholds).filter_names
    assert "mean_word_length" not in names and "top_2gram_chars" not in names
    assert _failure("1 2 3 4 5 6 7 8 9 ab", thresholds) == "alphabetic_words"


def test_texts_are_judged_independently_within_a_batch() -> None:
    repeated = " ".join(_words(40) * 3)
    texts = [GERMAN_LAW, repeated, ENGLISH_PROSE, "", repeated[:50]]
    assert HeuristicFilter().failures(texts) == [None, "duplicate_5gram_chars", None, "mean_word_length", None]
