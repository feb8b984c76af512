"""Which checkpoint is being served: the real Kosmos-2, the shapes toy or the tiny random one.

The engine loads any ``save_pretrained`` folder the same way; this module only
names the project's own checkpoints (``--model toy``), tells them apart by the
marker each one writes into its config, and says what a UI must show with
each: a banner, and examples the checkpoint can make sense of. Nothing here
imports torch, transformers or gradio.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

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


HUB_PROBE_S = 3.0
"""How long start-up waits for the Hub before saying it is unreachable."""


def is_hub_id(source: str) -> bool:
    """``owner/name`` that is not an existing folder: what ``from_pretrained`` would fetch from the Hub."""
    return source.count("/") == 1 and not source.startswith(("/", ".", "~")) and not os.path.exists(
        os.path.expanduser(source))


def hub_unreachable(timeout: float = HUB_PROBE_S) -> str | None:
    """Why the Hub cannot be reached (no name, no route, time-out), or None when it answers.

    huggingface_hub retries a dead connection five times over about 25 s before
    giving up; one short TCP connect tells the same in a few seconds. Skipped
    (None) behind a proxy, which a direct connect would misjudge, and in
    offline mode, where nothing is fetched anyway.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:  # gaierror (no DNS), refused, unreachable, timeout
        return f"could not reach {host}:{port} ({error.strerror or type(error).__name__})"
    return None
