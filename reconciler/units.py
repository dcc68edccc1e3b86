"""The units of a cell's desired state: the smallest parts that can be left out on their own.

A bad or unenforceable object must cost only itself (docs/design.md §6). To leave one out, every
part of a `CellState` that can be dropped without touching another is named by a `StateKey`
(reconciler/keys.py), the name the incremental compiler knows objects by:

    container   one local container, by handle
    asg         one security group, by guid
    c2c         the c2c policies whose destination is one app, by that app's guid
    app         the instance addresses of one app, by its guid
    egress      one dynamic egress policy, by its id (or a digest of it, when it has none)

Leaving any of them out allows less, never more: an unknown container is rejected as an unknown
source, a missing group or policy allows nothing, a missing instance set is no c2c source. The
cell's config is not a unit: its deny networks must never silently vanish.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable
from typing import TypeVar

from events.models import CellState, EgressPolicy
from reconciler.keys import Kind, StateKey

T = TypeVar("T")

# The order in which units are suspected when a state fails as a whole (reconciler/isolation.py):
# the objects that bring rules first, containers last, because leaving a container out hides every
# rule that applies through it, and would take the blame for a group that is at fault.
_SUSPECT_ORDER = {kind: i for i, kind in enumerate((Kind.GROUP, Kind.EGRESS, Kind.C2C, Kind.APP, Kind.CONTAINER))}


def suspect_order(unit: StateKey) -> tuple[int, str]:
    return _SUSPECT_ORDER[unit.kind], unit.id


def egress_policy_key(policy: EgressPolicy) -> str:
    """An egress policy's id, or (policies need none) a digest of its content: stable across restarts."""
    return policy.id or "sha-" + hashlib.blake2s(policy.model_dump_json().encode(), digest_size=6).hexdigest()


def units_of(state: CellState) -> list[StateKey]:
    """Every unit of `state`, in one deterministic order: by kind, as suspected first, then by id."""
    units = {StateKey(Kind.CONTAINER, c.handle) for c in state.containers}
    units |= {StateKey(Kind.GROUP, g.guid) for g in state.security_groups}
    units |= {StateKey(Kind.C2C, p.destination.id) for p in state.c2c_policies}
    units |= {StateKey(Kind.APP, app) for app in state.app_instances}
    units |= {StateKey(Kind.EGRESS, egress_policy_key(p)) for p in state.egress_policies}
    return sorted(units, key=suspect_order)


def without(state: CellState, units: Collection[StateKey]) -> CellState:
    """`state` with `units` left out (the same objects otherwise, so the compiler's caches still hit)."""
    if not units:
        return state
    keys: dict[Kind, set[str]] = {kind: set() for kind in Kind}
    for u in units:
        keys[u.kind].add(u.id)
    return state.model_copy(
        update={
            "containers": _keep(state.containers, keys[Kind.CONTAINER], lambda c: c.handle),
            "security_groups": _keep(state.security_groups, keys[Kind.GROUP], lambda g: g.guid),
            "c2c_policies": _keep(state.c2c_policies, keys[Kind.C2C], lambda p: p.destination.id),
            "egress_policies": _keep(state.egress_policies, keys[Kind.EGRESS], egress_policy_key),
            "app_instances": {a: addrs for a, addrs in state.app_instances.items() if a not in keys[Kind.APP]},
        }
    )


def _keep(items: Iterable[T], dropped: set[str], key: Callable[[T], str]) -> list[T]:
    kept = list(items)
    return [i for i in kept if key(i) not in dropped] if dropped else kept
