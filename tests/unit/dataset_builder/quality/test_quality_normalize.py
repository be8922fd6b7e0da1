"""Normalisation: Unicode, whitespace, invisible characters and stray markup; batches agree with single texts."""

from __future__ import annotations

import random

import pytest

from dataset_builder.quality.normalize import normalize_text, normalize_texts


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Gesetz u\u0308ber die Pru\u0308fung", "Gesetz über die Prüfung"),
        ("Satz  eins.\tSatz\u00a0zwei.", "Satz eins. Satz zwei."),
        ("  erste Zeile  \n   zweite Zeile\t\n", "erste Zeile\nzweite Zeile"),
        ("Absatz eins.\n\n\n\n\nAbsatz zwei.", "Absatz eins.\n\nAbsatz zwei."),
        ("eins\n \n \t \nzwei", "eins\n\nzwei"),
        ("Zeile\r\nZeile\rZeile\u2028Zeile", "Zeile\nZeile\nZeile\nZeile"),
        ("Ver\u00adwal\u00adtung\u200b und\ufeff Amt\x07", "Verwaltung und Amt"),
        (
            "<p>Der <b>Antrag</b> ist zu stellen.</p><p>Frist: 2 Wochen</p>",
            "Der Antrag ist zu stellen.\n\nFrist: 2 Wochen",
        ),
        ("Zeile<br/>Zeile<!-- Kommentar -->", "Zeile\nZeile"),
        ("M&uuml;ller &amp; S&ouml;hne &#8211; &#x41;G", "Müller & Söhne – AG"),
        ("Titel\n##\n\nText", "Titel\n\nText"),
        ("kaputt \udc80 hier", "kaputt \ufffd hier"),
    ],
)
def test_rewrites(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    "kept",
    [
        "(1) Die Gebühr beträgt 1.234,56 EUR.\n(2) Absatz zwei.",
        "Die Anpassung <angepasst auf 97 Euro> gilt ab 2023.",
        "Es gilt: a < b und b > c; AT&T ist kein Entity.",
        "## Überschrift\n\nText unter einer Markdown-Überschrift.",
        "Liste:\n- erstens\n- zweitens",
        "",
    ],
)
def test_leaves_clean_text_alone(kept: str) -> None:
    assert normalize_text(kept) == kept


def test_batch_matches_single_texts() -> None:
    texts = [
        "sauber",
        "  zwei  Leerzeichen ",
        "",
        "u\u0308",
        "<i>kursiv</i>",
        "a\n\n\n\nb",
        "\u00a0",
        "ende\n",
        "#\nx",
        "\n",
    ]
    assert normalize_texts(texts) == [normalize_text(text) for text in texts]


def test_batch_matches_single_texts_on_random_mixtures() -> None:
    pieces = ["a", "b", " ", "  ", "\n", "\n\n", "\t", "\u00a0", "\r", "\r\n", "\x00", "\u00ad", "\u2028"]
    pieces += ["\udc80", "ä", "u\u0308", "#", "##", "<b>", "&amp;", "–", "\u3000", "\x85"]
    rng = random.Random(0)
    for _ in range(300):
        texts = ["".join(rng.choices(pieces, k=rng.randint(0, 12))) for _ in range(rng.randint(1, 8))]
        assert normalize_texts(texts) == [normalize_text(text) for text in texts], texts


def test_batch_of_nothing() -> None:
    assert normalize_texts([]) == []
