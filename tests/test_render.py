import re

import numpy as np
import pytest
from PIL import Image, ImageChops

from kosmos_demo.render import (
    PALETTE,
    BoxAnnotator,
    HeatmapAnnotator,
    LabelAnnotator,
    _label_rect,
    _relative_luminance,
    _text_color,
    visible_token,
    annotate_entities,
    entity_color,
    entity_label,
    heatmap_grid,
)
from kosmos_demo.results import Entity

GREY = (128, 128, 128)


def make_entity(phrase, *boxes, size=(100, 100)):
    w, h = size
    return Entity(
        phrase=phrase,
        span=(0, len(phrase)),
        boxes=tuple(boxes),
        boxes_normalized=tuple((x1 / w, y1 / h, x2 / w, y2 / h) for x1, y1, x2, y2 in boxes),
    )


def rgb(color):
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def changed_bbox(before, after):
    """Bounding box (left, top, right, bottom; exclusive) of pixels that differ, or None."""
    return ImageChops.difference(before.convert("RGB"), after).getbbox()


def inside(inner, outer):
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


# --------------------------------------------------------------------------- palette and labels


def test_palette_has_30_distinct_valid_colours():
    assert len(PALETTE) >= 30
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in PALETTE)
    assert len({c.lower() for c in PALETTE}) == len(PALETTE)
    colours = np.array([rgb(c) for c in PALETTE], dtype=float)
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    distances[np.diag_indices(len(PALETTE))] = np.inf
    assert distances.min() > 30
    # Saturated: no greys (HSV saturation).
    assert all((max(c) - min(c)) / max(c) >= 0.4 for c in map(rgb, PALETTE))


def test_entity_color_cycles():
    n = len(PALETTE)
    assert [entity_color(i) for i in range(n)] == list(PALETTE)
    assert entity_color(n) == entity_color(0)
    assert entity_color(2 * n + 3) == PALETTE[3]


def test_duplicate_phrases_get_distinct_labels_and_colours():
    entities = [make_entity(p) for p in ["dog", "dog", "cat", "dog", "", "  a   red\ncar "]]
    labels = [entity_label(entities, i) for i in range(len(entities))]
    assert labels == ["dog", "dog (2)", "cat", "dog (3)", "region 5", "a red car"]
    assert len({entity_color(i) for i in (0, 1, 3)}) == 3
    assert entity_label(entities, -1) == "a red car"
    with pytest.raises(IndexError):
        entity_label(entities, 6)


def test_labels_unique_even_when_a_phrase_looks_like_a_suffix():
    entities = [make_entity(p) for p in ["dog (2)", "dog", "dog", "region 2", ""]]
    labels = [entity_label(entities, i) for i in range(len(entities))]
    assert len(set(labels)) == len(labels)
    assert labels[:3] == ["dog (2)", "dog", "dog (3)"]


# --------------------------------------------------------------------------- boxes


def test_boxes_drawn_on_edge_pixels_in_entity_colour():
    image = Image.new("RGB", (200, 100), GREY)
    entities = [make_entity("a", (20, 30, 120, 80)), make_entity("b", (150, 10, 190, 40))]
    out = BoxAnnotator(thickness=3).annotate(image, entities)
    first, second = rgb(entity_color(0)), rgb(entity_color(1))
    for xy in [(20, 30), (120, 80), (70, 30), (70, 32), (22, 50), (118, 50), (70, 78)]:
        assert out.getpixel(xy) == first, xy
    for xy in [(70, 33), (23, 50), (70, 55), (19, 30), (70, 29), (121, 50), (70, 81)]:
        assert out.getpixel(xy) == GREY, xy
    assert out.getpixel((150, 10)) == second and out.getpixel((170, 25)) == GREY
    # Nothing painted outside the boxes.
    diff = np.asarray(ImageChops.difference(image, out)).any(axis=-1)
    diff[30:81, 20:121] = False
    diff[10:41, 150:191] = False
    assert not diff.any()


def test_default_thickness_scales_with_image():
    image = Image.new("RGB", (800, 400), GREY)
    out = BoxAnnotator().annotate(image, [make_entity("a", (100, 100, 300, 300))])
    colour = rgb(entity_color(0))
    assert out.getpixel((200, 100)) == colour and out.getpixel((200, 101)) == colour  # 400 / 200 = 2
    assert out.getpixel((200, 102)) == GREY


def test_box_past_the_image_is_clipped():
    image = Image.new("RGB", (50, 40), GREY)
    out = BoxAnnotator(thickness=1).annotate(image, [make_entity("a", (10, 10, 50, 40))])
    assert out.getpixel((49, 20)) == rgb(entity_color(0))
    assert out.getpixel((30, 39)) == rgb(entity_color(0))


# --------------------------------------------------------------------------- labels


def test_text_colour_follows_wcag_contrast():
    assert _text_color("#ffffff") == "#000000"
    assert _text_color("#000000") == "#ffffff"
    assert _text_color("#ffff99") == "#000000"
    assert _text_color("#393b79") == "#ffffff"
    assert _relative_luminance("#ffffff") == pytest.approx(1.0)


@pytest.mark.parametrize("colour, dark_text", [("#ffff99", True), ("#ffd92f", True), ("#393b79", False), ("#6a3d9a", False)])
def test_rendered_label_text_contrasts_with_its_background(colour, dark_text):
    index = PALETTE.index(colour)
    # Entities without boxes keep their colour slot but draw nothing.
    entities = [make_entity(f"e{i}") for i in range(index)] + [make_entity("HELLO", (40, 60, 200, 150))]
    image = Image.new("RGB", (300, 200), GREY)
    annotator = LabelAnnotator(font_size=24)
    out = annotator.annotate(image, entities)
    [label] = annotator._layout(image.size, entities)
    assert label.fill == colour
    patch = np.asarray(out.crop(label.rect)).astype(int)
    luminance = patch.mean(axis=-1)
    pixels = patch.reshape(-1, 3)
    # Mostly background, with real glyph pixels.
    assert (pixels == rgb(colour)).all(axis=1).mean() > 0.5
    if dark_text:
        assert luminance.min() < 40
    else:
        assert luminance.max() > 215


def test_label_sits_above_the_box_when_there_is_room():
    image = Image.new("RGB", (300, 200), GREY)
    entities = [make_entity("cat", (50, 100, 150, 180))]
    annotator = LabelAnnotator(font_size=16)
    [label] = annotator._layout(image.size, entities)
    left, top, right, bottom = label.rect
    assert (left, bottom) == (50, 100)
    assert label.text == "cat"
    out = annotator.annotate(image, entities)
    assert changed_bbox(image, out) == label.rect


EDGE_BOXES = {
    "top-left": (0, 0, 60, 40),
    "top-right": (240, 0, 299, 40),
    "bottom-left": (0, 160, 60, 199),
    "bottom-right": (240, 160, 299, 199),
    "whole image": (0, 0, 299, 199),
    "right edge, small": (285, 90, 299, 110),
    "left edge, small": (0, 90, 10, 100),
    "top, thin": (100, 0, 150, 4),
    "bottom, thin": (100, 196, 150, 199),
    "bottom edge exclusive coords": (200, 150, 300, 200),
}


@pytest.mark.parametrize("where", list(EDGE_BOXES))
def test_labels_stay_inside_the_image_at_edges_and_corners(where):
    box = EDGE_BOXES[where]
    size = (300, 200)
    image = Image.new("RGB", size, GREY)
    entities = [make_entity("a rather long phrase for a label", box)]
    annotator = LabelAnnotator(font_size=18)
    [label] = annotator._layout(size, entities)
    left, top, right, bottom = label.rect
    assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
    out = annotator.annotate(image, entities)
    assert out.size == size
    drawn = changed_bbox(image, out)
    assert drawn is not None and inside(drawn, label.rect)
    # Still attached to its box: horizontally overlapping it, and above it only
    # when there was room above.
    x1, y1, x2, y2 = box
    assert left <= min(x2, size[0] - 1) and right > x1
    label_h = bottom - top
    if y1 >= label_h:
        assert bottom == y1
    else:
        assert top >= y1


def test_label_rect_rules():
    image_size = (300, 200)
    assert _label_rect((50, 100, 150, 180), (40, 20), image_size) == (50, 80, 90, 100)  # above
    assert _label_rect((50, 5, 150, 180), (40, 20), image_size) == (50, 5, 90, 25)  # inside, top
    assert _label_rect((50, 5, 150, 10), (40, 20), image_size) == (50, 11, 90, 31)  # below
    assert _label_rect((280, 100, 299, 180), (40, 20), image_size) == (260, 80, 300, 100)  # shifted left
    assert _label_rect((0, 0, 10, 10), (500, 500), image_size) == (0, 0, 300, 200)  # cut to the image


def test_long_phrase_is_truncated_with_ellipsis():
    size = (200, 100)
    entities = [make_entity("word " * 100, (10, 50, 100, 90))]
    annotator = LabelAnnotator(font_size=14)
    [label] = annotator._layout(size, entities)
    assert label.text.endswith("\u2026") and len(label.text) < 100
    assert label.rect[2] - label.rect[0] <= size[0]
    out = annotator.annotate(Image.new("RGB", size, GREY), entities)
    assert out.size == size


def test_every_box_of_an_entity_gets_a_label():
    entities = [make_entity("dog", (10, 40, 60, 90), (100, 40, 150, 90)), make_entity("cat", (200, 40, 250, 90))]
    labels = LabelAnnotator(font_size=12)._layout((300, 100), entities)
    assert [lab.text for lab in labels] == ["dog", "dog", "cat"]
    assert [lab.fill for lab in labels] == [entity_color(0), entity_color(0), entity_color(1)]


# --------------------------------------------------------------------------- extremes and modes


def test_tiny_image_with_30_entities():
    rng = np.random.default_rng(0)
    entities = []
    for i in range(30):
        x1, y1 = rng.integers(0, 28, size=2)
        x2, y2 = x1 + rng.integers(1, 5), y1 + rng.integers(1, 5)
        entities.append(make_entity(["cat", "dog", ""][i % 3], (int(x1), int(y1), int(x2), int(y2)), size=(32, 32)))
    image = Image.new("RGB", (32, 32), GREY)
    out = annotate_entities(image, entities)
    assert out.size == (32, 32) and out.mode == "RGB"
    labels = LabelAnnotator()._layout((32, 32), entities)
    assert len(labels) == 30
    assert all(inside(lab.rect, (0, 0, 32, 32)) for lab in labels)
    assert len({entity_label(entities, i) for i in range(30)}) == 30
    assert changed_bbox(image, out) is not None


def test_huge_image_one_entity():
    image = Image.new("RGB", (8000, 6000), GREY)
    entities = [make_entity("a large building", (1000, 2000, 5000, 5500), size=(8000, 6000))]
    out = annotate_entities(image, entities)
    assert out.size == (8000, 6000)
    colour = rgb(entity_color(0))
    assert out.getpixel((3000, 5500)) == colour and out.getpixel((3000, 5471)) == colour  # thickness 30
    assert out.getpixel((3000, 5469)) == GREY
    [label] = LabelAnnotator()._layout(image.size, entities)
    left, top, right, bottom = label.rect
    assert (left, bottom) == (1000, 2000)
    assert 100 < bottom - top < 250  # font scaled up, but capped
    assert out.getpixel((left + 2, top + 2)) == colour


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "1"])
def test_other_modes_become_rgb(mode):
    image = Image.new("RGB", (64, 48), GREY).convert(mode)
    out = annotate_entities(image, [make_entity("x", (5, 20, 40, 40))])
    assert out.mode == "RGB" and out.size == (64, 48)
    assert out.getpixel((5, 30)) == rgb(entity_color(0))


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    out = BoxAnnotator().annotate(image, [])
    assert out.getpixel((20, 20)) == (255, 255, 255)


def test_no_entities_leaves_the_picture_alone():
    image = Image.new("RGB", (64, 48), GREY)
    out = annotate_entities(image, [make_entity("no boxes")])
    assert changed_bbox(image, out) is None


def test_inputs_are_not_mutated():
    image = Image.new("RGB", (120, 80), GREY)
    before = image.tobytes()
    entities = [make_entity("a", (10, 10, 60, 60))]
    results = [
        BoxAnnotator().annotate(image, entities),
        LabelAnnotator().annotate(image, entities),
        annotate_entities(image, entities),
        HeatmapAnnotator().annotate(image, np.ones((4, 4), np.float32)),
        heatmap_grid(image, np.ones((2, 4, 4), np.float32), ["a", "b"]),
    ]
    assert image.tobytes() == before
    assert all(r is not image for r in results)
    assert all(changed_bbox(image, r) is not None for r in results[:4])


# --------------------------------------------------------------------------- heatmaps


def pooled_diff(image, out, grid=16):
    diff = np.abs(np.asarray(out, dtype=float) - np.asarray(image.convert("RGB"), dtype=float)).sum(-1)
    h, w = diff.shape
    return diff.reshape(grid, h // grid, grid, w // grid).mean(axis=(1, 3))


def test_hot_cell_colours_the_matching_region_of_a_non_square_image():
    image = Image.new("RGB", (320, 160), GREY)
    heatmap = np.zeros((16, 16), np.float32)
    heatmap[0, 15] = 1.0
    out = HeatmapAnnotator().annotate(image, heatmap)
    assert out.size == (320, 160) and out.mode == "RGB"
    # Jet is dark at both ends, so look for red rather than for change.
    pixels = np.asarray(out, dtype=float)
    redness = (pixels[..., 0] - pixels[..., 2]).reshape(16, 10, 16, 20).mean(axis=(1, 3))
    assert np.unravel_index(redness.argmax(), redness.shape) == (0, 15)
    assert redness[0, 15] > 40 and (np.delete(redness.ravel(), 15) < redness[0, 15] / 2).all()
    r, g, b = out.getpixel((317, 2))  # jet's top end is red
    assert r > g + 40 and r > b + 40
    r, g, b = out.getpixel((5, 155))  # jet's bottom end is blue
    assert b > r + 40 and b > g


@pytest.mark.parametrize("hot, cold_xy", [((0, 15), (5, 155)), ((15, 0), (300, 5))])
def test_weighted_overlay_changes_the_hot_region_most(hot, cold_xy):
    image = Image.new("RGB", (320, 160), GREY)
    heatmap = np.zeros((16, 16), np.float32)
    heatmap[hot] = 1.0
    out = HeatmapAnnotator(colormap="viridis", alpha=0.8, weighted=True).annotate(image, heatmap)
    assert out.getpixel(cold_xy) == GREY
    pooled = pooled_diff(image, out)
    assert np.unravel_index(pooled.argmax(), pooled.shape) == hot
    y, x = hot
    assert out.getpixel((x * 20 + 10, y * 10 + 5)) != GREY


def test_alpha_zero_and_one():
    image = Image.new("RGB", (32, 32), GREY)
    heatmap = np.full((2, 2), 1.0)
    assert changed_bbox(image, HeatmapAnnotator(alpha=0.0).annotate(image, heatmap)) is None
    full = HeatmapAnnotator(colormap="gray", alpha=1.0).annotate(image, heatmap)
    assert full.getpixel((10, 10)) == (255, 255, 255)


@pytest.mark.parametrize(
    "heatmap, message",
    [
        (np.zeros(16), "2-D"),
        (np.zeros((2, 16, 16)), "2-D"),
        (np.zeros((0, 0)), "2-D"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[0.0, np.inf]]), "NaN"),
        (np.array([[0.0, 1.5]]), r"\[0, 1\]"),
        (np.array([[-0.1, 0.5]]), r"\[0, 1\]"),
        (np.array([["a", "b"]]), "real numbers"),
        (np.array([[1j, 0]]), "real numbers"),
    ],
)
def test_invalid_heatmaps_are_rejected(heatmap, message):
    with pytest.raises(ValueError, match=message):
        HeatmapAnnotator().annotate(Image.new("RGB", (32, 32)), heatmap)


def test_invalid_annotator_settings_are_rejected():
    with pytest.raises(ValueError, match="colormap"):
        HeatmapAnnotator(colormap="no-such-map")
    with pytest.raises(ValueError, match="alpha"):
        HeatmapAnnotator(alpha=1.5)
    with pytest.raises(ValueError):
        BoxAnnotator(thickness=0)
    with pytest.raises(ValueError):
        LabelAnnotator(font_size=0)


# --------------------------------------------------------------------------- heatmap grid


def test_visible_token():
    assert visible_token(" the") == "\u00b7the"
    assert visible_token(" ") == "\u00b7"
    assert visible_token("") == "\u2205"
    assert visible_token("a\nb\t") == "a\u21b5b\u2192"
    assert visible_token("x\x00") == "x\\x00"
    # in the token strip: a word keeps its leading space, a token of spaces alone shows them
    assert visible_token(" the", word_spaces=True) == " the"
    assert visible_token("  ", word_spaces=True) == "\u00b7\u00b7"
    assert visible_token(" a\n", word_spaces=True) == " a\u21b5"


def test_heatmap_grid_grows_with_token_count():
    image = Image.new("RGB", (300, 150), GREY)
    rng = np.random.default_rng(1)

    def grid(n, **kwargs):
        maps = rng.random((n, 16, 16), dtype=np.float32)
        return heatmap_grid(image, maps, [f"t{i}" for i in range(n)], **kwargs)

    one, eight, nine = grid(1), grid(8), grid(9)
    assert one.width < eight.width == nine.width
    assert one.height == eight.height < nine.height
    assert nine.height > 2 * 80  # 300 x 150 image -> 160 x 80 thumbnails
    many = grid(300, cell=48)
    assert many.height > 30 * 48 and many.width < 9 * 60
    with_shares = heatmap_grid(image, np.ones((3, 16, 16)), ["a", "b", "c"], shares=[0.1, 0.5, 0.9])
    assert with_shares.height > grid(3).height


def test_heatmap_grid_cells_show_overlay_and_text():
    image = Image.new("RGB", (200, 100), GREY)  # 2:1, so the thumbnail is 160 x 80
    maps = np.zeros((3, 16, 16), np.float32)
    maps[0, 0, 15] = 1.0
    labels = [" the", " ", ""]
    out = heatmap_grid(image, maps, labels, shares=[0.42, 0.0, 1.0], columns=3, cell=160)
    pixels = np.asarray(out).astype(int)
    gap = 5
    assert out.width == 3 * 160 + 4 * gap
    thumb0 = pixels[gap : gap + 80, gap : gap + 160]
    assert not (thumb0 == 255).all(axis=-1).any()  # the overlay fills the thumbnail
    r, g, b = thumb0[2, 157]  # top-right patch of the thumbnail is hot
    assert r > g + 40 and r > b + 40
    r, g, b = thumb0[78, 2]
    assert b > r + 40
    # Every caption, the whitespace-only and empty tokens included, draws something dark.
    for k in range(3):
        left = gap + k * (160 + gap)
        caption = pixels[gap + 80 : out.height - gap, left : left + 160]
        assert caption.size and (caption.min(axis=-1) < 100).any(), k
        assert (pixels[gap + 80 : out.height, left + 160 : left + 160 + gap] == 255).all()


def test_heatmap_grid_tall_image_fits_cell():
    image = Image.new("RGB", (50, 400), GREY)
    out = heatmap_grid(image, np.ones((2, 16, 16)), ["a", "b"], cell=100)
    pixels = np.asarray(out).astype(int)
    gap = 3
    assert out.width == 2 * 100 + 3 * gap
    column = pixels[gap : gap + 100, gap + 50]
    assert not (column == 255).all(axis=-1).any()  # thumbnail is 100 px tall, centred
    assert (pixels[gap : gap + 100, gap + 5] == 255).all()  # white beside it


def test_heatmap_grid_rejects_bad_input():
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="at least one"):
        heatmap_grid(image, np.zeros((0, 16, 16)), [])
    with pytest.raises(ValueError, match="labels"):
        heatmap_grid(image, np.zeros((2, 16, 16)), ["a"])
    with pytest.raises(ValueError, match="shares"):
        heatmap_grid(image, np.zeros((2, 16, 16)), ["a", "b"], shares=[0.5])
    with pytest.raises(ValueError, match="shape"):
        heatmap_grid(image, np.zeros((16, 16)), ["a"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        heatmap_grid(image, np.full((1, 4, 4), 2.0), ["a"])
