"""Box geometry in one place: pixel, normalised and grid-cell coordinates, as pure functions.

Three coordinate systems meet here:

- pixels of the original image, ``(x1, y1, x2, y2)``;
- normalised fractions of it in [0, 1]: Kosmos-2 squashes the image to a
  square, so a fraction maps back by scaling x by the width and y by the
  height (no letterbox offset);
- cells of the 32x32 grid its location tokens name (``<patch_index_0000>`` is
  the top-left cell, ``<patch_index_1023>`` the bottom-right; index = row * 32 + column).

Everything that moves a box between them (prompts, parsing, the page's
preview and clicks, rendering, the toy's scores) calls these.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .results import NormalizedBox, PixelBox

GRID = 32
"""Location tokens per side: ``<patch_index_0000>`` .. ``<patch_index_1023>``."""


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


def clip_box(box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """A pixel box sorted and cut to an image of ``size``; None when less than a pixel of it is left.

    >>> clip_box((-20, 50, 150, 10), (100, 80))
    (0.0, 10.0, 100.0, 50.0)
    >>> clip_box((120, 0, 200, 80), (100, 80)) is None
    True
    """
    x1, y1, x2, y2 = sort_box(tuple(float(v) for v in box))
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(size[0])), min(y2, float(size[1]))
    return (x1, y1, x2, y2) if x2 - x1 >= 1 and y2 - y1 >= 1 else None


def scale_box(box: Sequence[float], from_size: tuple[int, int], to_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A pixel box of an image of ``from_size`` -> the same box on ``to_size``, inside it, at least 1 px."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    x1, x2 = sorted((box[0] * sx, box[2] * sx))
    y1, y2 = sorted((box[1] * sy, box[3] * sy))
    x1, y1 = min(max(int(round(x1)), 0), to_size[0] - 1), min(max(int(round(y1)), 0), to_size[1] - 1)
    x2, y2 = min(max(int(round(x2)), x1 + 1), to_size[0]), min(max(int(round(y2)), y1 + 1), to_size[1])
    return x1, y1, x2, y2


def clamp_point(x: float, y: float, size: tuple[int, int]) -> tuple[float, float]:
    """A click position kept inside an image of ``size``."""
    return min(max(float(x), 0.0), float(size[0])), min(max(float(y), 0.0), float(size[1]))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x1, y1, x2, y2) boxes.

    >>> round(box_iou((0, 0, 2, 2), (1, 1, 3, 3)), 4)
    0.1429
    """
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def cell_overlap(box: Sequence[float], side: int) -> np.ndarray:
    """(side, side): the fraction of each grid cell covered by a normalised box."""
    edges = np.arange(side + 1) / side
    ox = np.clip(np.minimum(edges[1:], box[2]) - np.maximum(edges[:-1], box[0]), 0, None) * side
    oy = np.clip(np.minimum(edges[1:], box[3]) - np.maximum(edges[:-1], box[1]), 0, None) * side
    return oy[:, None] * ox[None, :]
