"""Plain data that flows out of the engine: no tensors, no UI types.

Everything here converts to JSON with :meth:`Result.to_json`, which is the
schema shared by the CLI (JSON Lines), the app's entity download and its API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PixelBox = tuple[int, int, int, int]
"""(x1, y1, x2, y2) in pixels of the ORIGINAL image, x1 <= x2, y1 <= y2."""

NormalizedBox = tuple[float, float, float, float]
"""(x1, y1, x2, y2) as fractions of the image's width and height, in [0, 1]."""

Span = tuple[int, int]
"""[start, end) character offsets into :attr:`Result.text`."""


@dataclass(frozen=True)
class Entity:
    """A grounded phrase and the boxes the model (or the user) tied to it."""

    phrase: str
    span: Span
    boxes: tuple[PixelBox, ...]
    boxes_normalized: tuple[NormalizedBox, ...]
    from_prompt: bool = False
    """True when the entity was written into the prompt (region tasks)."""
    complete: bool = True
    """False when generation stopped inside ``<object>``: boxes are the pairs read so far."""

    def to_json(self) -> dict:
        return {
            "phrase": self.phrase,
            "span": list(self.span),
            "boxes": [list(b) for b in self.boxes],
            "boxes_normalized": [[round(v, 6) for v in b] for b in self.boxes_normalized],
            "from_prompt": self.from_prompt,
            "complete": self.complete,
        }


@dataclass(frozen=True)
class Token:
    """One token of the text after ``</image>``: prompt and generated alike."""

    text: str
    """Its raw text, tags and location tokens included."""
    kind: str
    """"text", "tag" (``<phrase>``, ``<object>``, ...) or "location" (``<patch_index_NNNN>``)."""
    span: Span | None
    """Where its visible characters sit in :attr:`Result.text`; None for tags and locations."""
    generated: bool
    heatmap_index: int | None = None
    """Row of :attr:`Heatmaps.maps` for generated tokens when heatmaps were asked for."""

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "kind": self.kind,
            "span": list(self.span) if self.span is not None else None,
            "generated": self.generated,
            "heatmap_index": self.heatmap_index,
        }


@dataclass(frozen=True)
class Heatmaps:
    """Per generated token attention over the image, on the vision patch grid.

    ``maps[k]`` is a (grid, grid) float32 array in [0, 1] (scaled by its maximum)
    for the k-th generated token; ``image_share[k]`` is the fraction of that
    token's decoder attention (heads and layers averaged) that went to the image
    slots. Row-major: ``maps[k][y, x]`` covers the patch at column x, row y.
    """

    maps: np.ndarray
    image_share: np.ndarray

    def __len__(self) -> int:
        return int(self.maps.shape[0])


@dataclass(frozen=True)
class Result:
    """What one image and one request produced."""

    image_size: tuple[int, int]
    """(width, height) of the original image, after EXIF orientation."""
    task: str
    prompt: str
    """The exact prompt text sent to the processor."""
    text: str
    """The clean caption: prompt words and generated words, no tags."""
    raw_text: str
    """Everything after ``</image>``, tags and location tokens included."""
    entities: tuple[Entity, ...]
    tokens: tuple[Token, ...]
    heatmaps: Heatmaps | None = None
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: preprocess, generate, heatmaps, postprocess, total."""

    @property
    def generated_tokens(self) -> tuple[Token, ...]:
        return tuple(t for t in self.tokens if t.generated)

    def to_json(self) -> dict:
        width, height = self.image_size
        out = {
            "width": width,
            "height": height,
            "task": self.task,
            "prompt": self.prompt,
            "text": self.text,
            "raw_text": self.raw_text,
            "entities": [e.to_json() for e in self.entities],
            "tokens": [t.to_json() for t in self.tokens],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }
        if self.heatmaps is not None:
            out["image_share"] = [round(float(s), 4) for s in self.heatmaps.image_share]
        return out
