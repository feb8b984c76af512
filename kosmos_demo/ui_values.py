"""Pure conversions between the engine's plain data and the values Gradio components take.

Nothing here imports gradio or touches the model, so every function is unit
tested without a server. Colours and labels come from :mod:`kosmos_demo.render`
(:func:`~kosmos_demo.render.entity_color`, :func:`~kosmos_demo.render.entity_label`),
prompts from :func:`~kosmos_demo.tasks.build_prompt` and every setting is
validated by :class:`~kosmos_demo.settings.DecodingSettings`: the browser is
never trusted to have done it.
"""

from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .render import HeatmapAnnotator, annotate_entities, entity_color, entity_label, heatmap_grid, visible_token
from .results import Result, Token
from .settings import DecodingSettings
from .tasks import PromptError, Request, build_prompt, parse_box, validate_box

DISPLAY_MAX_SIDE = 1024
"""Longest side of every image the browser is sent; downloads keep full resolution."""

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


def display_image(image: Image.Image, max_side: int = DISPLAY_MAX_SIDE) -> Image.Image:
    """``image`` scaled down (never up) so its longest side is at most ``max_side``."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image.copy()
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def scale_box(box: Sequence[float], from_size: tuple[int, int], to_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A pixel box of an image of ``from_size`` -> the same box on ``to_size``, inside it, at least 1 px."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    x1, x2 = sorted((box[0] * sx, box[2] * sx))
    y1, y2 = sorted((box[1] * sy, box[3] * sy))
    x1, y1 = min(max(int(round(x1)), 0), to_size[0] - 1), min(max(int(round(y1)), 0), to_size[1] - 1)
    x2, y2 = min(max(int(round(x2)), x1 + 1), to_size[0]), min(max(int(round(y2)), y1 + 1), to_size[1])
    return x1, y1, x2, y2


def region_preview(image: Image.Image, box: Sequence[float] | None = None,
                   corner: Sequence[float] | None = None) -> Image.Image:
    """The user's region drawn on ``image`` (already display-sized), in coordinates of ``image``.

    The box gets the colour the prompt's own entity will get in the results
    (it is always the first entity), the rest of the photo is dimmed; a lone
    first corner is a cross-hair.
    """
    out = image.convert("RGB")
    color = entity_color(0)
    width = max(2, round(min(out.size) / 150))
    if box is not None:
        x1, y1, x2, y2 = scale_box(box, out.size, out.size)
        shade = Image.new("L", out.size, 110)
        ImageDraw.Draw(shade).rectangle((x1, y1, x2 - 1, y2 - 1), fill=0)
        out = Image.composite(Image.new("RGB", out.size, "black"), out, shade)
        ImageDraw.Draw(out).rectangle((x1, y1, x2 - 1, y2 - 1), outline=color, width=width)
    if corner is not None:
        x, y = corner
        r = max(6, width * 4)
        draw = ImageDraw.Draw(out)
        draw.line((x - r, y, x + r, y), fill="white", width=width + 2)
        draw.line((x, y - r, x, y + r), fill="white", width=width + 2)
        draw.line((x - r, y, x + r, y), fill=color, width=width)
        draw.line((x, y - r, x, y + r), fill=color, width=width)
    return out


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes (to tell the user's upload from the previews drawn over it)."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def token_display(token: Token) -> str:
    """A token as it reads in the clickable strip: location tokens short, whitespace visible."""
    text = token.text
    if token.kind == "location":
        digits = "".join(ch for ch in text if ch.isdigit())
        return f"\u2039loc {int(digits)}\u203a" if digits else text
    return visible_token(text, word_spaces=True)


def token_segments(result: Result) -> Segments:
    """Every token after ``</image>`` as its own segment, in order.

    Generated tokens with a heatmap carry their share of attention on the image
    (scaled by the run's largest share, so the strongest is 1.0) and are
    clickable; prompt tokens carry None. Segment ``i`` is ``result.tokens[i]``.
    """
    shares = result.heatmaps.image_share if result.heatmaps is not None else np.zeros(0)
    top = float(shares.max()) if len(shares) else 0.0
    segments: Segments = []
    for token in result.tokens:
        score = None
        if token.heatmap_index is not None:
            share = float(shares[token.heatmap_index])
            score = round(share / top, 3) if top > 0 else 0.0
        segments.append((token_display(token), score))
    return segments


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
    info = (f"Token {k + 1} of {len(result.heatmaps)} generated: <code>{html.escape(token_display(token))}</code> "
            f"&middot; {share:.0%} of its attention went to the image.")
    return overlay, info


def heatmap_overview(image: Image.Image, result: Result) -> Image.Image | None:
    """All token heatmaps in one grid (render.heatmap_grid), or None without heatmaps."""
    if result.heatmaps is None or not len(result.heatmaps):
        return None
    tokens = sorted((t for t in result.tokens if t.heatmap_index is not None), key=lambda t: t.heatmap_index)
    return heatmap_grid(image, result.heatmaps.maps, [token_display(t) for t in tokens],
                        result.heatmaps.image_share, columns=8, cell=128)


def entities_json(result: Result, image_name: str) -> dict:
    """The CLI's JSON Lines record for one image: its name, then Result.to_json()."""
    return {"image": image_name, **result.to_json()}


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


def write_downloads(folder: Path, image: Image.Image, result: Result, image_name: str) -> list[str]:
    """Full-resolution annotated PNG, entities JSON and (with heatmaps) grid PNG + raw maps (.npz)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = _safe_stem(image_name)
    paths = [folder / f"{stem}.annotated.png", folder / f"{stem}.entities.json"]
    annotate_entities(image, result.entities).save(paths[0])
    paths[1].write_text(json.dumps(entities_json(result, image_name), ensure_ascii=False, indent=2), encoding="utf-8")
    if result.heatmaps is not None and len(result.heatmaps):
        grid = heatmap_overview(image, result)
        paths.append(folder / f"{stem}.heatmaps.png")
        grid.save(paths[-1])
        tokens = sorted((t for t in result.tokens if t.heatmap_index is not None), key=lambda t: t.heatmap_index)
        paths.append(folder / f"{stem}.heatmaps.npz")
        np.savez_compressed(paths[-1], maps=result.heatmaps.maps, image_share=result.heatmaps.image_share,
                            tokens=np.array([t.text for t in tokens]))
    return [str(p) for p in paths]


def _safe_stem(name: str) -> str:
    stem = Path(name).stem or "image"
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:80].strip("._")
    return cleaned or "image"


def clamp_point(x: float, y: float, size: tuple[int, int]) -> tuple[float, float]:
    """A click position kept inside an image of ``size``."""
    return min(max(float(x), 0.0), float(size[0])), min(max(float(y), 0.0), float(size[1]))


def box_from_corners(a: Sequence[float], b: Sequence[float],
                     size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """Two clicked corners -> a sorted pixel box inside the image, or None when it has no area."""
    try:
        return validate_box((a[0], a[1], b[0], b[1]), size)
    except PromptError:
        return None


__all__ = [
    "DISPLAY_MAX_SIDE",
    "annotated_value",
    "box_from_corners",
    "build_request",
    "caption_segments",
    "clamp_point",
    "color_map",
    "default_token",
    "display_image",
    "entities_json",
    "entity_index",
    "file_digest",
    "format_box",
    "heatmap_overview",
    "labels",
    "parse_box_text",
    "prompt_preview",
    "region_preview",
    "scale_box",
    "status_line",
    "timings_markdown",
    "token_display",
    "token_heatmap",
    "token_segments",
    "write_downloads",
]
