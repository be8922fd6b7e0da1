"""Redaction of personal data with typed placeholders: e-mail, phone, IBAN, IP, tax and social security numbers.

Patterns are written for German administrative text, where numbers are everywhere ("§ 12 Abs. 3",
"BGBl. I S. 2954", "1.234,56 EUR", "vom 01.02.2023"): every pattern needs a shape no such number
has, and the ambiguous ones must also pass a check before anything is replaced:

* IBAN: mod-97 checksum (ISO 13616) and, for known countries, the country's length.
* IP: IPv6 must parse as an address. IPv4 octets go up to 255 and the address must not be part of
  a longer dotted number ("1.2.3.4.5"); as section numbers share its shape ("Nr. 2.2.1.1"), it is
  redacted only after a word like "IP", "Server" or "Adresse", or when an octet is 32 or more and
  it does not stand where outline numbering does (a line start, after "Nr.", "Abschnitt" and the
  like, in a list of section numbers). A bare "10.0.0.1" is therefore kept: a rare miss, against
  thousands of section numbers in the law corpus.
* Tax: the Steuer-ID's digit-frequency rule and ISO 7064 MOD 11,10 check digit; Steuernummern
  only in the slashed shapes the states use (12/345/67890, 123/4567/8901, 12345/67890, 12/345/6789/0).
* Social security (Rentenversicherungsnummer): two digits, a birth date DDMMYY with a real day
  and month, a capital letter, three digits ("65 170839 J 003"). The check digit is not verified:
  the shape is specific enough, and a mistyped number is still personal data.
* Phone: "+" or "00" and a country code; a German area code with leading 0 and a separated
  subscriber number; a bare mobile number; the North American (415) 555-2671 shape; 9 to 15
  digits. Shapes that other numbers share count only after a word like "Tel." or "Fax": national
  numbers of 7 or 8 digits ("0430 4830" is a ship number), subscriber numbers in groups of at most
  two digits ("0105 99 50" is a customs tariff number, "030 12 34 56" a phone number), amounts
  grouped in thousands ("+3 500 000"). CAS registry numbers and ISSNs never count.

Regexes are slow on text full of digits, so a vectorised pass over the whole batch first finds
the few windows where a match is possible (seven digits within 20 characters, three dotted digit
pairs within 15, two colons within 5) and the patterns run there only.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dataset_builder.quality.codepoints import CodePointBatch

logger = logging.getLogger(__name__)

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "iban": "[IBAN]",
    "ip": "[IP]",
    "social_security": "[SOCIAL_SECURITY]",
    "tax_id": "[TAX_ID]",
    "phone": "[PHONE]",
}
"""Placeholder per redaction type; where matches overlap, the type listed first wins."""

_EMAIL = re.compile(
    r"(?<![\w.+-])[\w.+-]+@[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)*\.[^\W\d_]{2,}(?![\w-])"
)
_IBAN = re.compile(r"\b[A-Z]{2}[0-9]{2}(?:[ \n]?[A-Z0-9]){11,30}\b")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.[0-9])")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3})?(?![\w:])")
_SOCIAL_SECURITY = re.compile(r"(?<![\w/])[0-9]{2} ?([0-9]{2})([0-9]{2})[0-9]{2} ?[A-Z] ?[0-9]{2} ?[0-9](?![\w/])")
_STEUERNUMMER = re.compile(
    r"(?<![\w/.,])(?:[0-9]{2,3}/[0-9]{3,4}/[0-9]{4,5}|[0-9]{5}/[0-9]{5}|[0-9]{2}/[0-9]{3}/[0-9]{4}/[0-9])(?![\w/]|[.,][0-9])"
)
_STEUER_ID = re.compile(r"(?<![\w/.,])(?<![0-9] )[1-9][0-9](?: ?[0-9]{3}){3}(?![\w/]|[.,][0-9]| [0-9])")
_PHONE = re.compile(
    r"(?<![\w+/.,-])(?<![0-9] )(?<!\w:)(?:"
    r"(?:\+|00)[1-9][0-9]{0,2}(?:[ \-./]?\(0\))?(?:[ \-./]?(?:\([0-9]{1,5}\)|[0-9]{1,5})){1,6}"  # +49 (0)30 1234567
    r"|(?:\(0[1-9][0-9]{1,4}\)|0[1-9][0-9]{1,4})(?: ?[/\-] ?| )[0-9]{2,}(?:[ \-][0-9]{1,5}){0,3}"  # 030/1234567
    r"|01[5-7][0-9]{8,9}"  # 01711234567
    r"|(?:\([0-9]{3}\) ?|[0-9]{3}-)[0-9]{3}-[0-9]{4}"  # (415) 555-2671
    r")(?![\w/]|[.,][0-9])"
)
_PHONE_CONTEXT = re.compile(r"(?i)(?:tel|fon|fax|mobil|handy|ruf|phone|call|cell)[\w.-]*:?\s*$")
# Numbers that look like phone numbers but are not: CAS registry numbers, ISSNs, amounts grouped in thousands.
_NOT_PHONE = re.compile(r"[0-9]{2,7}-[0-9]{2}-[0-9]|[0-9]{4}-[0-9]{3}[0-9X]")
_THOUSANDS = re.compile(r"\+?[0-9]{1,3}(?:[ .][0-9]{3})+")
_IP_CONTEXT = re.compile(
    r"(?i)\b(?:ip|ipv4|adresse|address|server|host|gateway|router|dns|proxy|subnet\w*|netz\w*)\b[\w.:-]*\s*$"
)
_OUTLINE_CONTEXT = re.compile(
    r"(?i)(?:"
    r"(?:^|\n)[\s*+\u2022-]*"  # the start of a line or of a list item: outline numbering
    r"|\b(?:nr|nrn|nummer|nummern|ziffer|ziffern|unterabschnitt|abschnitt|kapitel|anhang|anlage|tabelle|punkt"
    r"|tz|textziffer|rn|randnummer|teil)[a-z]*\.?\s*"
    r"|[0-9]+\\?(?:\.[0-9]+)+\s*(?:,|und|oder|bis|sowie)\s*"  # the next item of a list of section numbers
    r")$"
)
_CONTEXT_CHARS = 30

_IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20,
    "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IS": 26, "IT": 27,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25,
    "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26, "UA": 29,
}  # fmt: skip


def iban_is_valid(candidate: str) -> bool:
    """Whether an IBAN (spaces allowed) has a valid mod-97 checksum and, for known countries, length."""
    compact = "".join(candidate.split()).upper()
    if not 15 <= len(compact) <= 34 or not compact.isascii() or not compact.isalnum():
        return False
    expected = _IBAN_LENGTHS.get(compact[:2])
    if expected is not None and len(compact) != expected:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def steuer_id_is_valid(candidate: str) -> bool:
    """Whether 11 digits (spaces allowed) form a valid Steuerliche Identifikationsnummer."""
    digits = [int(char) for char in candidate if char.isdigit()]
    if len(digits) != 11 or digits[0] == 0:
        return False
    counts = sorted((digits[:10].count(digit) for digit in set(digits[:10])), reverse=True)
    # One digit occurs twice or three times, every other at most once.
    if counts[0] not in (2, 3) or any(count != 1 for count in counts[1:]):
        return False
    if counts[0] == 3 and any(digits[i] == digits[i + 1] == digits[i + 2] for i in range(8)):
        return False
    product = 10
    for digit in digits[:10]:
        total = (digit + product) % 10 or 10
        product = (2 * total) % 11
    return (11 - product) % 10 == digits[10]


def _before(match: re.Match[str]) -> str:
    return match.string[max(0, match.start() - _CONTEXT_CHARS) : match.start()]


def _iban_end(match: re.Match[str]) -> int | None:
    """End of the longest valid IBAN the match starts with; the pattern may run on into the next word."""
    candidate = match.group(0)
    for end in range(len(candidate), 14, -1):
        if (end == len(candidate) or candidate[end] in " \n") and iban_is_valid(candidate[:end]):
            return match.start() + end
    return None


def _accept(match: re.Match[str]) -> int | None:
    return match.end()


def _ipv4_end(match: re.Match[str]) -> int | None:
    before = _before(match)
    if _IP_CONTEXT.search(before):
        return match.end()
    # Section numbers stay below 32 in every part; an address has a larger octet with odds 1 - 2**-12.
    if max(int(octet) for octet in match.group(0).split(".")) < 32 or _OUTLINE_CONTEXT.search(before):
        return None
    return match.end()


def _ipv6_end(match: re.Match[str]) -> int | None:
    try:
        ipaddress.IPv6Address(match.group(0))
    except ValueError:
        return None
    return match.end()


def _social_security_end(match: re.Match[str]) -> int | None:
    day, month = int(match.group(1)), int(match.group(2))
    return match.end() if 1 <= day <= 31 and 1 <= month <= 12 else None


def _steuer_id_end(match: re.Match[str]) -> int | None:
    return match.end() if steuer_id_is_valid(match.group(0)) else None


def _phone_end(match: re.Match[str]) -> int | None:
    number = match.group(0)
    if _NOT_PHONE.fullmatch(number):
        return None
    international = number.startswith(("+", "00"))
    digits = sum(char.isdigit() for char in number) - number.count("(0)") - 2 * number.startswith("00")
    groups = re.split(r"[ /\-]+", number)
    # Customs tariff numbers (0105 99 50), ship numbers (0430 4830) and amounts (+3 500 000) share
    # these shapes with phone numbers; they count as phone numbers only after "Tel.", "Fax" and the like.
    ambiguous = (
        _THOUSANDS.fullmatch(number) is not None
        or (not international and digits < 9)
        or (not international and len(groups) > 2 and all(len(group) <= 2 for group in groups[1:]))
    )
    if not (7 if ambiguous else 9) <= digits <= 15:
        return None
    if ambiguous and not _PHONE_CONTEXT.search(_before(match)):
        return None
    return match.end()


@dataclass(frozen=True)
class _Pass:
    kind: str
    pattern: re.Pattern[str]
    end: Callable[[re.Match[str]], int | None]
    """End of the redaction for a match, or None to leave the match alone."""
    trigger: str
    """Where the pattern runs: "@" (texts with an at sign), or a kind of candidate window."""


_PASSES = (
    _Pass("email", _EMAIL, _accept, "@"),
    _Pass("iban", _IBAN, _iban_end, "digits"),
    _Pass("ip", _IPV6, _ipv6_end, "colons"),
    _Pass("ip", _IPV4, _ipv4_end, "dotted"),
    _Pass("social_security", _SOCIAL_SECURITY, _social_security_end, "digits"),
    _Pass("tax_id", _STEUERNUMMER, _accept, "digits"),
    _Pass("tax_id", _STEUER_ID, _steuer_id_end, "digits"),
    _Pass("phone", _PHONE, _phone_end, "digits"),
)

# Candidate windows: (width, least count of the marked characters in it).
_WINDOWS = {"digits": (20, 7), "dotted": (15, 3), "colons": (6, 2)}
# Context a pattern may need around its window: lookbehind, prefixes like "DE89" or "+", long IBANs.
_MARGIN = 40
_ZERO, _NINE, _DOT, _COLON = ord("0"), ord("9"), ord("."), ord(":")

_Spans = dict[int, list[tuple[int, int]]]
"""Per text index, the character ranges where a pattern may match."""


def _candidate_windows(batch: CodePointBatch) -> dict[str, _Spans]:
    points = batch.points
    digits = (points >= _ZERO) & (points <= _NINE)
    # "1.2" marks its first digit: an IPv4 address has three of them.
    dotted = np.zeros(len(points), dtype=bool)
    dotted[:-2] = digits[:-2] & (points[1:-1] == _DOT) & digits[2:]
    marked = {"digits": digits, "dotted": dotted, "colons": points == _COLON}
    return {trigger: _hot_spans(batch, marked[trigger], *_WINDOWS[trigger]) for trigger in _WINDOWS}


def _hot_spans(batch: CodePointBatch, marked: np.ndarray, width: int, minimum: int) -> _Spans:
    """Ranges, per text, around every window of `width` characters with at least `minimum` marked ones."""
    size = len(marked)
    width = min(width, size)
    totals = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(marked, out=totals[1:])
    hot = np.flatnonzero(totals[width:] - totals[:-width] >= minimum)
    if not len(hot):
        return {}
    starts = np.maximum(hot - _MARGIN, 0)
    running_ends = np.maximum.accumulate(np.minimum(hot + width + _MARGIN, size))
    opens = np.ones(len(hot), dtype=bool)
    opens[1:] = starts[1:] > running_ends[:-1]
    closes = np.append(np.flatnonzero(opens)[1:] - 1, len(hot) - 1)
    span_starts, span_ends = starts[opens], running_ends[closes]
    first_texts, last_texts = batch.owner(span_starts), batch.owner(span_ends - 1)
    spans: _Spans = {}
    text_starts, text_ends = batch.starts.tolist(), batch.ends.tolist()
    for start, end, first, last in zip(
        span_starts.tolist(), span_ends.tolist(), first_texts.tolist(), last_texts.tolist(), strict=True
    ):
        # A merged range can run over the newline that separates two texts; each gets its part.
        for index in range(first, last + 1):
            local_start = max(start, text_starts[index]) - text_starts[index]
            local_end = min(end, text_ends[index]) - text_starts[index]
            if local_end > local_start:
                spans.setdefault(index, []).append((local_start, local_end))
    return spans


class PiiRedactor:
    """Replaces personal data with typed placeholders and counts the replacements per type."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(PLACEHOLDERS, 0)

    def redact(self, text: str) -> str:
        """The text with every recognised piece of personal data replaced by its placeholder."""
        return self.redact_texts([text])[0]

    def redact_texts(self, texts: list[str]) -> list[str]:
        """redact for many texts; one vectorised pass finds where in them a pattern can match."""
        if not texts:
            return []
        windows = _candidate_windows(CodePointBatch.encode(texts))
        candidates = {index for index, text in enumerate(texts) if "@" in text}
        for spans in windows.values():
            candidates.update(spans)
        result = list(texts)
        for index in sorted(candidates):
            text = texts[index]
            ranges = {trigger: spans.get(index, []) for trigger, spans in windows.items()}
            ranges["@"] = [(0, len(text))] if "@" in text else []
            result[index] = self._redact(text, ranges)
        return result

    def _redact(self, text: str, ranges: dict[str, list[tuple[int, int]]]) -> str:
        found: list[tuple[int, int, str]] = []
        for step in _PASSES:
            for range_start, range_end in ranges[step.trigger]:
                for match in step.pattern.finditer(text, range_start, range_end):
                    end = step.end(match)
                    start = match.start()
                    if end is None or any(
                        start < other_end and other_start < end for other_start, other_end, _ in found
                    ):
                        continue
                    found.append((start, end, step.kind))
        if not found:
            return text
        pieces, position = [], 0
        for start, end, kind in sorted(found):
            pieces += (text[position:start], PLACEHOLDERS[kind])
            position = end
            self.counts[kind] += 1
        pieces.append(text[position:])
        return "".join(pieces)
