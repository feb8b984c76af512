"""Kosmos-2's grounding markup and box geometry, as small pure functions.

A box is a pair of ``<patch_index_NNNN>`` tokens naming the top-left and the
bottom-right cell of a 32x32 grid laid over the image after it was squashed to
a square, so normalised coordinates map back to the original image by scaling
x by its width and y by its height (no letterbox offset).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from .results import NormalizedBox, PixelBox, Span

GRID = 32
"""Location tokens per side: ``<patch_index_0000>`` .. ``<patch_index_1023>``."""

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


# --- geometry -------------------------------------------------------------


def sort_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """Put the corners in order, whatever order they came in.

    >>> sort_box((0.8, 0.1, 0.2, 0.5))
    (0.2, 0.1, 0.8, 0.5)
    """
    x1, y1, x2, y2 = box
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def normalize_box(box: Sequence[float], width: int, height: int) -> NormalizedBox:
    """Pixel box of a ``width`` x ``height`` image -> sorted fractions clipped to [0, 1].

    >>> normalize_box((150, 50, 0, 100), 300, 200)
    (0.0, 0.25, 0.5, 0.5)
    """
    x1, y1, x2, y2 = sort_box(box)
    clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    return (clip(x1 / width), clip(y1 / height), clip(x2 / width), clip(y2 / height))


def to_pixels(box: NormalizedBox, width: int, height: int) -> PixelBox:
    """Fractions -> integer pixels of the original image, sorted and inside it.

    Halves round up (not to even), so equal fractions give equal pixels.

    >>> to_pixels((0.390625, 0.046875, 0.984375, 0.828125), 640, 480)
    (250, 23, 630, 398)
    """
    x1, y1, x2, y2 = sort_box(box)
    clip_x = lambda v: min(max(math.floor(v * width + 0.5), 0), width)  # noqa: E731
    clip_y = lambda v: min(max(math.floor(v * height + 0.5), 0), height)  # noqa: E731
    return (clip_x(x1), clip_y(y1), clip_x(x2), clip_y(y2))


def box_to_patch_indices(box: NormalizedBox, grid: int = GRID) -> tuple[int, int]:
    """Normalised box -> (top-left cell, bottom-right cell), as the processor does it.

    Same arithmetic as ``coordinate_to_patch_index`` in transformers, but corners
    are sorted and a zero-width box or an edge at 1.0 stays on the grid.

    >>> box_to_patch_indices((0.390625, 0.046875, 0.984375, 0.828125))
    (44, 863)
    """
    x1, y1, x2, y2 = sort_box(box)
    cell = lambda v: min(max(v, 0), grid - 1)  # noqa: E731
    ul_x, ul_y = cell(math.floor(x1 * grid)), cell(math.floor(y1 * grid))
    lr_x = max(cell(math.ceil(x2 * grid - 1)), ul_x)
    lr_y = max(cell(math.ceil(y2 * grid - 1)), ul_y)
    return ul_y * grid + ul_x, lr_y * grid + lr_x


def patch_indices_to_box(ul_index: int, lr_index: int, grid: int = GRID) -> NormalizedBox:
    """(top-left cell, bottom-right cell) -> sorted normalised box.

    Matches ``patch_index_to_coordinate`` in transformers (cell centres when the
    cells differ in both axes, whole cells otherwise), with inverted pairs sorted.

    >>> patch_indices_to_box(44, 863)
    (0.390625, 0.046875, 0.984375, 0.828125)
    >>> patch_indices_to_box(863, 44)
    (0.390625, 0.046875, 0.984375, 0.828125)
    """
    size = 1.0 / grid
    ux, lx = sorted((ul_index % grid, lr_index % grid))
    uy, ly = sorted((ul_index // grid, lr_index // grid))
    if ux == lx or uy == ly:
        return (ux * size, uy * size, lx * size + size, ly * size + size)
    return (ux * size + size / 2, uy * size + size / 2, lx * size + size / 2, ly * size + size / 2)


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
            obj = {"phrase": named, "at": length, "pairs": [], "pending": [], "first": named["first"] if named else index}
            phrase = None
        elif kind == "location" and obj is not None:
            obj["pending"].append(int(piece[len("<patch_index_") : -1]))
            if len(obj["pending"]) == 2:
                obj["pairs"].append(tuple(obj["pending"]))
                obj["pending"] = []
        elif piece == DELIMITER and obj is not None:
            obj["pending"] = []
        elif piece == OBJECT_CLOSE and obj is not None:
            entities.append(_close(obj, index, complete=not obj["pending"]))
            obj = None
    if obj is not None:
        entities.append(_close(obj, len(pieces) - 1, complete=False))
    raw_text = "".join(chunks)
    return _strip(raw_text, entities, spans, grid)


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
        boxes = tuple(patch_indices_to_box(a % grid**2, b % grid**2, grid) for a, b in e["pairs"])
        out.append(ParsedEntity(name, span, boxes, e["complete"], (e["first"], e["last"])))
    piece_spans = tuple(None if s is None else (shift(s[0]), shift(s[1])) for s in spans)
    return ParsedText(clean, tuple(out), piece_spans)
