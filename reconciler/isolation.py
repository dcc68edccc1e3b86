"""Finding the object the compiler or the kernel refuses, so that it alone is left out.

Admission (reconciler/admission.py) stops what is known to be unusable before it reaches the
compiler. This is the net under it: when a pass still fails in a way that no retry will fix — the
compiler or the transaction's own check raises, or the kernel refuses a dry run of the whole
table — the failing units are searched for (`find_culprits`), and the pass runs again without
them. Everything else is then enforced, instead of the whole cell stalling
on one object.

The search relies on one property of the desired state: leaving units out never makes a state
fail that passed (docs/design.md §6: dropping allows less, and needs less). It finds the
shortest prefix of the unit list whose removal makes the state pass, by bisection; the last unit
of that prefix is a culprit. Repeated until the state passes, that costs about log2(units)
checks per culprit, and is bounded by `max_checks`.

The culprits are then left out by reconciler/admitted.py until a new version of their object
arrives (reconciler/document.py simply drops them from the document).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from reconciler.keys import StateKey

log = logging.getLogger(__name__)

Check = Callable[[frozenset[StateKey]], Awaitable[bool]]


async def find_culprits(units: list[StateKey], passes: Check, max_checks: int = 200) -> list[StateKey] | None:
    """The units whose removal makes `passes` true, found by bisection over `units` (in order).

    None when no removal helps (the failure is not any object's fault), or when `max_checks` were
    spent before the state passed."""
    if not await passes(frozenset(units)):
        return None
    excluded: frozenset[StateKey] = frozenset()
    culprits: list[StateKey] = []
    failing = not await passes(excluded)
    checks = 2
    while failing:
        candidates = [u for u in units if u not in excluded]
        lo, hi = 0, len(candidates)  # failing with candidates[:lo] removed; passing with candidates[:hi] removed
        while hi - lo > 1:
            if checks >= max_checks:
                return None
            mid = (lo + hi) // 2
            checks += 1
            if await passes(excluded | frozenset(candidates[:mid])):
                hi = mid
            else:
                lo = mid
        culprit = candidates[hi - 1]
        culprits.append(culprit)
        excluded |= {culprit}
        checks += 1
        failing = not await passes(excluded)
    return culprits
