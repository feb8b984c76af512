"""Pure conversions between the engine's plain data and the values Gradio components take.

Nothing here imports gradio or touches the model, so every function is unit
tested without a server. Colours and labels come from :mod:`kosmos_demo.render`
(:func:`~kosmos_demo.render.entity_color`, :func:`~kosmos_demo.render.entity_label`),
prompts from :func:`~kosmos_demo.tasks.build_prompt` and every setting is
validated by :class:`~kosmos_demo.settings.DecodingSettings`: the browser is
never trusted to have done it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from .export import safe_stem, token_label
from .geometry import scale_box
from .render import HeatmapAnnotator, entity_color, entity_label
from .results import Result
from .settings import DecodingSettings
from .tasks import PromptError, Request, Task, build_prompt, parse_box, validate_box

DISPLAY_MAX_SIDE = 1024
"""Longest side of every image the browser is sent; downloads keep full resolution."""

DISPLAY_MIN_SIDE = 512
"""Smaller images are shown enlarged to this longest side, so two clicks can mark a corner on them."""

Segments = list[tuple[str, Any]]
"""A ``gr.HighlightedText`` value: (text, label or score or None) pairs."""


# --------------------------------------------------------------------------- requests and prompts


def parse_box_text(text: str | None) -> tuple[float, float, float, float] | None:
    """'x1,y1,x2,y2' -> four floats; empty -> None; anything else raises PromptError."""
    if text is None or not str(text).strip():
        return None
    if not isinstance(text, str):
        raise PromptError(f"The box must be text 'x1,y1,x2,y2' (got {type(text).__name__}).")
    return parse_box(text)


def format_box(box: Sequence[float]) -> str:
    """Four numbers -> 'x1,y1,x2,y2' in whole pixels (what the box field shows)."""
    return ",".join(str(int(round(v))) for v in box)


def build_request(task: str, text: str | None = "", box: str | None = "", grounding: bool = True,
                  heatmaps: bool = False, decoding: Mapping[str, Any] | None = None) -> Request:
    """Loose form or API input -> a validated Request; raises PromptError or SettingsError."""
    if not isinstance(grounding, bool) or not isinstance(heatmaps, bool):
        raise PromptError("grounding and heatmaps must be true or false.")
    if text is not None and not isinstance(text, str):
        raise PromptError(f"The text must be a string, not {type(text).__name__}.")
    settings = DecodingSettings.from_mapping(dict(decoding or {}))
    return Request(task=task, text=text or "", box=parse_box_text(box), grounding=grounding,
                   decoding=settings, heatmaps=heatmaps)


def prompt_preview(task: str, text: str | None, box: str | None, grounding: bool,
                   image_size: tuple[int, int] | None) -> str:
    """The exact prompt the model will get, or a line saying what is still missing."""
    try:
        request = build_request(task, text, box, grounding)
        if request.task.needs_box and image_size is None:
            return "Load an image, then mark a box on it (two clicks) or type its corners."
        return build_prompt(request, image_size or (1, 1))
    except (PromptError, ValueError) as error:
        return f"\u26a0 {error}"


# --------------------------------------------------------------------------- images


def display_size(size: tuple[int, int], max_side: int = DISPLAY_MAX_SIDE,
                 min_side: int = DISPLAY_MIN_SIDE) -> tuple[int, int]:
    """The size an image of ``size`` is shown at: its longest side brought within [``min_side``, ``max_side``].

    >>> display_size((3000, 1500)), display_size((800, 600)), display_size((320, 240))
    ((1024, 512), (800, 600), (512, 384))
    """
    longest = max(size)
    scale = max_side / longest if longest > max_side else min_side / longest if longest < min_side else 1.0
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def display_image(image: Image.Image) -> Image.Image:
    """``image`` at :func:`display_size`, a new image either way (enlarged without blurring its pixels)."""
    size = display_size(image.size)
    if size == image.size:
        return image.copy()
    if size[0] > image.width:
        return image.resize(size, Image.Resampling.NEAREST)
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def safe_name(path: str) -> str:
    """A short file-name stem for a file the app writes about ``path``."""
    return safe_stem(Path(path).name, 40)


def region_marks(task: str, box: str | None, corner, size: tuple[int, int]):
    """(box, corner) to draw while a region is marked, in original pixels; (None, None) when there is none.

    Only the region tasks draw; a box that does not parse or misses the image is not drawn.
    """
    try:
        if not Task(task).needs_box:
            return None, None
        parsed = parse_box_text(box)
        clean = validate_box(parsed, size) if parsed is not None else None
    except (PromptError, ValueError):
        clean = None
    return clean, (tuple(corner) if corner is not None else None)


# --------------------------------------------------------------------------- results -> components


def labels(result: Result) -> list[str]:
    """The display label of every entity, in order (unique; see render.entity_label)."""
    return [entity_label(result.entities, i) for i in range(len(result.entities))]


def color_map(result: Result) -> dict[str, str]:
    """Label -> "#rrggbb", shared by the caption highlighting and the annotated image."""
    return {label: entity_color(i) for i, label in enumerate(labels(result))}


def caption_segments(result: Result) -> Segments:
    """The caption cut at entity spans: (text, entity label) for phrases, (text, None) between."""
    segments: Segments = []
    names = labels(result)
    cursor = 0
    for index in sorted(range(len(result.entities)), key=lambda i: result.entities[i].span[0]):
        start, end = result.entities[index].span
        if end <= start or start < cursor:  # unnamed objects and overlaps get no highlight
            continue
        if start > cursor:
            segments.append((result.text[cursor:start], None))
        segments.append((result.text[start:end], names[index]))
        cursor = end
    if cursor < len(result.text) or not segments:
        segments.append((result.text[cursor:], None))
    return segments


def annotated_value(image: Image.Image, result: Result, only: int | None = None):
    """A ``gr.AnnotatedImage`` value: ``image`` with every box (or entity ``only``'s) scaled onto it."""
    names = labels(result)
    boxes = []
    for index, entity in enumerate(result.entities):
        if only is not None and index != only:
            continue
        for box in entity.boxes:
            boxes.append((scale_box(box, result.image_size, image.size), names[index]))
    return image, boxes


def entity_index(result: Result, label: Any) -> int | None:
    """The entity shown under ``label``, or None."""
    try:
        return labels(result).index(label)
    except ValueError:
        return None


def _share_range(result: Result) -> tuple[float, float] | None:
    """(lowest, highest) image share of the run's generated tokens, or None without heatmaps."""
    if result.heatmaps is None or not len(result.heatmaps):
        return None
    shares = result.heatmaps.image_share
    return float(shares.min()), float(shares.max())


def token_segments(result: Result) -> Segments:
    """Every token after ``</image>`` as its own segment, in order.

    Generated tokens with a heatmap carry a shade for their share of
    attention on the image, spread over this caption's own range (its lowest
    share 0.15, its highest 1.0), so differences show; they are clickable.
    Prompt tokens carry None. Segment ``i`` is ``result.tokens[i]``.
    """
    span = _share_range(result)
    segments: Segments = []
    for token in result.tokens:
        score = None
        if token.heatmap_index is not None and span is not None:
            low, high = span
            share = float(result.heatmaps.image_share[token.heatmap_index])
            score = round(0.15 + 0.85 * ((share - low) / (high - low) if high > low else 1.0), 3)
        segments.append((token_label(token), score))
    return segments


def token_strip_label(result: Result) -> str:
    """The token strip's label, saying what its shading means for this run."""
    span = _share_range(result)
    if span is None:
        return "Tokens (heatmaps were off for this run)"
    low, high = span
    return (f"Tokens: click a generated token. Shade = its share of attention on the image, "
            f"from {low:.0%} (lightest) to {high:.0%} (darkest) in this caption")


def default_token(result: Result) -> int | None:
    """Index into ``result.tokens`` of the heatmap shown first: the first generated word, else any."""
    candidates = [i for i, t in enumerate(result.tokens) if t.heatmap_index is not None]
    words = [i for i in candidates if result.tokens[i].kind == "text" and result.tokens[i].text.strip()]
    return (words or candidates or [None])[0]


def token_heatmap(image: Image.Image, result: Result, index: int,
                  annotator: HeatmapAnnotator | None = None) -> tuple[Image.Image, str] | None:
    """Heatmap of ``result.tokens[index]`` over ``image`` and a Markdown line about it; None if it has none."""
    if result.heatmaps is None or not 0 <= index < len(result.tokens):
        return None
    token = result.tokens[index]
    if token.heatmap_index is None:
        return None
    k = token.heatmap_index
    overlay = (annotator or HeatmapAnnotator()).annotate(image, result.heatmaps.maps[k])
    share = float(result.heatmaps.image_share[k])
    info = (f"Token {k + 1} of {len(result.heatmaps)} generated: <code>{html.escape(token_label(token))}</code> "
            f"&middot; {share:.0%} of its attention went to the image.")
    return overlay, info


def status_line(result: Result) -> str:
    """One Markdown line after a run: what came back and how long it took."""
    generated = len(result.generated_tokens)
    count = len(result.entities)
    timings = result.timings
    parts = [f"**Done** \u00b7 {generated} token{'s' * (generated != 1)} generated",
             f"{count} grounded phrase{'s' * (count != 1)}"]
    if "total" in timings:
        parts.append(f"{timings['total']:.2f} s")
    return " \u00b7 ".join(parts)


def timings_markdown(result: Result) -> str:
    """Seconds per stage as a small Markdown table."""
    rows = "\n".join(f"| {html.escape(name)} | {seconds * 1000:.0f} ms |" for name, seconds in result.timings.items())
    return "| stage | time |\n|---|---|\n" + rows


def box_from_corners(a: Sequence[float], b: Sequence[float],
                     size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """Two clicked corners -> a sorted pixel box inside the image, or None when it has no area."""
    try:
        return validate_box((a[0], a[1], b[0], b[1]), size)
    except PromptError:
        return None
