"""Which checkpoint is being served: the real Kosmos-2, the shapes toy or the tiny random one.

The engine loads any ``save_pretrained`` folder the same way; this module only
names the project's own checkpoints (``--model toy``), tells them apart by the
marker each one writes into its config, and says what a UI must show with
each: a banner, and examples the checkpoint can make sense of. Nothing here
imports torch, transformers or gradio.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import DEFAULT_MODEL

ASSETS = Path(__file__).resolve().parent / "assets"
"""The files the package ships: example photos, the toy's shape images and its checkpoint."""

MODEL_ENV = "KOSMOS_MODEL"

TINY_MARKER = "kosmos_demo_tiny_random"
"""Config key (True) of checkpoints written by ``tiny-model``: random weights."""

TOY_MARKER = "kosmos_demo_toy"
"""Config key (True) of the shapes toy (``toy`` package)."""

SHORTCUTS = {"toy": ASSETS / "toy-model"}
"""Names ``--model`` accepts besides hub ids and folders."""

ExampleRow = tuple[str, str, str, str]
"""(image path, task, text, box) as the page's examples list them."""


def resolve_source(model: str | None = None) -> str:
    """--model, else $KOSMOS_MODEL, else the hub id; shortcuts like 'toy' become their folder."""
    source = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    return str(SHORTCUTS.get(source, source))


@dataclass(frozen=True)
class CheckpointKind:
    """What a UI needs to know about the served checkpoint."""

    name: str
    """"real", "toy" or "tiny"."""
    note: str | None
    """A sentence a UI must show (the output is not the real model's), or None."""
    examples: tuple[ExampleRow, ...]

    @property
    def is_random(self) -> bool:
        return self.name == "tiny"


_PHOTOS = ASSETS / "examples"
_SHAPES = ASSETS / "toy-examples"

REAL = CheckpointKind("real", None, (
    (str(_PHOTOS / "rocket.jpg"), "region", "", "295,125,345,405"),
    (str(_PHOTOS / "astronaut.jpg"), "brief", "", ""),
    (str(_PHOTOS / "chelsea.jpg"), "phrase", "a cat", ""),
    (str(_PHOTOS / "coffee.jpg"), "vqa", "What is in the cup?", ""),
    (str(_PHOTOS / "astronaut.jpg"), "region-vqa", "What is [this object] next to her?", "350,0,470,285"),
    (str(_PHOTOS / "coffee.jpg"), "detailed", "", ""),
))

TOY = CheckpointKind(
    "toy",
    "Toy model: a tiny Kosmos-2 trained by this project on generated coloured shapes. "
    "It only knows squares, circles and triangles; try the shape examples.",
    tuple((str(path), "brief", "", "") for path in sorted(_SHAPES.glob("*.png")))
    + ((str(_SHAPES / "red-circle.png"), "phrase", "the red circle", ""),),
)

TINY = CheckpointKind(
    "tiny",
    "Preview: this checkpoint has random weights (built by `python -m kosmos_demo tiny-model`), "
    "so captions, boxes and heatmaps are noise. Run with the real model for meaningful output.",
    REAL.examples,
)


def kind_of(config) -> CheckpointKind:
    """The kind of a loaded model's config (anything with attributes, e.g. ``model.config``)."""
    if getattr(config, TINY_MARKER, False):
        return TINY
    if getattr(config, TOY_MARKER, False):
        return TOY
    return REAL
