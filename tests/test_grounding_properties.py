"""Property-based checks of the grounding parser and the box geometry."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from kosmos_demo.grounding import (
    DELIMITER,
    OBJECT_CLOSE,
    OBJECT_OPEN,
    PHRASE_CLOSE,
    PHRASE_OPEN,
    TAG_TOKENS,
    parse_grounded,
    split_markup,
)
from kosmos_demo.geometry import GRID, box_to_patch_indices, normalize_box, patch_indices_to_box, to_pixels

location = st.integers(0, GRID * GRID - 1).map(lambda i: ("location", f"<patch_index_{i:04d}>"))
tag = st.sampled_from(TAG_TOKENS + (PHRASE_OPEN, PHRASE_CLOSE, OBJECT_OPEN, OBJECT_CLOSE, DELIMITER)).map(lambda t: ("tag", t))
text = st.text(max_size=8).map(lambda t: ("text", t))
pieces = st.lists(st.one_of(location, tag, text), max_size=60)
sizes = st.tuples(st.integers(1, 9000), st.integers(1, 9000))


@settings(max_examples=400, deadline=None)
@given(pieces, sizes)
def test_any_token_string_parses_and_boxes_stay_inside(pieces, size):
    parsed = parse_grounded(pieces)
    _assert_inside(parsed, *size)
    assert len(parsed.piece_spans) == len(pieces)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_raw_string_parses(raw):
    parsed = parse_grounded(split_markup(raw))
    assert "".join(p for _, p in split_markup(raw)) == raw
    assert parsed.text == parsed.text.strip()


coordinate = st.floats(-0.5, 1.5, allow_nan=False)


@settings(max_examples=400, deadline=None)
@given(sizes, coordinate, coordinate, coordinate, coordinate)
def test_pixel_to_tokens_to_pixel_within_one_cell(size, a, b, c, d):
    width, height = size
    box = (a * width, b * height, c * width, d * height)
    normalized = normalize_box(box, width, height)
    ul, lr = box_to_patch_indices(normalized)
    assert 0 <= ul < GRID * GRID and 0 <= lr < GRID * GRID
    back = patch_indices_to_box(ul, lr)
    assert back[0] <= back[2] and back[1] <= back[3]
    for got, want in zip(back, normalized):
        assert abs(got - want) <= 1.0 / GRID + 1e-9
    pixels = to_pixels(back, width, height)
    for got, want, side in zip(pixels, normalized, (width, height, width, height)):
        assert abs(got - want * side) <= side / GRID + 1


# --- added by the reliability pass: markup-dense raw strings, real token ids, the textual round trip ---

markup = st.sampled_from(TAG_TOKENS + (DELIMITER,)) | st.integers(0, 9999).map(lambda i: f"<patch_index_{i:04d}>") \
    | st.sampled_from(["<patch_index_12>", "<patch_index_00001>", "<phrase", "</object", "<", ">", "<b>"])
dense_raw = st.lists(markup | st.text(max_size=6), max_size=40).map("".join)


def _assert_inside(parsed, width, height):
    for entity in parsed.entities:
        start, end = entity.span
        assert 0 <= start <= end <= len(parsed.text)
        for box in entity.boxes:
            x1, y1, x2, y2 = box
            assert 0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0
            px1, py1, px2, py2 = to_pixels(box, width, height)
            assert 0 <= px1 <= px2 <= width and 0 <= py1 <= py2 <= height


@settings(max_examples=400, deadline=None)
@given(dense_raw, sizes)
def test_markup_dense_strings_parse_and_boxes_stay_inside(raw, size):
    """Out-of-range location tokens (<patch_index_9999>), stray and half tags: never an exception."""
    pieces = split_markup(raw)
    assert "".join(p for _, p in pieces) == raw
    parsed = parse_grounded(pieces)
    assert len(parsed.piece_spans) == len(pieces)
    _assert_inside(parsed, *size)


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.integers(0, 10**6), max_size=24), size=sizes)
def test_any_token_ids_from_the_model_parse_and_stay_inside(tiny_engine, ids, size):
    """What the engine does with generated ids, for any ids at all (folded into the vocabulary)."""
    vocab = len(tiny_engine.processor.tokenizer)
    pieces = tiny_engine._pieces([0] + [i % vocab for i in ids], [])  # no slots: all but the first id are read
    parsed = parse_grounded([(kind, text) for text, kind in pieces])
    assert len(parsed.piece_spans) == len(pieces)
    _assert_inside(parsed, *size)


@settings(max_examples=300, deadline=None)
@given(sizes, coordinate, coordinate, coordinate, coordinate)
def test_pixel_box_through_prompt_text_and_back_within_one_cell(size, a, b, c, d):
    """The region tasks' path: pixels -> <patch_index_...> text -> parsed -> pixels, within one cell."""
    from kosmos_demo.grounding import location_tokens

    width, height = size
    normalized = normalize_box((a * width, b * height, c * width, d * height), width, height)
    raw = f"<phrase> it</phrase><object>{location_tokens(normalized)}</object> is"
    (entity,) = parse_grounded(split_markup(raw)).entities
    assert entity.phrase == "it" and entity.complete
    back = to_pixels(entity.boxes[0], width, height)
    for got, want, side in zip(back, normalized, (width, height, width, height)):
        assert abs(got - want * side) <= side / GRID + 1
    assert back[0] <= back[2] and back[1] <= back[3]


@settings(max_examples=400, deadline=None)
@given(dense_raw)
def test_every_box_comes_from_two_cells_on_the_grid_and_complete_means_boxes(raw):
    """No box from an index outside 0..1023 (no wrapping), and an entity that says complete has a box."""
    cells = {int(i) for i in re.findall(r"<patch_index_(\d{4})>", raw) if int(i) < GRID * GRID}
    possible = {patch_indices_to_box(a, b) for a in cells for b in cells}
    for entity in parse_grounded(split_markup(raw)).entities:
        assert set(entity.boxes) <= possible
        assert entity.boxes or not entity.complete
