"""Disjoint boxes: the union of overlapping multi-field ranges as non-overlapping elements.

nftables interval sets, concatenated ones included, refuse elements that overlap
("conflicting intervals" / "File exists"), while ASG rules and c2c policies overlap all the
time (a /8 rule beside a /24 rule, ports 80-90 beside 85-100). So before elements reach the
kernel, the union of all boxes (one range per key field) is rewritten as disjoint boxes that
cover exactly the same points, and adjacent boxes are merged so the output is canonical: the
same union always yields the same elements, whatever the input order or duplication.

The sweep goes field by field; `order` picks which field to sweep first. Sweeping the fields
with few distinct boundaries first (protocol, then port, then address) keeps the work and
the element count small for firewall-shaped data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from events.intervals import Interval, merge_intervals

Box = tuple[Interval, ...]


def _disjoint(boxes: Sequence[Box], adjacent: bool = True) -> list[Box]:
    """Disjoint cover of `boxes` (all of the same arity), sweeping field 0 first. `adjacent`
    decides whether touching intervals of the last field are joined."""
    if not boxes:
        return []
    if len(boxes[0]) == 1:
        return [(iv,) for iv in merge_intervals((b[0] for b in boxes), adjacent)]
    # Elementary intervals of field 0: between consecutive boundaries, the set of boxes
    # covering a point does not change, so neither does the union of their other fields.
    bounds = sorted({b[0][0] for b in boxes} | {b[0][1] + 1 for b in boxes})
    starts = sorted(boxes, key=lambda b: b[0][0])
    active: list[Box] = []
    nxt = 0
    out: list[Box] = []
    prev_iv: Interval | None = None
    prev_rest: list[Box] | None = None
    for i in range(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1] - 1
        while nxt < len(starts) and starts[nxt][0][0] <= lo:
            active.append(starts[nxt])
            nxt += 1
        active = [b for b in active if b[0][1] >= lo]
        rest = _disjoint([b[1:] for b in active], adjacent) if active else []
        if prev_rest is not None and prev_iv is not None and rest == prev_rest and prev_iv[1] + 1 == lo:
            prev_iv = (prev_iv[0], hi)
            continue
        if prev_iv is not None and prev_rest:
            out.extend((prev_iv,) + r for r in prev_rest)
        prev_iv, prev_rest = (lo, hi), rest
    if prev_iv is not None and prev_rest:
        out.extend((prev_iv,) + r for r in prev_rest)
    return out


def disjoint_boxes(boxes: Iterable[Box], order: Sequence[int] | None = None, *, adjacent: bool = True) -> list[Box]:
    """Rewrite the union of `boxes` as sorted, pairwise disjoint boxes covering the same points.

    `order` is a permutation of field indexes giving the sweep order; the result is always in
    the input's field order. With `adjacent=False` the last swept field keeps touching intervals
    apart: a set of single addresses then stays one element per address, so adding an address
    is one element added, never a range replaced.
    """
    unique = list(dict.fromkeys(boxes))
    if not unique:
        return []
    arity = len(unique[0])
    perm = list(order) if order is not None else list(range(arity))
    if sorted(perm) != list(range(arity)):
        raise ValueError(f"sweep order {perm} is not a permutation of {arity} fields")
    swept = _disjoint([tuple(b[i] for i in perm) for b in unique], adjacent)
    inverse = [perm.index(i) for i in range(arity)]
    return sorted(tuple(b[j] for j in inverse) for b in swept)
