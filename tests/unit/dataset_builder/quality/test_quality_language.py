"""Language identification: wanted languages kept, others and undetectable texts dropped."""

from __future__ import annotations

import pytest

from dataset_builder.quality.language import SUPPORTED_LANGUAGES, LanguageFilter

GERMAN = (
    "(1) Der Antrag auf Erteilung der Erlaubnis ist schriftlich bei der zuständigen Behörde zu stellen. "
    "Dem Antrag sind die zur Prüfung erforderlichen Unterlagen beizufügen."
)
ENGLISH = (
    "The application for the permit must be submitted in writing to the competent authority, together "
    "with all documents required for the assessment."
)
FRENCH = (
    "La demande d'autorisation doit être présentée par écrit à l'autorité compétente, accompagnée de "
    "tous les documents nécessaires à son examen."
)
DUTCH = "De aanvraag voor de vergunning moet schriftelijk worden ingediend bij de bevoegde autoriteit."


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (GERMAN, "de"),
        (ENGLISH, "en"),
        (FRENCH, "fr"),
        (DUTCH, "nl"),
        ("Der Bundesrat hat zugestimmt.", "de"),
        ("The Federal Council has agreed.", "en"),
        ("Следующие документы должны быть представлены в ведомство.", None),
        ("12345 67890", None),
    ],
)
def test_detects(text: str, code: str | None) -> None:
    assert LanguageFilter(["de"]).detect([text]) == [code]


def test_keeps_only_wanted_languages() -> None:
    texts = [GERMAN, ENGLISH, FRENCH, "…", GERMAN[:60]]
    assert LanguageFilter(["de"]).keep(texts) == [True, False, False, False, True]
    assert LanguageFilter(["de", "en"]).keep(texts) == [True, True, False, False, True]


def test_long_texts_are_judged_by_their_beginning() -> None:
    opening = "Die Behörde entscheidet über den Antrag innerhalb von drei Monaten nach Eingang der Unterlagen. "
    english = (
        f"{ENGLISH} The committee met on Tuesday to discuss the budget for the coming year. Residents may send "
        "their comments by post or hand them in at the reception desk of the town hall, where staff will help "
        "with any questions about the procedure and the documents that have to be enclosed."
    )
    assert LanguageFilter(["de"]).detect([english, opening + english]) == ["en", "de"]


def test_lone_surrogates_do_not_stop_detection() -> None:
    assert LanguageFilter(["de"]).detect([GERMAN + " \udc80", "Der Bundesrat hat zugestimmt. \udc80"]) == ["de", "de"]


def test_rejects_unsupported_codes() -> None:
    with pytest.raises(ValueError, match="xx"):
        LanguageFilter(["de", "xx"])


def test_required_candidates_are_supported() -> None:
    assert {"de", "en", "fr", "it", "es", "nl", "pl", "tr"} <= set(SUPPORTED_LANGUAGES)
