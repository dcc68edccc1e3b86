"""Inclusive integer intervals and their union: the one merge of the project.

The canonical egress rule (events/rules.py) merges its address and port ranges with it, and the
compiler (reconciler/boxes.py, reconciler/compile.py) merges set element fields with it. The
function knows plain integers only, nothing of Cloud Foundry or nftables. It lives here, in the
lowest layer that needs it: events/ may import neither nft/ nor reconciler/, while reconciler/
builds on events/ anyway, so this is the one place every user can import it from.
"""

from __future__ import annotations

from collections.abc import Iterable

Interval = tuple[int, int]
"""An inclusive range of integers (lo, hi), lo <= hi: ports, protocol numbers, addresses as numbers."""


def merge_intervals(intervals: Iterable[Interval], adjacent: bool = True) -> list[Interval]:
    """The union of inclusive intervals as sorted, disjoint intervals: overlapping ones merged, and
    touching ones too (`(1, 3)` and `(4, 9)` become `(1, 9)`) unless `adjacent` is False."""
    out: list[Interval] = []
    reach = 1 if adjacent else 0
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + reach:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out
