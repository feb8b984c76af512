"""Kosmos-2's grounding markup, as small pure functions: location tokens, tags, the grounded-text parser.

A box is a pair of ``<patch_index_NNNN>`` tokens naming the top-left and the
bottom-right cell of a 32x32 grid (the cell maths is in :mod:`kosmos_demo.geometry`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from .geometry import GRID, box_to_patch_indices, patch_indices_to_box
from .results import NormalizedBox, Span

PHRASE_OPEN, PHRASE_CLOSE = "<phrase>", "</phrase>"
OBJECT_OPEN, OBJECT_CLOSE = "<object>", "</object>"
DELIMITER = "</delimiter_of_multi_objects/>"
GROUNDING = "<grounding>"
TAG_TOKENS = (
    "</doc>", "<image>", "</image>", "</chunk>", "</line>",
    PHRASE_OPEN, PHRASE_CLOSE, OBJECT_OPEN, OBJECT_CLOSE, DELIMITER, GROUNDING,
)
"""The tag tokens Kosmos2Processor adds to the tokenizer, in its order."""

_LOCATION = re.compile(r"<patch_index_(\d{4})>")
_MARKUP = re.compile("|".join(re.escape(t) for t in TAG_TOKENS) + r"|<patch_index_\d{4}>")

UNNAMED = ""
"""Phrase of an object that the model emitted without a ``<phrase>`` before it."""


# --- markup from geometry ---------------------------------------------------


def location_tokens(box: NormalizedBox, grid: int = GRID) -> str:
    """Normalised box -> the two location tokens that name it in a prompt.

    >>> location_tokens((0.390625, 0.046875, 0.984375, 0.828125))
    '<patch_index_0044><patch_index_0863>'
    """
    ul, lr = box_to_patch_indices(box, grid)
    return f"<patch_index_{ul:04d}><patch_index_{lr:04d}>"


# --- parsing --------------------------------------------------------------


@dataclass(frozen=True)
class ParsedEntity:
    """An entity as read from markup: boxes still normalised."""

    phrase: str
    span: Span
    boxes: tuple[NormalizedBox, ...]
    complete: bool
    piece_range: tuple[int, int]
    """Pieces [first, last] from the ``<phrase>`` (or ``<object>``) to the closing tag."""


@dataclass(frozen=True)
class ParsedText:
    text: str
    entities: tuple[ParsedEntity, ...]
    piece_spans: tuple[Span | None, ...]
    """Per input piece, the characters of ``text`` it produced; None for markup."""


def split_markup(raw: str) -> list[tuple[str, str]]:
    """Cut a raw string into ("text" | "tag" | "location", piece) runs.

    Only the tokens Kosmos-2 knows count as markup; any other ``<...>`` is text.

    >>> split_markup("<phrase> a cat</phrase><object><patch_index_0001><patch_index_0002></object><b>")
    [('tag', '<phrase>'), ('text', ' a cat'), ('tag', '</phrase>'), ('tag', '<object>'), ('location', '<patch_index_0001>'), ('location', '<patch_index_0002>'), ('tag', '</object>'), ('text', '<b>')]
    """
    pieces, last = [], 0
    for match in _MARKUP.finditer(raw):
        if match.start() > last:
            pieces.append(("text", raw[last : match.start()]))
        kind = "location" if match.group().startswith("<patch_index_") else "tag"
        pieces.append((kind, match.group()))
        last = match.end()
    if last < len(raw):
        pieces.append(("text", raw[last:]))
    return pieces


def parse_grounded(pieces: Sequence[tuple[str, str]], grid: int = GRID) -> ParsedText:
    """Read grounded markup into clean text, entities and per-piece character spans.

    ``pieces`` are (kind, text) with kind "text", "tag" or "location", e.g. one
    per token. Unlike ``post_process_generation`` this keeps objects without a
    phrase (phrase ``""``, empty span), keeps a box list cut off inside
    ``<object>`` (``complete=False``), sorts inverted corners, and never raises.
    An object is complete only if it holds at least one box and every delimiter
    sits between two whole pairs; a pair with an index outside the grid (e.g.
    ``<patch_index_1500>``) is dropped and marks its object incomplete.
    Leading and trailing whitespace of the text is dropped, as the processor does.

    >>> raw = ("<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044>"
    ...        "<patch_index_0863></object> warming himself by<phrase> a fire</phrase><object>"
    ...        "<patch_index_0005><patch_index_0911></object>.")
    >>> parsed = parse_grounded(split_markup(raw))
    >>> parsed.text
    'An image of a snowman warming himself by a fire.'
    >>> [(e.phrase, e.span, e.boxes) for e in parsed.entities]  # doctest: +NORMALIZE_WHITESPACE
    [('a snowman', (12, 21), ((0.390625, 0.046875, 0.984375, 0.828125),)),
     ('a fire', (41, 47), ((0.171875, 0.015625, 0.484375, 0.890625),))]
    """
    chunks: list[str] = []
    length = 0
    spans: list[Span | None] = []
    entities: list[dict] = []
    phrase: dict | None = None  # open or just-closed phrase awaiting its object
    obj: dict | None = None
    for index, (kind, piece) in enumerate(pieces):
        if kind == "text" or (kind not in ("tag", "location")):
            if piece.strip() and phrase is not None and phrase.get("end") is not None:
                phrase = None  # words between </phrase> and <object>: the phrase has no box
            spans.append((length, length + len(piece)))
            chunks.append(piece)
            length += len(piece)
            continue
        spans.append(None)
        if piece == PHRASE_OPEN:
            phrase = {"start": length, "end": None, "first": index}
        elif piece == PHRASE_CLOSE and phrase is not None and phrase["end"] is None:
            phrase["end"] = length
        elif piece == OBJECT_OPEN:
            if obj is not None:
                entities.append(_close(obj, index - 1, complete=False))
            named = phrase if phrase is not None and phrase["end"] is not None else None
            obj = {"phrase": named, "at": length, "pairs": [], "pending": [], "run": 0, "broken": False,
                   "first": named["first"] if named else index}
            phrase = None
        elif kind == "location" and obj is not None:
            obj["pending"].append(_location_index(piece, grid))
            if len(obj["pending"]) == 2:
                if None in obj["pending"]:
                    obj["broken"] = True  # never a box guessed from an index off the grid
                else:
                    obj["pairs"].append(tuple(obj["pending"]))
                obj["pending"], obj["run"] = [], obj["run"] + 1
        elif piece == DELIMITER and obj is not None:
            obj["broken"] |= bool(obj["pending"]) or obj["run"] == 0  # a lone corner or an empty slot
            obj["pending"], obj["run"] = [], 0
        elif piece == OBJECT_CLOSE and obj is not None:
            whole = bool(obj["pairs"]) and obj["run"] > 0 and not obj["pending"] and not obj["broken"]
            entities.append(_close(obj, index, complete=whole))
            obj = None
    if obj is not None:
        entities.append(_close(obj, len(pieces) - 1, complete=False))
    raw_text = "".join(chunks)
    return _strip(raw_text, entities, spans, grid)


def _location_index(piece: str, grid: int) -> int | None:
    """The cell a location piece names, or None when it is malformed or off the ``grid``."""
    match = _LOCATION.fullmatch(piece)
    return int(match.group(1)) if match and int(match.group(1)) < grid * grid else None


def _close(obj: dict, last: int, complete: bool) -> dict:
    return {**obj, "last": last, "complete": complete}


def _strip(text: str, entities: list[dict], spans: list[Span | None], grid: int) -> ParsedText:
    """Drop the text's outer whitespace and each phrase's own, shifting spans."""
    lead = len(text) - len(text.lstrip())
    clean = text.strip()
    shift = lambda v: min(max(v - lead, 0), len(clean))  # noqa: E731
    out = []
    for e in entities:
        if e["phrase"] is not None:
            start, end = e["phrase"]["start"], e["phrase"]["end"]
            words = text[start:end]
            start += len(words) - len(words.lstrip())
            end -= len(words) - len(words.rstrip())
            name, span = text[start:end] if end > start else "", (shift(start), shift(max(start, end)))
        else:
            name, span = UNNAMED, (shift(e["at"]), shift(e["at"]))
        boxes = tuple(patch_indices_to_box(a, b, grid) for a, b in e["pairs"])
        out.append(ParsedEntity(name, span, boxes, e["complete"], (e["first"], e["last"])))
    piece_spans = tuple(None if s is None else (shift(s[0]), shift(s[1])) for s in spans)
    return ParsedText(clean, tuple(out), piece_spans)
