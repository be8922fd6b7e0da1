"""Text normalisation: Unicode NFC, whitespace, invisible characters and stray markup.

The rules are deliberately conservative, because the text becomes training data and every
rewrite is a chance to damage it:

* Unicode is brought to NFC, so that "ä" typed as "a" + combining diaeresis and "ä" compare equal
  (exact dedup hashes the normalised text).
* Line breaks are unified to "\\n"; invisible characters that only confuse tokenizers (soft hyphens,
  zero-width spaces, byte-order marks, control characters) are removed; lone surrogates, which are
  not Unicode and which UTF-8 writers (and lingua) reject, become U+FFFD.
* Runs of horizontal whitespace (spaces, tabs, no-break and other Unicode spaces) become one space,
  every line is trimmed, and at most one blank line is kept between paragraphs. Line breaks inside
  paragraphs are kept: hard-wrapped text cannot be re-flowed safely (lists, tables, addresses).
* HTML is stripped only where it is unmistakable: tags from a fixed list of common HTML element
  names (so "<angepasst auf 97 Euro>" in a law survives), comments, and character references that
  end in ";" ("&amp;", "&#228;"); block-level tags become line breaks.
* Markdown is kept, since it is legitimate formatting in training data; only lines that consist of
  nothing but heading hashes (an empty heading, usually debris of a conversion) are dropped.
"""

from __future__ import annotations

import functools
import html
import logging
import re
import unicodedata

import numpy as np

from dataset_builder.quality.codepoints import CodePointBatch

logger = logging.getLogger(__name__)

_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 h6 header hr li "
    "main nav ol p pre section table tbody td tfoot th thead tr ul".split()
)
_INLINE_TAGS = frozenset(
    "a abbr b bdi bdo cite code del dfn em font i ins kbd mark q s samp small span strong sub sup time u var".split()
)
_HTML_TAG = re.compile(
    r"<!--.*?-->|</?(" + "|".join(sorted(_BLOCK_TAGS | _INLINE_TAGS, key=len, reverse=True)) + r")\b[^<>]*>",
    re.IGNORECASE | re.DOTALL,
)
_HTML_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_LINE_BREAK_CHARS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# C0/C1 controls except tab and newline, DEL, soft hyphen, zero-width space, word joiner, BOM.
_INVISIBLE_CHARS = "".join(map(chr, [*range(0x09), *range(0x0E, 0x1C), 0x1F, *range(0x7F, 0x85), *range(0x86, 0xA0)]))
_INVISIBLE_CHARS += "\u00ad\u200b\u2060\ufeff"
_SPACE_CHARS = "\t\u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u202f\u205f\u3000"
_LINE_BREAKS = re.compile(r"\r\n?|[" + re.escape(_LINE_BREAK_CHARS) + "]")
_INVISIBLE = re.compile("[" + re.escape(_INVISIBLE_CHARS) + "]+")
_SPACES = re.compile("[" + re.escape(_SPACE_CHARS) + "]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_EMPTY_HEADING = re.compile(r"^#{1,6}$", re.MULTILINE)

# What a text may need, found for a whole batch at once; most texts need nothing at all.
_NFC, _MARKUP, _SPECIAL, _HEADING, _LAYOUT = 1, 2, 4, 8, 16
_EVERYTHING = _NFC | _MARKUP | _SPECIAL | _HEADING | _LAYOUT
_SPACE, _NEWLINE = 32, 10


@functools.cache
def _flag_table() -> np.ndarray:
    """Per BMP code point, the work its presence calls for; astral code points map to 0xFFFF (NFC check)."""
    table = np.zeros(0x10000, dtype=np.uint8)
    # Text below U+0300 (Latin-1, Latin Extended) is always NFC; above it is_normalized decides.
    table[0x300:] = _NFC
    for char in _LINE_BREAK_CHARS + _INVISIBLE_CHARS + _SPACE_CHARS:
        table[ord(char)] |= _SPECIAL
    table[ord("<")] = table[ord("&")] = _MARKUP
    table[ord("#")] = _HEADING
    table[0xD800:0xE000] |= _SPECIAL
    return table


def _needs(texts: list[str]) -> np.ndarray:
    """Per text, a bit set of the normalisation steps that can change it."""
    batch = CodePointBatch.encode(texts)
    points = batch.points
    flags = _flag_table()[np.minimum(points, 0xFFFF)]
    space, newline = points == _SPACE, points == _NEWLINE
    # Two spaces, a space at either side of a line break, three line breaks in a row.
    layout = space[:-1] & (space[1:] | newline[1:])
    layout |= newline[:-1] & space[1:]
    layout[:-1] |= newline[:-2] & newline[1:-1] & newline[2:]
    flags[:-1] |= layout.view(np.uint8) * np.uint8(_LAYOUT)
    # Every text's segment ends with its separating newline, so none is empty.
    needs = np.bitwise_or.reduceat(flags, batch.starts)
    lengths = batch.lengths
    nonempty = lengths > 0
    edges = np.concatenate((points[batch.starts[nonempty]], points[batch.ends[nonempty] - 1]))
    ragged = np.isin(edges, (_SPACE, _NEWLINE)).reshape(2, -1).any(axis=0)
    needs[np.flatnonzero(nonempty)[ragged]] |= _LAYOUT
    return needs


def _replace_tag(match: re.Match[str]) -> str:
    name = match.group(1)
    return "\n" if name is not None and name.lower() in _BLOCK_TAGS else ""


def _unescape_entity(match: re.Match[str]) -> str:
    return html.unescape(match.group(0))


def _normalize(text: str, needs: int) -> str:
    if needs & _NFC and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if needs & _MARKUP:
        text = _HTML_TAG.sub(_replace_tag, text)
        text = _HTML_ENTITY.sub(_unescape_entity, text)
        # An entity can decode to a no-break space, or to a character that composes with its neighbour.
        text = unicodedata.normalize("NFC", text)
        needs |= _SPECIAL
    if needs & _SPECIAL:
        text = _LINE_BREAKS.sub("\n", text)
        text = _INVISIBLE.sub("", text)
        text = _SPACES.sub(" ", text)
        text = _SURROGATES.sub("\ufffd", text)
    # str.replace runs at memory speed; a regex over every space would not.
    while "  " in text:
        text = text.replace("  ", " ")
    text = text.replace(" \n", "\n").replace("\n ", "\n")
    if needs & _HEADING:
        text = _EMPTY_HEADING.sub("", text)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip(" \n")


def normalize_text(text: str) -> str:
    """Return text in NFC with unified whitespace, no invisible characters and no stray markup."""
    return _normalize(text, _EVERYTHING)


def normalize_texts(texts: list[str]) -> list[str]:
    """normalize_text for many texts; one vectorised pass finds the few that need any work."""
    if not texts:
        return []
    needs = _needs(texts)
    result = list(texts)
    plain = []
    for index in np.flatnonzero(needs).tolist():
        need = int(needs[index])
        if need & _NFC and unicodedata.is_normalized("NFC", texts[index]):
            need &= ~_NFC
        if need and not need & ~(_LAYOUT | _SPECIAL):
            plain.append(index)
        elif need:
            result[index] = _normalize(texts[index], need)
    # Most texts that need work need no more than characters mapped and whitespace collapsed: that
    # is done for all of them at once.
    for index, text in zip(plain, _normalize_plain([texts[index] for index in plain]), strict=True):
        result[index] = text
    return result


_KEEP, _TO_SPACE, _TO_NEWLINE, _DROP, _TO_REPLACEMENT = 0, 1, 2, 3, 4


@functools.cache
def _plain_actions() -> np.ndarray:
    """Per BMP code point, what the special-character step of _normalize does with it."""
    actions = np.full(0x10000, _KEEP, dtype=np.uint8)
    actions[[ord(char) for char in _SPACE_CHARS]] = _TO_SPACE
    actions[[ord(char) for char in _LINE_BREAK_CHARS]] = _TO_NEWLINE
    actions[[ord(char) for char in _INVISIBLE_CHARS]] = _DROP
    actions[0xD800:0xE000] = _TO_REPLACEMENT
    return actions


def _normalize_plain(texts: list[str]) -> list[str]:
    """What _normalize does to texts without markup, headings or non-NFC text, for a batch at once."""
    if not texts:
        return []
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    points = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).copy()
    actions = _plain_actions()[np.minimum(points, 0xFFFF)]
    # CR LF is one line break: its CR goes, and a lone CR becomes a line feed.
    dropped = actions == _DROP
    crlf = (points[:-1] == ord("\r")) & (points[1:] == _NEWLINE)
    # A text's last CR and the next text's LF are no pair.
    last = np.cumsum(lengths)[lengths > 0] - 1
    crlf[last[last < len(crlf)]] = False
    dropped[:-1] |= crlf
    points[actions == _TO_SPACE] = _SPACE
    points[actions == _TO_NEWLINE] = _NEWLINE
    points[actions == _TO_REPLACEMENT] = 0xFFFD
    points, lengths = _compact(points, lengths, ~dropped)
    keep = _collapse_runs(points, lengths)
    points, lengths = _compact(points, lengths, keep)
    joined = points.tobytes().decode("utf-32-le")
    offsets = np.concatenate(([0], np.cumsum(lengths))).tolist()
    return [joined[start:end] for start, end in zip(offsets[:-1], offsets[1:], strict=True)]


def _compact(points: np.ndarray, lengths: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kept code points, and each text's new length."""
    kept_before = np.zeros(len(points) + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    return points[keep], np.diff(kept_before[bounds])


def _collapse_runs(points: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Which code points to keep so that each run of spaces and line breaks becomes what _normalize makes of it."""
    # The kept first characters of a run are rewritten in place.
    size = len(points)
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    boundary = np.zeros(size + 1, dtype=bool)
    boundary[bounds] = True
    white = (points == _SPACE) | (points == _NEWLINE)
    previous_white = np.concatenate(([False], white[:-1]))
    next_white = np.concatenate((white[1:], [False]))
    # Runs never cross from one text into the next.
    starts = np.flatnonzero(white & (~previous_white | boundary[:-1]))
    ends = np.flatnonzero(white & (~next_white | boundary[1:])) + 1
    newline_totals = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(points == _NEWLINE, out=newline_totals[1:])
    newlines = newline_totals[ends] - newline_totals[starts]
    # A run becomes one space, one line break or a blank line; at either end of its text it goes.
    kept = np.where(newlines == 0, 1, np.minimum(newlines, 2))
    kept[boundary[starts] | boundary[ends]] = 0
    keep = ~white
    for offset in (0, 1):
        chosen = kept > offset
        keep[starts[chosen] + offset] = True
        points[starts[chosen] + offset] = np.where(newlines[chosen] == 0, _SPACE, _NEWLINE)
    return keep
