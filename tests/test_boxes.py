"""The disjoint-box rewrite must cover exactly the same points as its input, with no overlaps."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.boxes import disjoint_boxes


def points(boxes):
    out = set()
    for b in boxes:
        out |= set(itertools.product(*[range(lo, hi + 1) for lo, hi in b]))
    return out


def test_overlapping_port_ranges_on_nested_networks():
    # 10.0.0.0/8 tcp 80-90 and 10.1.0.0/16 tcp 85-100, addresses shrunk to small ints.
    wide, narrow = (0, 99), (10, 19)
    out = disjoint_boxes([(wide, (6, 6), (80, 90)), (narrow, (6, 6), (85, 100))], order=(1, 2, 0))
    assert points(out) == points([(wide, (6, 6), (80, 90)), (narrow, (6, 6), (85, 100))])
    assert out == [((0, 99), (6, 6), (80, 90)), ((10, 19), (6, 6), (91, 100))]


def test_duplicates_and_input_order_do_not_change_the_result():
    a = [((1, 5), (1, 1)), ((3, 9), (1, 2)), ((1, 5), (1, 1))]
    assert disjoint_boxes(a) == disjoint_boxes(list(reversed(a))) == disjoint_boxes(a[:2])


def test_bad_order_is_rejected():
    try:
        disjoint_boxes([((1, 2), (3, 4))], order=(0, 0))
    except ValueError as e:
        assert "permutation" in str(e)
    else:
        raise AssertionError("expected ValueError")


interval = st.tuples(st.integers(0, 12), st.integers(0, 5)).map(lambda t: (t[0], t[0] + t[1]))


def test_touching_intervals_can_stay_apart_so_adding_one_never_replaces_a_range():
    single = [((10, 10), (6, 6), (80, 80)), ((11, 11), (6, 6), (80, 80))]
    assert disjoint_boxes(single, order=(1, 2, 0)) == [((10, 11), (6, 6), (80, 80))]
    assert disjoint_boxes(single, order=(1, 2, 0), adjacent=False) == sorted(single)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(interval, interval, interval), max_size=8), st.permutations([0, 1, 2]), st.booleans())
def test_disjoint_boxes_cover_the_same_points_without_overlap(boxes, order, adjacent):
    out = disjoint_boxes(boxes, order=order, adjacent=adjacent)
    assert points(out) == points(boxes)
    assert sum(len(points([b])) for b in out) == len(points(out)), "boxes overlap"
    assert out == disjoint_boxes(list(reversed(boxes)), order=order, adjacent=adjacent)
