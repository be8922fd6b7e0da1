"""PII redaction: typed placeholders for personal data, and the numbers of legal text left alone."""

from __future__ import annotations

import pytest

from dataset_builder.quality.pii import PiiRedactor, iban_is_valid, steuer_id_is_valid


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("Kontakt: max.mustermann@example.de.", "Kontakt: [EMAIL].", "email"),
        ("Write to jane_doe+news@mail.example.co.uk today", "Write to [EMAIL] today", "email"),
        ("Tel. +49 (0)30 1234567, bitte", "Tel. [PHONE], bitte", "phone"),
        ("Rufnummer 030/1234567 oder", "Rufnummer [PHONE] oder", "phone"),
        ("mobil 0171 1234567.", "mobil [PHONE].", "phone"),
        ("erreichbar unter 01711234567", "erreichbar unter [PHONE]", "phone"),
        ("Fax (030) 12 34 56-78", "Fax [PHONE]", "phone"),
        ("Telefon: 0228 99 12 34", "Telefon: [PHONE]", "phone"),
        ("Call (415) 555-2671 or +1 415 555 2671.", "Call [PHONE] or [PHONE].", "phone"),
        ("UK office: +44 20 7946 0958", "UK office: [PHONE]", "phone"),
        ("Jane Doe (+44 20 7946 0958): my payment", "Jane Doe ([PHONE]): my payment", "phone"),
        ("Zentrale (Tel. +49 (228) 99 123-4567).", "Zentrale (Tel. [PHONE]).", "phone"),
        ("IBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX", "IBAN [IBAN], BIC COBADEFFXXX", "iban"),
        ("IBAN: DE89370400440532013000.", "IBAN: [IBAN].", "iban"),
        ("account GB29 NWBK 6016 1331 9268 19 please", "account [IBAN] please", "iban"),
        ("Server 192.168.178.20 antwortet", "Server [IP] antwortet", "ip"),
        ("IP-Adresse 10.0.0.1 gesperrt", "IP-Adresse [IP] gesperrt", "ip"),
        ("host 2001:db8::8a2e:370:7334 and ::1", "host [IP] and [IP]", "ip"),
        ("Steuer-ID 86095742719 angeben", "Steuer-ID [TAX_ID] angeben", "tax_id"),
        ("Steuer-ID: 86 095 742 719", "Steuer-ID: [TAX_ID]", "tax_id"),
        ("Steuernummer 12/345/67890 beim Finanzamt", "Steuernummer [TAX_ID] beim Finanzamt", "tax_id"),
        ("StNr. 93815/08152", "StNr. [TAX_ID]", "tax_id"),
        ("SV-Nummer 65 170839 J 003.", "SV-Nummer [SOCIAL_SECURITY].", "social_security"),
        ("Rentenversicherungsnummer 65170839J003", "Rentenversicherungsnummer [SOCIAL_SECURITY]", "social_security"),
    ],
)
def test_redacts(text: str, expected: str, kind: str) -> None:
    redactor = PiiRedactor()
    assert redactor.redact(text) == expected
    assert redactor.counts[kind] == expected.count(f"[{kind.upper()}]")
    assert sum(redactor.counts.values()) == redactor.counts[kind]


@pytest.mark.parametrize(
    "text",
    [
        "Gemäß § 12 Abs. 3 Satz 2 Nr. 1 des Gesetzes vom 01.02.2023 (BGBl. I S. 2954).",
        "Der Betrag beträgt 1.234,56 EUR, insgesamt 476 288 000 000 Euro im Haushaltsjahr 2023.",
        "Richtlinie 2011/83/EU, Verordnung (EU) 2016/679, Az. 1 BvR 2335/95, ISSN 0176-3504.",
        "Es gelten die Nummern 1.2.3.4 und 2.2.1.1 bis 2.2.3.5 der Anlage; Gliederung 1.2.3.4.5.",
        "Warennummer 0105 99 50 und Unterposition 0206 2991 des Zolltarifs.",
        "CAS-Nr. 0010043-35-3, Uhrzeit 12:30:45, Verhältnis 3:1, PLZ 01067 Dresden.",
        "Mehreinnahmen +3 500 000 Euro gegenüber dem Vorjahr; Ziffer 12 345 678 901.",
        "IBAN DE89 3704 0044 0532 0130 01 hat eine falsche Prüfziffer.",
        "The act of 12 June 2020 applies to 1,250 offices in 16 states.",
    ],
)
def test_leaves_ordinary_numbers_alone(text: str) -> None:
    redactor = PiiRedactor()
    assert redactor.redact(text) == text
    assert not any(redactor.counts.values())


def test_counts_accumulate_over_batches() -> None:
    redactor = PiiRedactor()
    first = redactor.redact_texts(["a@example.org und b@example.org", "nichts", "Tel. 030 1234567"])
    second = redactor.redact_texts(["c@example.org"])
    assert first == ["[EMAIL] und [EMAIL]", "nichts", "Tel. [PHONE]"]
    assert second == ["[EMAIL]"]
    assert redactor.counts == {"email": 3, "iban": 0, "ip": 0, "social_security": 0, "tax_id": 0, "phone": 1}


def test_pii_deep_inside_a_long_text() -> None:
    filler = "Die Behörde prüft den Antrag nach § 5 Abs. 2 unverzüglich. " * 200
    text = filler + "Rückfragen an info@amt.example.de oder 0301 2345678. " + filler
    redacted = PiiRedactor().redact(text)
    assert redacted == filler + "Rückfragen an [EMAIL] oder [PHONE]. " + filler


def test_iban_checksum() -> None:
    assert iban_is_valid("DE89 3704 0044 0532 0130 00")
    assert not iban_is_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_is_valid("DE89 3704 0044 0532 0130 0")  # one character short for Germany


def test_steuer_id_rules() -> None:
    assert steuer_id_is_valid("86095742719")
    assert not steuer_id_is_valid("86095742718")  # check digit
    assert not steuer_id_is_valid("12345678903")  # no digit repeats
    assert not steuer_id_is_valid("06095742719")  # leading zero
