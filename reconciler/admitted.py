"""The part of the store the compiler sees: everything in it that can be enforced right now.

The store (reconciler/store.py) holds the last good version of every object. Some of them cannot
be enforced as things stand, and each such object is left out alone, while the condition lasts:

- a container outside the overlay networks of the current config, or whose address another
  container's newer registration holds (reconciler/conflicts.py; the loser of a host port keeps
  everything but that mapping);
- a security group, egress policy or container's own rules that need more set elements than
  `limits.max_elements_per_group` (counted before any compile: a rule of 6,000 destinations and
  300 ports would compile for half a minute into 1.8 million elements);
- an object the compiler or the kernel refused (found by reconciler/isolation.py): it stays out
  until a message brings another version of it (compared by identity: a replay that finds the
  same content keeps the same object, reconciler/store.py `adopt`).

`AdmittedState` is the store as the incremental compiler reads it (incremental.DesiredState), with
those objects hidden. `changed(key)` is told of every change of the store and returns the keys
whose visible object changed: the keys to hand to the compiler. The work follows the change: a
group's size is counted when the group changes, the local containers are settled again (a few
hundred at most) when one of them or the config changes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TypeVar

from events.models import CellConfig, CellState, Container, EgressPolicy, SecurityGroup
from reconciler.admission import Limits, Unusable, rule_elements
from reconciler.compact import Addresses, StoredGroup, StoredPolicies
from reconciler.conflicts import CNI_REGISTRATION, NATS_RECORD, Ranked, resolve
from reconciler.keys import Kind, StateKey
from reconciler.store import DesiredStore
from reconciler.units import egress_policy_key

V = TypeVar("V")


class _Visible(Mapping[str, V]):
    """`base` without the keys in `hidden` (both read live)."""

    __slots__ = ("_base", "_hidden")

    def __init__(self, base: Mapping[str, V], hidden: Mapping[str, object]) -> None:
        self._base = base
        self._hidden = hidden

    def __getitem__(self, key: str) -> V:
        if key in self._hidden:
            raise KeyError(key)
        return self._base[key]

    def __contains__(self, key: object) -> bool:
        return key in self._base and key not in self._hidden

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._base if k not in self._hidden)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class AdmittedState:
    def __init__(self, store: DesiredStore, limits: Limits) -> None:
        self._store = store
        self.limits = limits
        # Per kind, the ids left out and why; quarantined and oversized entries remember the object
        # they were decided for, so a new version of it is judged again.
        self._quarantined: dict[StateKey, tuple[object, str]] = {}
        self._oversized: dict[StateKey, tuple[object, str]] = {}
        self._hidden: dict[Kind, dict[str, str]] = {kind: {} for kind in Kind}
        self._containers: dict[str, Container] = {}  # NATS records shown (a mapping lost: a copy without it)
        self._registered: dict[str, Container] = {}  # registrations shown
        self._losses: dict[str, list[Unusable]] = {}  # per handle, what settling the local containers left out
        self._egress: list[EgressPolicy] = []
        # The addresses and host ports each local container candidate claims, and who claims each:
        # a container's change can only move the containers it shares a claim with, transitively.
        self._claims_of: dict[str, set[Claim]] = {}
        self._claimants: dict[Claim, set[str]] = {}

    # ------------------------------------------------------------------ incremental.DesiredState

    @property
    def cell_id(self) -> str:
        return self._store.cell_id

    @property
    def default_config(self) -> CellConfig:
        return self._store.default_config

    @property
    def config(self) -> CellConfig | None:
        return self._store.config

    @property
    def groups(self) -> Mapping[str, StoredGroup]:
        return _Visible(self._store.groups, self._hidden[Kind.GROUP])

    @property
    def last_group(self) -> tuple[StoredGroup, SecurityGroup] | None:
        return self._store.last_group

    @property
    def apps(self) -> Mapping[str, Addresses]:
        return _Visible(self._store.apps, self._hidden[Kind.APP])

    @property
    def c2c(self) -> Mapping[str, StoredPolicies]:
        return _Visible(self._store.c2c, self._hidden[Kind.C2C])

    @property
    def egress(self) -> list[EgressPolicy]:
        return self._egress

    @property
    def containers(self) -> Mapping[str, Container]:
        return self._containers

    @property
    def registered(self) -> Mapping[str, Container]:
        return self._registered

    # ------------------------------------------------------------------ keeping it current

    def changed(self, key: StateKey) -> list[StateKey]:
        """The store's object `key` changed; return the keys whose visible object changed with it."""
        match key.kind:
            case Kind.CONTAINER:
                return _keys(Kind.CONTAINER, self._settle_around(key.id) | {key.id})
            case Kind.CONFIG:
                return [key, *_keys(Kind.CONTAINER, self._settle_containers())]
            case Kind.EGRESS:
                self._settle_egress()
                return [key]
            case Kind.GROUP:
                group = self._store.groups.get(key.id)
                self._judge(key, group, None if group is None else group.elements)
                return [key]
            case Kind.APP:
                self._judge(key, self._store.apps.get(key.id), None)
                return [key]
            case Kind.C2C:
                self._judge(key, self._store.c2c.get(key.id), None)
                return [key]
        raise TypeError(f"unknown state key {key}")

    def everything_changed(self) -> None:
        """The store was filled anew (a saved snapshot loaded): judge every object once."""
        for guid, group in self._store.groups.items():
            self._judge(StateKey(Kind.GROUP, guid), group, group.elements)
        self._settle_egress()
        self._settle_containers()

    def quarantine(self, culprits: list[Unusable]) -> list[StateKey]:
        """Leave these out until their object changes; return the keys to hand to the compiler."""
        out: list[StateKey] = []
        for u in culprits:
            unit = u.unit
            if unit is None:
                continue
            self._quarantined[unit] = (self._object(unit), u.reason)
            if unit.kind is Kind.CONTAINER:
                out += _keys(Kind.CONTAINER, self._settle_around(unit.id) | {unit.id})
            elif unit.kind is Kind.EGRESS:
                self._settle_egress()
                out.append(StateKey(Kind.EGRESS))
            else:
                self._judge(unit, self._object(unit), None)
                out.append(unit)
        return out

    def _object(self, unit: StateKey) -> object:
        """The store's current object for a unit (None: it has none)."""
        match unit.kind:
            case Kind.CONTAINER:
                return self._store.registered.get(unit.id) or self._store.containers.get(unit.id)
            case Kind.GROUP:
                return self._store.groups.get(unit.id)
            case Kind.APP:
                return self._store.apps.get(unit.id)
            case Kind.C2C:
                return self._store.c2c.get(unit.id)
            case Kind.EGRESS:
                return next((p for p in self._store.egress if egress_policy_key(p) == unit.id), None)
        return None

    def _judge(self, unit: StateKey, obj: object, size: int | None) -> None:
        """Decide whether the object of `unit` (a group, app, c2c list or egress policy) is shown."""
        held = self._quarantined.get(unit)
        if held is not None and held[0] is not obj:
            del self._quarantined[unit]  # another version: it gets its chance
        if obj is None:
            self._oversized.pop(unit, None)
        elif size is not None:
            self._oversized.pop(unit, None)
            cap = self.limits.max_elements_per_group
            if size > cap:
                self._oversized[unit] = (obj, f"its rules need {size} set elements, over max_elements_per_group {cap}")
        reason = self._reason(unit, obj)
        if reason is None:
            self._hidden[unit.kind].pop(unit.id, None)
        else:
            self._hidden[unit.kind][unit.id] = reason

    def _reason(self, unit: StateKey, obj: object) -> str | None:
        for table in (self._quarantined, self._oversized):
            entry = table.get(unit)
            if entry is not None and entry[0] is obj and obj is not None:
                return entry[1]
        return None

    def _settle_egress(self) -> None:
        shown = []
        hidden = self._hidden[Kind.EGRESS]
        hidden.clear()
        for p in self._store.egress:
            unit = StateKey(Kind.EGRESS, egress_policy_key(p))
            self._judge(unit, p, rule_elements([p.egress_rule()]))
            if unit.id not in hidden:
                shown.append(p)
        self._egress = shown

    def _settle_containers(self) -> set[str]:
        """Decide again which local containers are shown, and as what; return the handles whose
        shown container changed (appeared, went, or is another object). All of them: a new config."""
        self._claims_of.clear()
        self._claimants.clear()
        known = self._containers.keys() | self._registered.keys() | self._hidden[Kind.CONTAINER].keys()
        return self._settle(self._store.registered.keys() | self._store.containers.keys() | known | self._losses.keys())

    def _settle_around(self, handle: str) -> set[str]:
        """As `_settle_containers`, for what a change of container `handle` can move: it, and every
        container it shares an address or a host port with (before or after), transitively."""
        seen = {handle}
        todo = [handle]
        for claim in self._claims_of.get(handle, ()):
            todo += self._claimants[claim]
        candidate = self._candidate(handle)
        if candidate is not None:
            for claim in _claims(candidate):
                todo += self._claimants.get(claim, ())
        while todo:
            h = todo.pop()
            if h not in seen:
                seen.add(h)
                for claim in self._claims_of.get(h, ()):
                    todo += self._claimants[claim]
        return self._settle(seen)

    def _candidate(self, handle: str) -> Container | None:
        """The container the store has for `handle`: the CNI plugin's registration, else NATS's record."""
        return self._store.registered.get(handle) or self._store.containers.get(handle)

    def _settle(self, handles: set[str]) -> set[str]:
        """Decide again which of `handles` are shown and as what (no other container shares a claim
        with them); return the handles whose shown container changed."""
        store = self._store
        cfg = store.config or store.default_config
        cap = self.limits.max_elements_per_group
        hidden = self._hidden[Kind.CONTAINER]
        candidates: list[Ranked] = []
        for handle in handles:
            self._unclaim(handle)
            hidden.pop(handle, None)
            self._losses.pop(handle, None)
            c = self._candidate(handle)
            if c is None:
                continue
            unit = StateKey(Kind.CONTAINER, handle)
            held = self._quarantined.get(unit)
            if held is not None and held[0] is not c:
                del self._quarantined[unit]
                held = None
            if held is not None:
                hidden[handle] = held[1]
            elif c.ip not in cfg.overlay_network:
                hidden[handle] = f"address {c.ip} is outside the overlay network {cfg.overlay_network}"
            elif c.ipv6 is not None and cfg.overlay_network6 is not None and c.ipv6 not in cfg.overlay_network6:
                hidden[handle] = f"address {c.ipv6} is outside overlay_network6 {cfg.overlay_network6}"
            elif not cfg.dynamic_asgs and (n := rule_elements(c.creation_rules())) > cap:
                hidden[handle] = f"its own rules need {n} set elements, over max_elements_per_group {cap}"
            elif handle in store.registered:
                candidates.append(Ranked(c, (CNI_REGISTRATION, store.registration_order.get(handle, 0))))
            else:
                candidates.append(Ranked(c, (NATS_RECORD, store.container_seq(handle))))
        for candidate in candidates:
            self._claim(candidate.container)
        kept, lost = resolve(candidates)
        kept_handles = {c.handle for c in kept}
        for u in lost:
            if u.unit is not None and u.unit.id not in kept_handles:
                hidden[u.unit.id] = u.reason
        for u in lost:
            if u.unit is not None and u.unit.id not in hidden:
                self._losses.setdefault(u.unit.id, []).append(u)
        for h in handles & hidden.keys():
            self._losses[h] = [Unusable(StateKey(Kind.CONTAINER, h), hidden[h])]
        before = {h: self.local(h) for h in handles}
        # A container shown without a lost mapping is a new copy each time: keep showing the one
        # shown before if it is equal, so the compiler has nothing to redo for it.
        for h in handles:
            self._registered.pop(h, None)
            self._containers.pop(h, None)
        for c in kept:
            prev = before.get(c.handle)
            shown = prev if prev is not None and prev is not c and prev == c else c
            (self._registered if c.handle in store.registered else self._containers)[c.handle] = shown
        return {h for h in handles if before.get(h) is not self.local(h)}

    def _claim(self, c: Container) -> None:
        claims = _claims(c)
        self._claims_of[c.handle] = claims
        for claim in claims:
            self._claimants.setdefault(claim, set()).add(c.handle)

    def _unclaim(self, handle: str) -> None:
        for claim in self._claims_of.pop(handle, ()):
            holders = self._claimants[claim]
            holders.discard(handle)
            if not holders:
                del self._claimants[claim]

    # ------------------------------------------------------------------ what the reconciler shows

    def left_out(self) -> list[Unusable]:
        """Everything left out now, and why (a container that lost a host port is kept, without it)."""
        out = [u for h in sorted(self._losses) for u in self._losses[h]]
        for kind in (Kind.GROUP, Kind.APP, Kind.C2C, Kind.EGRESS):
            out += [Unusable(StateKey(kind, i), why) for i, why in sorted(self._hidden[kind].items())]
        return out

    def local(self, handle: str) -> Container | None:
        return self._registered.get(handle) or self._containers.get(handle)

    def state(self) -> CellState:
        """Everything shown, as one document: what the reference compile (compile.py) and the search for
        culprits (isolation.py) work on. A pass over the foundation: for the rare failure only."""
        containers = [*self._containers.values(), *self._registered.values()]
        return CellState.model_construct(
            cell_id=self.cell_id,
            containers=sorted(containers, key=lambda c: c.handle),
            security_groups=[g.group() for _, g in sorted(self.groups.items())],
            c2c_policies=[p for _, ps in sorted(self.c2c.items()) for p in ps.policies()],
            egress_policies=list(self._egress),
            app_instances={app: addrs.addresses() for app, addrs in sorted(self.apps.items())},
            config=self.config or self.default_config,
        )


# What a container claims for itself alone on this cell: its addresses, and its host ports.
Claim = tuple[str, object]


def _claims(c: Container) -> set[Claim]:
    out: set[Claim] = {("address", a) for a in (c.ip, c.ipv6) if a is not None}
    out |= {("host port", m.host_port) for m in c.port_mappings}
    return out


def _keys(kind: Kind, ids: set[str]) -> list[StateKey]:
    return [StateKey(kind, i) for i in sorted(ids)]
