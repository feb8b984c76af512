"""Files and records out of a :class:`~kosmos_demo.results.Result`: one exporter for every front end.

The page's downloads, the CLI's ``--out`` folder and the batch engine write
the same files with the same names for the same run; the JSON record is the
CLI's JSON Lines schema everywhere (API, page download, batch output).
Names start with what the file is (``annotated-``, ``entities-``,
``heatmaps-``), so they stay distinct where a narrow screen shortens them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .messages import valid_unicode
from .render import HeatmapAnnotator, annotate_entities, heatmap_grid, visible_token
from .results import Result, Token


def record(result: Result, image_name: str) -> dict:
    """The JSON record of one image: its name (lone surrogates written out), then :meth:`Result.to_json`."""
    return {"image": valid_unicode(image_name), **result.to_json()}


def heatmap_tokens(result: Result) -> list[Token]:
    """The tokens that have a heatmap, in heatmap order (``maps[k]`` is the k-th)."""
    return sorted((t for t in result.tokens if t.heatmap_index is not None), key=lambda t: t.heatmap_index)


def token_label(token: Token) -> str:
    """A token as it reads under its heatmap: location tokens short, whitespace visible."""
    if token.kind == "location":
        digits = "".join(ch for ch in token.text if ch.isdigit())
        return f"\u2039loc {int(digits)}\u203a" if digits else token.text
    return visible_token(token.text, word_spaces=True)


def overview(image: Image.Image, result: Result, cell: int = 128) -> Image.Image | None:
    """All token heatmaps of ``result`` over ``image`` in one grid, or None without heatmaps."""
    if result.heatmaps is None or not len(result.heatmaps):
        return None
    labels = [token_label(t) for t in heatmap_tokens(result)]
    return heatmap_grid(image, result.heatmaps.maps, labels, result.heatmaps.image_share, columns=8, cell=cell)


@dataclass(frozen=True)
class Exported:
    """The paths one export wrote."""

    annotated: Path
    entities: Path
    heatmap_grid: Path | None = None
    heatmap_maps: Path | None = None
    token_heatmaps: tuple[Path, ...] = field(default_factory=tuple)

    def files(self) -> list[str]:
        """Every file written, the annotated image first (what the page offers for download)."""
        paths = [self.annotated, self.entities, self.heatmap_grid, self.heatmap_maps, *self.token_heatmaps]
        return [str(p) for p in paths if p is not None]

    def to_json(self) -> dict:
        """The paths for a JSON line: ``annotated``, and with heatmaps ``heatmap_grid``, ``heatmaps``."""
        out = {"annotated": str(self.annotated), "entities_file": str(self.entities)}
        if self.heatmap_grid is not None:
            out["heatmap_grid"] = str(self.heatmap_grid)
            out["heatmap_maps"] = str(self.heatmap_maps)
        if self.token_heatmaps:
            out["heatmaps"] = [str(p) for p in self.token_heatmaps]
        return out


def safe_stem(name: str, limit: int = 80, fallback: str = "image") -> str:
    """A file-name stem from any image name: letters, digits, ``-``, ``_`` and ``.`` only.

    >>> safe_stem("my photo (1).jpg"), safe_stem("../../etc/passwd"), safe_stem("\\ud800.png")
    ('my_photo__1', 'passwd', 'image')
    """
    stem = Path(name).stem
    cleaned = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "_" for ch in stem)
    cleaned = cleaned[:limit].strip("._")
    return cleaned if cleaned.strip("_") else fallback


def export(folder: Path, image: Image.Image, result: Result, image_name: str, stem: str | None = None,
           token_images: bool = False) -> Exported:
    """Write the full-resolution annotated PNG, the JSON record and, with heatmaps, their grid and raw maps.

    ``token_images`` also writes one overlay per generated token into
    ``heatmaps-<stem>/``, named by position and token (``007-circle.png``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or safe_stem(image_name)
    annotated, entities = folder / f"annotated-{stem}.png", folder / f"entities-{stem}.json"
    annotate_entities(image, result.entities).save(annotated)
    entities.write_text(json.dumps(record(result, image_name), ensure_ascii=False, indent=2), encoding="utf-8")
    grid = overview(image, result)
    if grid is None:
        return Exported(annotated, entities)
    grid_path, maps_path = folder / f"heatmaps-{stem}.png", folder / f"heatmaps-{stem}.npz"
    grid.save(grid_path)
    tokens = heatmap_tokens(result)
    np.savez_compressed(maps_path, maps=result.heatmaps.maps, image_share=result.heatmaps.image_share,
                        tokens=np.array([t.text for t in tokens]))
    written: list[Path] = []
    if token_images:
        overlay = HeatmapAnnotator()
        token_folder = folder / f"heatmaps-{stem}"
        token_folder.mkdir(exist_ok=True)
        for token in tokens:
            path = token_folder / f"{token.heatmap_index:03d}-{safe_stem(token_label(token) + '.png', 24, 'token')}.png"
            overlay.annotate(image, result.heatmaps.maps[token.heatmap_index]).save(path)
            written.append(path)
    return Exported(annotated, entities, grid_path, maps_path, tuple(written))
