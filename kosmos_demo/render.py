"""Drawing on images: entity boxes and labels, attention heatmaps, heatmap grids.

Each visual is one small class with its style in the constructor and one pure
``annotate`` method that returns a new RGB image; inputs are never modified.
:func:`entity_color` and :func:`entity_label` are the single source of truth
for how an entity looks, in drawn images and in the app's caption highlighting.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .messages import quote_value
from .results import Entity, PixelBox

__all__ = [
    "PALETTE",
    "BoxAnnotator",
    "HeatmapAnnotator",
    "LabelAnnotator",
    "RegionAnnotator",
    "annotate_entities",
    "entity_color",
    "entity_label",
    "heatmap_grid",
]

PALETTE: tuple[str, ...] = (
    # matplotlib's tab10 without its grey, in its usual order ...
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#bcbd22", "#17becf",
    # ... then colours from tab20/tab20b/tab20c/Paired/Set1/Set2/Dark2/Accent/Set3,
    # each the one farthest (CIEDE2000) from all chosen so far; every pair
    # differs by at least 11 dE00, so early entities get the most distinct ones.
    "#393b79", "#ff9896", "#8c6d31", "#fdbf6f", "#7b4173",
    "#66c2a5", "#f0027f", "#ffff99", "#637939", "#bf5b17",
    "#d6616b", "#8ca252", "#6baed6", "#ffd92f", "#b3de69",
    "#74c476", "#1b9e77", "#bd9e39", "#6a3d9a", "#fc8d62",
    "#6b6ecf",
)  # fmt: skip
"""Entity colours, "#rrggbb"; entity ``i`` gets ``PALETTE[i % len(PALETTE)]``."""

_ELLIPSIS = "\u2026"


def entity_color(index: int, palette: Sequence[str] = PALETTE) -> str:
    """Colour of the entity at ``index`` (its position, not its phrase)."""
    return palette[index % len(palette)]


def _check_palette(palette: Sequence[str]) -> tuple[str, ...]:
    colors = tuple(palette)
    if not colors or not all(isinstance(c, str) and len(c) == 7 and c[0] == "#" for c in colors):
        raise ValueError("palette must be a non-empty sequence of '#rrggbb' colours")
    int("".join(c[1:] for c in colors), 16)  # raises ValueError on a non-hex digit
    return colors


def line_thickness(size: tuple[int, int]) -> int:
    """Outline width that scales with an image of ``size``: ``max(1, round(min(w, h) / 200))``."""
    return max(1, round(min(size) / 200))


def entity_label(entities: Sequence[Entity], index: int) -> str:
    """Display label of ``entities[index]``, unique within ``entities``.

    The phrase with runs of whitespace collapsed; a later entity with the same
    phrase gets " (2)", " (3)", ...; an empty phrase reads "region <index + 1>".
    """
    n = len(entities)
    if not -n <= index < n:
        raise IndexError(f"entity index {index} out of range for {n} entities")
    return _entity_labels(entities)[index % n]


def _entity_labels(entities: Sequence[Entity]) -> list[str]:
    used: set[str] = set()
    counts: dict[str, int] = {}
    labels = []
    for i, entity in enumerate(entities):
        base = " ".join(entity.phrase.split()) or f"region {i + 1}"
        count = counts.get(base, 0) + 1
        label = base if count == 1 else f"{base} ({count})"
        while label in used:  # e.g. a phrase that is literally "dog (2)"
            count += 1
            label = f"{base} ({count})"
        counts[base] = count
        used.add(label)
        labels.append(label)
    return labels


# --------------------------------------------------------------------------- colour


def _hex_to_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _relative_luminance(color: str) -> float:
    """WCAG 2 relative luminance of "#rrggbb"."""
    channels = []
    for value in _hex_to_rgb(color):
        c = value / 255
        channels.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    r, g, b = channels
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _text_color(background: str) -> str:
    """Black or white, whichever has the higher WCAG contrast on ``background``."""
    lum = _relative_luminance(background)
    on_black = (lum + 0.05) / 0.05
    on_white = 1.05 / (lum + 0.05)
    return "#000000" if on_black >= on_white else "#ffffff"


# --------------------------------------------------------------------------- images and fonts


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB copy; transparent pixels are composited over white."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@functools.lru_cache(maxsize=1)
def _font_path() -> str | None:
    import matplotlib

    bundled = Path(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    if bundled.is_file():
        return str(bundled)
    try:
        from matplotlib import font_manager

        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:  # pragma: no cover - broken matplotlib install
        return None


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = _font_path()
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:  # pragma: no cover
            pass
    return ImageFont.load_default(size)  # pragma: no cover


class _TextBox(NamedTuple):
    width: int
    height: int
    offset: tuple[int, int]
    """Where to put the text origin (anchor "la") relative to the box's corner."""


def _text_box(text: str, font) -> _TextBox:
    """Size of ``text``'s line box: advance or ink, whichever is wider; ascent + descent or ink, whichever is taller."""
    ascent, descent = font.getmetrics()
    left, top, right, bottom = font.getbbox(text) if text else (0, 0, 0, 0)
    dx, dy = -min(0, left), -min(0, top)
    width = math.ceil(max(font.getlength(text), right) + dx)
    height = math.ceil(max(ascent + descent, bottom) + dy)
    return _TextBox(width, height, (dx, dy))


def _fit_text(text: str, font, max_width: int) -> str:
    """``text``, or its longest prefix plus an ellipsis, no wider than ``max_width``; may be ""."""
    if _text_box(text, font).width <= max_width:
        return text
    lo, hi = 0, len(text)  # prefix text[:lo] + ellipsis fits; text[:hi] + ellipsis may not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _text_box(text[:mid].rstrip() + _ELLIPSIS, font).width <= max_width:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0 and _text_box(_ELLIPSIS, font).width > max_width:
        return ""
    return text[:lo].rstrip() + _ELLIPSIS


def _clip_box(box: PixelBox, size: tuple[int, int]) -> PixelBox:
    """``box`` with inclusive corners inside an image of ``size``."""
    width, height = size
    x1, y1, x2, y2 = box
    x1, x2 = sorted((min(max(int(x1), 0), width - 1), min(max(int(x2), 0), width - 1)))
    y1, y2 = sorted((min(max(int(y1), 0), height - 1), min(max(int(y2), 0), height - 1)))
    return x1, y1, x2, y2


# --------------------------------------------------------------------------- entities


class BoxAnnotator:
    """Draws every box of every entity as an outline in the entity's colour.

    ``thickness=None`` scales with the image (:func:`line_thickness`). Lines
    grow inwards from the box edge, so a box never paints outside itself.
    """

    def __init__(self, thickness: int | None = None, palette: Sequence[str] = PALETTE):
        if thickness is not None and thickness < 1:
            raise ValueError(f"thickness must be >= 1, got {thickness}")
        self.thickness = thickness
        self.palette = _check_palette(palette)

    def annotate(self, image: Image.Image, entities: Sequence[Entity]) -> Image.Image:
        out = _to_rgb(image)
        thickness = self.thickness or line_thickness(out.size)
        draw = ImageDraw.Draw(out)
        for index, entity in enumerate(entities):
            for box in entity.boxes:
                draw.rectangle(_clip_box(box, out.size), outline=entity_color(index, self.palette), width=thickness)
        return out


class _Label(NamedTuple):
    rect: tuple[int, int, int, int]
    """(left, top, right, bottom), right and bottom exclusive, inside the image."""
    text: str
    fill: str
    text_fill: str


def _label_rect(box: PixelBox, label_size: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where a label of ``label_size`` goes for ``box``: (left, top, right, bottom), exclusive.

    Above the box's top-left corner; if there is no room above, inside the box
    at its top, or below it when the box is shorter than the label; then shifted
    (and at worst cut) to lie fully inside the image.
    """
    width, height = image_size
    x1, y1, x2, y2 = _clip_box(box, image_size)
    label_w, label_h = min(label_size[0], width), min(label_size[1], height)
    left = x1
    if y1 - label_h >= 0:
        top = y1 - label_h
    elif y2 - y1 + 1 >= label_h:
        top = y1
    else:
        top = y2 + 1
    left = min(max(left, 0), width - label_w)
    top = min(max(top, 0), height - label_h)
    return left, top, left + label_w, top + label_h


class LabelAnnotator:
    """Draws each entity's label, on its colour, at the top-left of each of its boxes.

    ``font_size=None`` scales with the image (``min(w, h) / 30``, kept within
    8..128 px); ``padding=None`` is a quarter of the font size. The text is
    black or white by WCAG contrast, and is cut with an ellipsis to fit the
    image's width.
    """

    def __init__(self, font_size: int | None = None, padding: int | None = None, palette: Sequence[str] = PALETTE):
        if font_size is not None and font_size < 1:
            raise ValueError(f"font_size must be >= 1, got {font_size}")
        if padding is not None and padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.font_size = font_size
        self.padding = padding
        self.palette = _check_palette(palette)

    def _font_and_padding(self, image_size: tuple[int, int]):
        size = self.font_size or min(128, max(8, round(min(image_size) / 30)))
        padding = self.padding if self.padding is not None else max(1, round(size / 4))
        return _font(size), padding

    def _layout(self, image_size: tuple[int, int], entities: Sequence[Entity]) -> list[_Label]:
        font, padding = self._font_and_padding(image_size)
        labels = []
        for index, (entity, text) in enumerate(zip(entities, _entity_labels(entities))):
            text = _fit_text(text, font, image_size[0] - 2 * padding)
            box = _text_box(text, font)
            size = (box.width + 2 * padding, box.height + 2 * padding)
            fill = entity_color(index, self.palette)
            for pixel_box in entity.boxes:
                rect = _label_rect(pixel_box, size, image_size)
                labels.append(_Label(rect, text, fill, _text_color(fill)))
        return labels

    def annotate(self, image: Image.Image, entities: Sequence[Entity]) -> Image.Image:
        out = _to_rgb(image)
        font, padding = self._font_and_padding(out.size)
        for label in self._layout(out.size, entities):
            left, top, right, bottom = label.rect
            # Drawn on its own tile so the text can never spill past the label.
            tile = Image.new("RGB", (right - left, bottom - top), label.fill)
            dx, dy = _text_box(label.text, font).offset
            ImageDraw.Draw(tile).text((padding + dx, padding + dy), label.text, font=font, fill=label.text_fill)
            out.paste(tile, (left, top))
        return out


def annotate_entities(image: Image.Image, entities: Sequence[Entity]) -> Image.Image:
    """Boxes, then labels on top, in the default styles."""
    return LabelAnnotator().annotate(BoxAnnotator().annotate(image, entities), entities)


class RegionAnnotator:
    """Draws a box the user is marking: the rest of the image dimmed, the box outlined; a lone corner as a cross.

    The outline has the colour the prompt's own entity gets in the results
    (it is always the first entity: ``palette[0]``) and :class:`BoxAnnotator`'s
    thickness. Coordinates are pixels of the image given to :meth:`annotate`.
    """

    def __init__(self, dim: float = 0.43, palette: Sequence[str] = PALETTE):
        if not 0.0 <= dim <= 1.0:
            raise ValueError(f"dim must lie in [0, 1], got {dim}")
        self.dim = dim
        self.palette = _check_palette(palette)

    def annotate(self, image: Image.Image, box: Sequence[float] | None = None,
                 corner: Sequence[float] | None = None) -> Image.Image:
        out = _to_rgb(image)
        color = entity_color(0, self.palette)
        width = line_thickness(out.size)
        if box is not None:
            x1, y1, x2, y2 = _clip_box(tuple(round(v) for v in box), out.size)
            shade = Image.new("L", out.size, round(255 * self.dim))
            ImageDraw.Draw(shade).rectangle((x1, y1, x2, y2), fill=0)
            out = Image.composite(Image.new("RGB", out.size, "black"), out, shade)
            ImageDraw.Draw(out).rectangle((x1, y1, x2, y2), outline=color, width=width)
        if corner is not None:
            x, y = corner
            reach = max(6, width * 4)
            draw = ImageDraw.Draw(out)
            for fill, line in (("white", width + 2), (color, width)):
                draw.line((x - reach, y, x + reach, y), fill=fill, width=line)
                draw.line((x, y - reach, x, y + reach), fill=fill, width=line)
        return out


# --------------------------------------------------------------------------- heatmaps


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """``heatmap`` as float32 after checking it is 2-D, finite and within [0, 1]."""
    array = np.asarray(heatmap)
    if array.dtype.kind not in "fiub":
        raise ValueError(f"heatmap must hold real numbers, got dtype {array.dtype}")
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {array.shape}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError("heatmap contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(f"heatmap values must lie in [0, 1], got min {low:g}, max {high:g}")
    return np.clip(array, 0.0, 1.0)


class HeatmapAnnotator:
    """Blends a colour-mapped heatmap over an image, pytorch-grad-cam style.

    The map is stretched to the image's width and height separately (the model
    sees the image squashed to a square, so cell (y, x) covers the same
    fraction of the original) with bilinear interpolation. With ``weighted``
    False every pixel gets ``alpha`` of the colour map; with True, ``alpha``
    times the map's value, so cold regions keep the photo untouched.
    """

    def __init__(self, colormap: str = "jet", alpha: float = 0.5, weighted: bool = False):
        import matplotlib

        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        try:
            cmap = matplotlib.colormaps[colormap]
        except KeyError:
            raise ValueError(f"unknown matplotlib colormap {quote_value(colormap)}") from None
        self.colormap = colormap
        self.alpha = alpha
        self.weighted = weighted
        lut = cmap(np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]
        self._palette = lut.astype(np.uint8).ravel().tolist()

    def annotate(self, image: Image.Image, heatmap: np.ndarray) -> Image.Image:
        values = _check_heatmap(heatmap)
        out = _to_rgb(image)
        levels = (
            Image.fromarray(values)
            .resize(out.size, Image.Resampling.BILINEAR)
            .point(lambda v: v * 255 + 0.5)  # F -> L truncates; +0.5 rounds
            .convert("L")
        )
        colored = levels.copy()
        colored.putpalette(self._palette)
        colored = colored.convert("RGB")
        if self.weighted:
            mask = levels.point([round(v * self.alpha) for v in range(256)])
            return Image.composite(colored, out, mask)
        return Image.blend(out, colored, self.alpha)


def visible_token(text: str, word_spaces: bool = False) -> str:
    """``text`` with its whitespace made visible: space "·", newline "↵", tab "→", empty "∅".

    ``word_spaces=True`` keeps the spaces of a token that has something else to show (" the"
    reads as a word in a strip of tokens); a token of spaces alone still shows its dots.

    >>> visible_token(" the"), visible_token(" the", word_spaces=True), visible_token(" ", word_spaces=True)
    ('·the', ' the', '·')
    """
    if not text:
        return "\u2205"
    keep_spaces = word_spaces and text.strip(" ") != ""
    shown = []
    for ch in text:
        if ch == " ":
            shown.append(" " if keep_spaces else "\u00b7")
        elif ch == "\n":
            shown.append("\u21b5")
        elif ch == "\t":
            shown.append("\u2192")
        elif ch.isspace() or not ch.isprintable():
            shown.append(ascii(ch)[1:-1])
        else:
            shown.append(ch)
    return "".join(shown)


def heatmap_grid(
    image: Image.Image,
    maps: np.ndarray,
    labels: Sequence[str],
    shares: Sequence[float] | None = None,
    columns: int = 8,
    cell: int = 160,
    *,
    annotator: HeatmapAnnotator | None = None,
) -> Image.Image:
    """All token heatmaps over thumbnails of ``image``, ``columns`` per row.

    Each cell holds the overlay on a thumbnail that fits in ``cell`` x ``cell``
    px (aspect ratio kept; rows are only as tall as the thumbnail) and, under it, the token text with whitespace made visible
    ("·" for a space) and, with ``shares``, the share of attention on the image
    ("img 42%"). Overlays use ``annotator`` (default ``HeatmapAnnotator()``).
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be a (tokens, rows, columns) array, got shape {maps.shape}")
    count = maps.shape[0]
    if count == 0:
        raise ValueError("heatmap_grid needs at least one token heatmap, got 0")
    if len(labels) != count:
        raise ValueError(f"got {count} heatmaps but {len(labels)} labels")
    if shares is not None and len(shares) != count:
        raise ValueError(f"got {count} heatmaps but {len(shares)} shares")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    if cell < 16:
        raise ValueError(f"cell must be >= 16 px, got {cell}")
    annotator = annotator or HeatmapAnnotator()

    source = _to_rgb(image)
    scale = min(cell / source.width, cell / source.height)
    thumb_size = (max(1, round(source.width * scale)), max(1, round(source.height * scale)))
    thumb = source.resize(thumb_size, Image.Resampling.BILINEAR, reducing_gap=3.0)

    font = _font(min(32, max(8, round(cell / 12))))
    line = _text_box("Ag", font).height
    lines = 1 if shares is None else 2
    gap = max(2, cell // 32)
    caption = lines * line + gap
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    grid = Image.new(
        "RGB",
        (columns * cell + (columns + 1) * gap, rows * (thumb.height + caption) + (rows + 1) * gap),
        "white",
    )
    draw = ImageDraw.Draw(grid)
    for k in range(count):
        row, col = divmod(k, columns)
        left = gap + col * (cell + gap)
        top = gap + row * (thumb.height + caption + gap)
        overlay = annotator.annotate(thumb, maps[k])
        grid.paste(overlay, (left + (cell - thumb.width) // 2, top))
        texts = [visible_token(str(labels[k]))]
        if shares is not None:
            texts.append(f"img {float(shares[k]) * 100:.0f}%")
        for j, text in enumerate(texts):
            text = _fit_text(text, font, cell)
            box = _text_box(text, font)
            x = left + (cell - box.width) // 2 + box.offset[0]
            y = top + thumb.height + gap // 2 + j * line + box.offset[1]
            draw.text((x, y), text, font=font, fill="black")
    return grid
