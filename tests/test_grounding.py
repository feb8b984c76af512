"""Parsing and geometry against the model card and the processor's own functions."""

import pytest
from transformers.models.kosmos2.processing_kosmos2 import (
    clean_text_and_extract_entities_with_bboxes,
    coordinate_to_patch_index,
)

from kosmos_demo.geometry import GRID, box_to_patch_indices, normalize_box, patch_indices_to_box, to_pixels
from kosmos_demo.grounding import location_tokens, parse_grounded, split_markup

SNOWMAN = (
    "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> "
    "warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>."
)


def test_snowman_matches_model_card_and_processor():
    parsed = parse_grounded(split_markup(SNOWMAN))
    assert parsed.text == "An image of a snowman warming himself by a fire."
    got = [(e.phrase, e.span, list(e.boxes)) for e in parsed.entities]
    assert got == [
        ("a snowman", (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)]),
        ("a fire", (41, 47), [(0.171875, 0.015625, 0.484375, 0.890625)]),
    ]
    text, entities = clean_text_and_extract_entities_with_bboxes(SNOWMAN)
    assert parsed.text == text
    assert [(e.phrase, e.span, list(e.boxes)) for e in parsed.entities] == [(n, s, b) for n, s, b in entities]
    assert all(e.complete for e in parsed.entities)


def test_spans_index_the_clean_text():
    parsed = parse_grounded(split_markup(SNOWMAN))
    for entity in parsed.entities:
        start, end = entity.span
        assert parsed.text[start:end] == entity.phrase


def test_piece_spans_cover_visible_text_only():
    pieces = split_markup(SNOWMAN)
    parsed = parse_grounded(pieces)
    rebuilt = "".join(parsed.text[s[0] : s[1]] for s in parsed.piece_spans if s is not None)
    assert rebuilt == parsed.text
    for (kind, _), span in zip(pieces, parsed.piece_spans):
        assert (span is None) == (kind != "text")


def test_snowman_pixel_boxes_on_non_square_image():
    parsed = parse_grounded(split_markup(SNOWMAN))
    snowman, fire = parsed.entities
    # x scales by the width, y by the height: the 224 squash keeps no aspect ratio
    assert to_pixels(snowman.boxes[0], 640, 480) == (250, 23, 630, 398)
    assert to_pixels(fire.boxes[0], 1000, 200) == (172, 3, 484, 178)


def test_inverted_corners_are_sorted():
    raw = "<phrase> a dog</phrase><object><patch_index_0863><patch_index_0044></object>"
    (entity,) = parse_grounded(split_markup(raw)).entities
    x1, y1, x2, y2 = entity.boxes[0]
    assert x1 <= x2 and y1 <= y2
    assert entity.boxes[0] == (0.390625, 0.046875, 0.984375, 0.828125)


def test_object_without_phrase_is_kept_with_empty_phrase():
    raw = "An image of<object><patch_index_0044><patch_index_0863></object> in snow."
    parsed = parse_grounded(split_markup(raw))
    (entity,) = parsed.entities
    assert entity.phrase == "" and entity.span[0] == entity.span[1]
    assert entity.boxes == ((0.390625, 0.046875, 0.984375, 0.828125),)


def test_generation_cut_off_inside_object_keeps_what_was_read():
    raw = (
        "An image of<phrase> two dogs</phrase><object><patch_index_0044><patch_index_0863>"
        "</delimiter_of_multi_objects/><patch_index_0100>"
    )
    (entity,) = parse_grounded(split_markup(raw)).entities
    assert entity.phrase == "two dogs"
    assert not entity.complete
    assert len(entity.boxes) == 1


def test_multiple_boxes_for_one_phrase():
    raw = (
        "<phrase> two dogs</phrase><object><patch_index_0044><patch_index_0863>"
        "</delimiter_of_multi_objects/><patch_index_0005><patch_index_0911></object>"
    )
    (entity,) = parse_grounded(split_markup(raw)).entities
    assert len(entity.boxes) == 2 and entity.complete


SNOWMAN_BOX = (0.390625, 0.046875, 0.984375, 0.828125)  # cells 44 and 863
D = "</delimiter_of_multi_objects/>"


@pytest.mark.parametrize(
    "inside,boxes",
    [
        ("", ()),  # an empty object: no box at all
        ("<patch_index_0001>" + D + "<patch_index_0044><patch_index_0863>", (SNOWMAN_BOX,)),  # a lone corner
        (D + "<patch_index_0044><patch_index_0863>", (SNOWMAN_BOX,)),  # an empty slot before the delimiter
        ("<patch_index_0044><patch_index_0863>" + D, (SNOWMAN_BOX,)),  # ... and after it
        ("<patch_index_1500><patch_index_0100>", ()),  # off the 32x32 grid: no box invented (1500 % 1024 = 476)
        ("<patch_index_0044><patch_index_0863>" + D + "<patch_index_0005><patch_index_9999>", (SNOWMAN_BOX,)),
    ],
    ids=["empty", "lone corner", "leading delimiter", "trailing delimiter", "index 1500", "index 9999"],
)
def test_malformed_objects_are_incomplete_and_keep_only_real_boxes(inside, boxes):
    raw = f"An image of<phrase> a cat</phrase><object>{inside}</object> here."
    (entity,) = parse_grounded(split_markup(raw)).entities
    assert entity.phrase == "a cat" and entity.boxes == boxes
    assert not entity.complete


def test_phrase_followed_by_words_then_object_is_not_linked():
    raw = "<phrase> a cat</phrase> and<object><patch_index_0044><patch_index_0863></object>"
    (entity,) = parse_grounded(split_markup(raw)).entities
    assert entity.phrase == ""


def test_unknown_angle_brackets_stay_text():
    parsed = parse_grounded(split_markup("a <b>bold</b> claim <patch_index_99999>"))
    assert parsed.text == "a <b>bold</b> claim <patch_index_99999>"
    assert parsed.entities == ()


@pytest.mark.parametrize("box", [(0.0, 0.0, 1.0, 1.0), (0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.5, 0.5), (0.99, 0.0, 1.0, 0.01)])
def test_patch_indices_agree_with_processor_and_stay_on_grid(box):
    ul, lr = box_to_patch_indices(box)
    assert 0 <= ul < GRID * GRID and 0 <= lr < GRID * GRID
    if box[2] > box[0] and box[3] > box[1] and box[2] < 1.0 and box[3] < 1.0:
        assert (ul, lr) == coordinate_to_patch_index(box, GRID)


@pytest.mark.parametrize("width,height", [(640, 480), (300, 1200), (33, 2000)])
def test_pixel_box_round_trip_stays_within_one_cell(width, height):
    box = (0.23 * width, 0.61 * height, 0.74 * width, 0.93 * height)
    normalized = normalize_box(box, width, height)
    back = to_pixels(patch_indices_to_box(*box_to_patch_indices(normalized)), width, height)
    cell_w, cell_h = width / GRID, height / GRID
    for got, want, cell in zip(back, box, (cell_w, cell_h, cell_w, cell_h)):
        assert abs(got - want) <= cell + 1


def test_location_tokens_format():
    assert location_tokens((0.0, 0.0, 1.0, 1.0)) == "<patch_index_0000><patch_index_1023>"
