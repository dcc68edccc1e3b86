"""One pass's plan: compile, hold the ruleset to the element caps, diff, render. Pure CPU work.

`plan_pass` is the daemon's: the incremental compiler's changes, diffed against what was committed.
The apply loop runs it on a worker thread, so the event loop — the CNI socket, `/healthz`, NATS —
keeps answering while a big state compiles (a cold start, a new config, a group at the element
cap); what arrives meanwhile waits for the pass to return (reconciler/daemon.py). `plan` is the
same from a whole `CellState` with the reference compiler: the one-shot commands' and the search
for culprits' (reconciler/isolation.py). Nothing here touches the store's content, the kernel or
the clock.

Element caps (reconciler config `limits`): a security group whose rules compile to more than
`max_elements_per_group` elements is left out (admission already refuses the ones whose raw size
says so before any compile); if the whole table still needs more than `max_elements_per_cell`,
the biggest contributors — security groups and c2c destinations, largest first — are left out
until it fits. Each is reported; everything else is enforced.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from events.models import CellState
from nft import Ruleset, Touched, Transaction, diff
from reconciler.admission import Limits, Unusable
from reconciler.compile import Compiler
from reconciler.incremental import IncrementalCompiler
from reconciler.keys import Kind, StateKey
from reconciler.units import suspect_order, without

# Set names the compiler gives to one unit's elements (reconciler/compile.py).
_GROUP_SET = re.compile(r"sg-(?P<key>.+?)(?:-log)?-(?:ports|all|icmp)[46]")
_C2C_SET = re.compile(r"c2c-(?P<key>.+)")


class CapError(ValueError):
    """The table needs more elements than `max_elements_per_cell` even without every group and policy."""


@dataclass(frozen=True, slots=True)
class Plan:
    state: CellState
    """The state the plan enforces: the input without what the caps left out."""
    desired: Ruleset
    tx: Transaction
    """Rendered already: the runner commits it without rendering on the event loop."""
    oversized: list[Unusable]


def plan(compiler: Compiler, state: CellState, actual: Ruleset | None, *, rebuild: bool, limits: Limits) -> Plan:
    """The transaction that makes `actual` equal the compile of `state`, whole-table if `rebuild`.

    Raises what the compiler raises, `TransactionError` if the transaction refuses an object, and
    `CapError`."""
    desired = compiler.compile(state)
    over = oversized(desired, limits)
    if over:
        state = without(state, {u.unit for u in over if u.unit is not None})
        desired = compiler.compile(state)
        total = desired.counts()[2]
        if total > limits.max_elements_per_cell:
            cap = limits.max_elements_per_cell
            raise CapError(f"the table needs {total} elements, over max_elements_per_cell {cap}")
    tx = diff(desired, None if rebuild else actual)
    if rebuild:
        tx.recreate_table()
    tx.render()
    return Plan(state, desired, tx, over)


@dataclass(frozen=True, slots=True)
class Pass:
    desired: Ruleset
    tx: Transaction | None
    """Rendered already; None when `oversized` must be left out first (then compile again)."""
    oversized: list[Unusable]


def plan_pass(
    compiler: IncrementalCompiler, actual: Ruleset | None, *, committed: bool, rebuild: bool, limits: Limits
) -> Pass:
    """Compile what changed; unless something is over the element caps, the transaction that makes
    `actual` (the kernel's table; `committed`: the ruleset we committed last, so only what the compile
    touched can differ) equal the result, whole-table if `rebuild`. Raises what the compiler raises,
    and `TransactionError` if the transaction refuses an object."""
    desired = compiler.compile()
    over = oversized(desired, limits, compiler.touched)
    if over:
        return Pass(desired, None, over)  # what this compile touched is taken with the next one's
    touched = compiler.take_touched()
    if rebuild:
        tx = diff(desired, None)
        tx.recreate_table()
    else:
        tx = diff(desired, actual, only=touched if committed else None)
    tx.render()
    return Pass(desired, tx, [])


def oversized(desired: Ruleset, limits: Limits, touched: Touched | None = None) -> list[Unusable]:
    """The units whose elements exceed the per-group cap, then the biggest ones until the table fits the cell's.

    With `touched` (what changed since everything was last checked), only the groups whose sets it
    names are sized: the others have not grown. The cell's cap is checked on the whole table."""
    total = sum(map(len, desired.elements.values()))
    if touched is not None and total <= limits.max_elements_per_cell:
        groups = {m["key"] for name in touched.names if (m := _GROUP_SET.fullmatch(name))}
        return _over_group_cap({StateKey(Kind.GROUP, g): _group_size(desired, g) for g in groups}, limits)
    sizes: dict[StateKey, int] = defaultdict(int)
    for name, elements in desired.elements.items():
        if m := _GROUP_SET.fullmatch(name):
            sizes[StateKey(Kind.GROUP, m["key"])] += len(elements)
        elif m := _C2C_SET.fullmatch(name):
            sizes[StateKey(Kind.C2C, m["key"])] += len(elements)
    out = _over_group_cap(sizes, limits)
    total -= sum(sizes[u.unit] for u in out if u.unit is not None)
    dropped = {u.unit for u in out}
    for unit, n in sorted(sizes.items(), key=lambda item: (-item[1], suspect_order(item[0]))):
        if total <= limits.max_elements_per_cell:
            break
        if unit not in dropped:
            out.append(Unusable(unit, f"left out for max_elements_per_cell ({n} of the table's elements)"))
            total -= n
    return out


def _over_group_cap(sizes: Mapping[StateKey, int], limits: Limits) -> list[Unusable]:
    out = []
    for unit, n in sorted(sizes.items(), key=lambda item: suspect_order(item[0])):
        if unit.kind is Kind.GROUP and n > limits.max_elements_per_group:
            out.append(Unusable(unit, f"its rules compile to {n} set elements, over max_elements_per_group"))
    return out


def _group_size(desired: Ruleset, guid: str) -> int:
    """The elements of one security group's sets (reconciler/compile.py names them)."""
    names = (f"sg-{guid}{log}-{kind}{v}" for log in ("", "-log") for kind in ("ports", "all", "icmp") for v in (4, 6))
    return sum(len(desired.elements.get(name, ())) for name in names)
