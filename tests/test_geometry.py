"""Box geometry: the one module every front end's box maths goes through."""

from hypothesis import given
from hypothesis import strategies as st

from kosmos_demo.geometry import box_iou, cell_overlap, clamp_point, clip_box, scale_box

coordinate = st.floats(-5000, 5000, allow_nan=False)
side = st.integers(1, 4000)


def test_scale_box_maps_a_full_box_to_the_full_display():
    assert scale_box((0, 0, 3000, 1500), (3000, 1500), (1024, 512)) == (0, 0, 1024, 512)


@given(st.tuples(coordinate, coordinate, coordinate, coordinate), st.tuples(side, side), st.tuples(side, side))
def test_scaled_boxes_stay_inside_and_keep_a_pixel(box, source, target):
    x1, y1, x2, y2 = scale_box(box, source, target)
    assert 0 <= x1 < x2 <= target[0] and 0 <= y1 < y2 <= target[1]


@given(st.tuples(coordinate, coordinate, coordinate, coordinate), st.tuples(side, side))
def test_clipped_boxes_are_sorted_inside_or_none(box, size):
    clipped = clip_box(box, size)
    if clipped is not None:
        x1, y1, x2, y2 = clipped
        assert 0 <= x1 <= x2 - 1 and x2 <= size[0] and 0 <= y1 <= y2 - 1 and y2 <= size[1]


def test_clamped_points_and_iou():
    assert clamp_point(-3, 900, (640, 480)) == (0.0, 480.0)
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0 and box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert cell_overlap((0, 0, 0.5, 0.5), 4).sum() == 4.0  # a quarter of 16 cells, fully covered
