"""The one union of integer intervals, used by the canonical rule and by the compiler alike."""

from hypothesis import given, settings
from hypothesis import strategies as st

from events.intervals import merge_intervals


def covered(intervals):
    return {n for lo, hi in intervals for n in range(lo, hi + 1)}


def test_merge_intervals_joins_overlapping_and_adjacent():
    assert merge_intervals([(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]) == [(1, 9), (20, 30)]


def test_touching_intervals_can_stay_apart():
    assert merge_intervals([(4, 9), (1, 3), (2, 3)], adjacent=False) == [(1, 3), (4, 9)]
    assert merge_intervals([]) == []


interval = st.tuples(st.integers(-20, 60), st.integers(0, 15)).map(lambda t: (t[0], t[0] + t[1]))


@settings(max_examples=500, deadline=None)
@given(st.lists(interval, max_size=12), st.booleans(), st.randoms(use_true_random=False))
def test_merged_intervals_cover_the_same_integers_sorted_and_disjoint(intervals, adjacent, rnd):
    merged = merge_intervals(intervals, adjacent)
    assert covered(merged) == covered(intervals)
    assert all(lo <= hi for lo, hi in merged)
    gap = 1 if adjacent else 0  # joined when touching: a gap of at least one integer is left between
    assert all(a[1] + gap < b[0] for a, b in zip(merged, merged[1:])), "sorted, disjoint (and apart)"
    shuffled = rnd.sample(intervals, len(intervals))
    assert merge_intervals(shuffled, adjacent) == merged
