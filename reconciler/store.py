"""The desired state of one cell, as the reconciler knows it.

Fed by whole-state messages (from the JetStream replay and live updates) and by the CNI
plugin's registrations; read by the compiler through reconciler/admitted.py, which leaves out
what cannot be enforced. Applying a message only records it and reports whether anything
changed: no compilation, no kernel I/O (Felix's OnUpdate/apply split).

Order: every message comes with its stream sequence, which the JetStream server assigns as it
stores the message. Per subject the store keeps the message with the highest sequence, so a
re-delivery changes nothing, and no publisher's clock or payload decides which version of an
object wins (a `version` in the payload is informational only). Sequences are kept only for
objects that exist: a deletion forgets its subject entirely, so deleted objects leave nothing
behind (no tombstones), and neither do other cells' containers, which are never recorded.

Most of a large foundation concerns no local container, so its security groups, c2c policies and
app addresses are kept in compact forms (reconciler/compact.py), and sequences by kind and id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar

from events.messages import (
    AppInstancesMessage,
    C2CPoliciesMessage,
    CellConfigMessage,
    ContainerMessage,
    EgressPoliciesMessage,
    EpochMessage,
    Message,
    SecurityGroupMessage,
    StateKind,
)
from events.models import C2CPolicy, CellConfig, CellState, Container, EgressPolicy, SecurityGroup
from reconciler.compact import Addresses, StoredGroup, StoredPolicies
from reconciler.keys import Kind, StateKey, key_of

log = logging.getLogger(__name__)
V = TypeVar("V")


@dataclass(slots=True)
class DesiredStore:
    """Everything one cell's ruleset depends on, keyed the way messages address it."""

    cell_id: str
    default_config: CellConfig = field(default_factory=CellConfig)
    containers: dict[str, Container] = field(default_factory=dict)  # from NATS, this cell only
    registered: dict[str, Container] = field(default_factory=dict)  # from the CNI plugin on this cell
    # The foundation's objects, in their compact forms (reconciler/compact.py).
    groups: dict[str, StoredGroup] = field(default_factory=dict)
    apps: dict[str, Addresses] = field(default_factory=dict)
    c2c: dict[str, StoredPolicies] = field(default_factory=dict)
    egress: list[EgressPolicy] = field(default_factory=list)
    config: CellConfig | None = None  # from NATS; overrides default_config when present
    markers: dict[str, EpochMessage] = field(default_factory=dict)  # the publishers' epoch markers, by source
    # The last security group taken from a message, with the model it came as, until the next: a
    # group in use here is compiled from that model instead of being parsed again (incremental.py).
    last_group: tuple[StoredGroup, SecurityGroup] | None = None
    # Stream sequence of each existing object: by kind (its subject's kind token), then by its id, the
    # same string that keys its table (a subject string per object would cost ~100 bytes more).
    seqs: dict[str, dict[str, int]] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)  # message kind -> highest stream sequence taken
    registration_order: dict[str, int] = field(default_factory=dict)  # CNI handle -> order of registration
    _next_registration: int = 0

    def apply(self, msg: Message, seq: int) -> bool:
        """Record `msg`, stored at stream sequence `seq`; return whether the desired state changed."""
        if isinstance(msg, (ContainerMessage, CellConfigMessage)) and msg.cell_id != self.cell_id:
            return False
        kind, ident = _address(msg)
        seqs = self.seqs.get(kind)
        held = 0 if seqs is None else seqs.get(ident, 0)
        if seq <= held:
            log.debug("ignoring %s at sequence %d: have %d", msg.subject(), seq, held)
            return False
        # A local container's stream sequence is its rank when another claims its address or host
        # port (reconciler/conflicts.py): a later copy of the same record is a change too.
        changed = self._record(msg) or isinstance(msg, ContainerMessage)
        self.positions[kind] = max(seq, self.positions.get(kind, 0))
        if not _deletes(msg):
            self.seqs.setdefault(kind, {})[ident] = seq
        elif seqs is not None:
            seqs.pop(ident, None)
            if not seqs:
                del self.seqs[kind]
        return changed

    def _record(self, msg: Message) -> bool:
        match msg:
            case ContainerMessage():
                return _put(self.containers, msg.handle, msg.container)
            case AppInstancesMessage():
                return _put(self.apps, msg.app_guid, Addresses.of(msg.addresses))
            case SecurityGroupMessage():
                group = msg.security_group
                stored = None if group is None else StoredGroup.of(group)
                self.last_group = None if stored is None or group is None else (stored, group)
                return _put(self.groups, msg.guid, stored)
            case C2CPoliciesMessage():
                return _put(self.c2c, msg.destination_app_guid, StoredPolicies.of(msg.policies))
            case EgressPoliciesMessage():
                changed = self.egress != list(msg.policies)
                self.egress = list(msg.policies)
                return changed
            case CellConfigMessage():
                changed = self.config != msg.config
                self.config = msg.config
                return changed
            case EpochMessage():
                self.markers[msg.source] = msg
                return False  # says how complete the state is; changes no rule
        raise TypeError(f"no store rule for message {type(msg).__name__}")

    def position(self, subject: str) -> int | None:
        """How far this store has read the stream for `subject`'s kind: every message of that kind
        up to this stream sequence was taken (each kind comes through one ordered consumer)."""
        return self.positions.get(_kind(subject))

    def register(self, container: Container) -> bool:
        """A container the CNI plugin is adding on this cell (the newest registration of its handle)."""
        self._next_registration += 1
        self.registration_order[container.handle] = self._next_registration
        return _put(self.registered, container.handle, container)

    def unregister(self, handle: str) -> bool:
        self.registration_order.pop(handle, None)
        return _put(self.registered, handle, None)

    def registrations(self) -> list[Container]:
        """The CNI registrations, oldest first (how they are saved, so a restart keeps their order)."""
        return sorted(self.registered.values(), key=lambda c: self.registration_order.get(c.handle, 0))

    def container_seq(self, handle: str) -> int:
        """The stream sequence of this cell's NATS record of `handle` (0: none, or kept from before)."""
        return self.seqs.get(Kind.CONTAINER, {}).get(handle, 0)

    def local_containers(self) -> dict[str, Container]:
        """This cell's containers as the store has them: NATS's view, with the CNI plugin's
        registrations winning, and a NATS record whose address a registration holds dropped. (The
        compiler sees them through reconciler/admitted.py, which also settles every other clash.)"""
        taken = {c.ip: h for h, c in self.registered.items()}
        merged = {h: c for h, c in self.containers.items() if taken.get(c.ip, h) == h}
        merged.update(self.registered)
        return merged

    def keep_from(self, previous: DesiredStore, kinds: set[StateKind]) -> set[StateKind]:
        """Add the objects of `kinds` that `previous` has and this (replay) store lacks
        (reconciler/stateplane.py). They carry no stream sequence, so any message for them wins.
        Returns the kinds kept."""
        kept: set[StateKind] = set()
        tables: dict[StateKind, tuple[dict[str, Any], dict[str, Any]]] = {
            "container": (self.containers, previous.containers),
            "app": (self.apps, previous.apps),
            "asg": (self.groups, previous.groups),
            "c2c": (self.c2c, previous.c2c),
        }
        for kind in kinds:
            if kind in tables:
                mine, theirs = tables[kind]
                for key in theirs.keys() - mine.keys():
                    mine[key] = theirs[key]
                    kept.add(kind)
            elif kind == "egress" and not self.egress and previous.egress:
                self.egress = list(previous.egress)
                kept.add(kind)
            elif kind == "config" and self.config is None and previous.config is not None:
                self.config = previous.config
                kept.add(kind)
        return kept

    def adopt(self, replay: DesiredStore) -> list[StateKey]:
        """Take the content of a complete replay (a fresh store fed the whole stream), keeping the CNI
        registrations; return the keys of what differs. An object equal to the one held stays the one
        held, so a reconnect that finds little changed costs the compiler little."""
        changed: list[StateKey] = []
        _adopt(Kind.CONTAINER, self.containers, replay.containers, changed)
        _adopt(Kind.GROUP, self.groups, replay.groups, changed)
        _adopt(Kind.APP, self.apps, replay.apps, changed)
        _adopt(Kind.C2C, self.c2c, replay.c2c, changed)
        if self.egress != replay.egress:
            self.egress = replay.egress
            changed.append(StateKey(Kind.EGRESS))
        if self.config != replay.config:
            self.config = replay.config
            changed.append(StateKey(Kind.CONFIG))
        self.markers = replay.markers
        self.seqs = replay.seqs
        self.positions = replay.positions
        return changed

    def load_snapshot(self, state: CellState) -> None:
        """Take a whole saved state (the last one committed), e.g. when NATS is unreachable at start."""
        self.containers = {c.handle: c for c in state.containers if c.handle not in self.registered}
        self.groups = {g.guid: StoredGroup.of(g) for g in state.security_groups}
        self.apps = {app: packed for app, addrs in state.app_instances.items() if (packed := Addresses.of(addrs))}
        towards: dict[str, list[C2CPolicy]] = {}
        for p in state.c2c_policies:
            towards.setdefault(p.destination.id, []).append(p)
        self.c2c = {app: stored for app, ps in towards.items() if (stored := StoredPolicies.of(ps))}
        self.egress = list(state.egress_policies)
        self.config = state.config

    def snapshot(self) -> CellState:
        """The whole state as one document (the reference compile's input, compile.py)."""
        containers = self.local_containers()
        return CellState(
            cell_id=self.cell_id,
            containers=sorted(containers.values(), key=lambda c: c.handle),
            security_groups=[self.groups[g].group() for g in sorted(self.groups)],
            c2c_policies=[p for app in sorted(self.c2c) for p in self.c2c[app].policies()],
            egress_policies=list(self.egress),
            app_instances={app: addrs.addresses() for app, addrs in sorted(self.apps.items())},
            config=self.config or self.default_config,
        )

    def summary(self) -> dict[str, int]:
        return {
            "containers": len(self.containers.keys() | self.registered.keys()),
            "registered_by_cni": len(self.registered),
            "security_groups": len(self.groups),
            "apps_with_instances": len(self.apps),
            "c2c_policies": sum(len(p.pairs) for p in self.c2c.values()),
            "egress_policies": len(self.egress),
        }


def _kind(subject: str) -> str:
    """The kind token of a state subject (`cfnft.state.<kind>...`)."""
    return subject.split(".")[2] if subject.count(".") >= 2 else ""


def _address(msg: Message) -> tuple[str, str]:
    """Where `msg`'s object sits in `DesiredStore.seqs`: its subject's kind token and its id there
    (the state key's, whose kinds are those tokens; an epoch marker by its publisher)."""
    if isinstance(msg, EpochMessage):
        return "epoch", msg.source
    key = key_of(msg)
    return key.kind.value, key.id


def _deletes(msg: Message) -> bool:
    """Whether `msg` is the explicit deletion of its object."""
    match msg:
        case ContainerMessage():
            return msg.container is None
        case SecurityGroupMessage():
            return msg.security_group is None
        case AppInstancesMessage():
            return not msg.addresses
        case C2CPoliciesMessage():
            return not msg.policies
    return False


def _adopt(kind: Kind, mine: dict[str, V], theirs: dict[str, V], changed: list[StateKey]) -> None:
    for key in mine.keys() | theirs.keys():
        new = theirs.get(key)
        if mine.get(key) != new:
            changed.append(StateKey(kind, key))
            if new is None:
                del mine[key]
            else:
                mine[key] = new


def _put(table: dict[str, V], key: str, value: V | None) -> bool:
    """Set or (value None) delete `key`; return whether anything changed."""
    if value is None:
        return table.pop(key, None) is not None
    if table.get(key) == value:
        return False
    table[key] = value
    return True
