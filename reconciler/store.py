"""The desired state of one cell, as the reconciler knows it.

Fed by whole-state messages (from the JetStream replay and live updates) and by the CNI
plugin's registrations; read by the apply loop as a `CellState` snapshot. Applying a message
only records it and reports whether anything changed: no compilation, no kernel I/O
(Felix's OnUpdate/apply split).

Per subject, a message with a lower version than the one held is ignored, so duplicates
from two watcher replicas and re-deliveries after a reconnect change nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import TypeVar

from events.messages import (
    AppInstancesMessage,
    C2CPoliciesMessage,
    CellConfigMessage,
    ContainerMessage,
    EgressPoliciesMessage,
    Message,
    SecurityGroupMessage,
)
from events.models import C2CPolicy, CellConfig, CellState, Container, EgressPolicy, SecurityGroup
from reconciler.keys import Kind, StateKey

log = logging.getLogger(__name__)
V = TypeVar("V")


@dataclass(slots=True)
class DesiredStore:
    """Everything one cell's ruleset depends on, keyed the way messages address it."""

    cell_id: str
    default_config: CellConfig = field(default_factory=CellConfig)
    containers: dict[str, Container] = field(default_factory=dict)  # from NATS, this cell only
    registered: dict[str, Container] = field(default_factory=dict)  # from the CNI plugin on this cell
    groups: dict[str, SecurityGroup] = field(default_factory=dict)
    apps: dict[str, list[IPv4Address | IPv6Address]] = field(default_factory=dict)
    c2c: dict[str, list[C2CPolicy]] = field(default_factory=dict)
    egress: list[EgressPolicy] = field(default_factory=list)
    config: CellConfig | None = None  # from NATS; overrides default_config when present
    versions: dict[str, int] = field(default_factory=dict)

    def apply(self, msg: Message) -> bool:
        """Record `msg`; return whether the desired state changed."""
        subject = msg.subject()
        if msg.version < self.versions.get(subject, -1):
            log.debug("ignoring %s version %d: have %d", subject, msg.version, self.versions[subject])
            return False
        self.versions[subject] = msg.version
        match msg:
            case ContainerMessage():
                if msg.cell_id != self.cell_id:
                    return False
                return _put(self.containers, msg.handle, msg.container)
            case AppInstancesMessage():
                return _put(self.apps, msg.app_guid, sorted(msg.addresses, key=str) or None)
            case SecurityGroupMessage():
                return _put(self.groups, msg.guid, msg.security_group)
            case C2CPoliciesMessage():
                return _put(self.c2c, msg.destination_app_guid, list(msg.policies) or None)
            case EgressPoliciesMessage():
                changed = self.egress != list(msg.policies)
                self.egress = list(msg.policies)
                return changed
            case CellConfigMessage():
                if msg.cell_id != self.cell_id:
                    return False
                changed = self.config != msg.config
                self.config = msg.config
                return changed
        raise TypeError(f"no store rule for message {type(msg).__name__}")

    def register(self, container: Container) -> bool:
        """A container the CNI plugin is adding on this cell."""
        return _put(self.registered, container.handle, container)

    def unregister(self, handle: str) -> bool:
        return _put(self.registered, handle, None)

    def local_containers(self) -> dict[str, Container]:
        """This cell's containers: NATS's view, with the CNI plugin's registrations winning,
        because the plugin reports the address the container really got. A NATS record whose
        address a registered container now holds is stale (the address was reused) and dropped."""
        taken = {c.ip: h for h, c in self.registered.items()}
        merged = {h: c for h, c in self.containers.items() if taken.get(c.ip, h) == h}
        merged.update(self.registered)
        return merged

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
        self.versions = replay.versions
        return changed

    def load_snapshot(self, state: CellState) -> None:
        """Take a whole saved state (the last one committed), e.g. when NATS is unreachable at start."""
        self.containers = {c.handle: c for c in state.containers if c.handle not in self.registered}
        self.groups = {g.guid: g for g in state.security_groups}
        self.apps = {app: list(addrs) for app, addrs in state.app_instances.items()}
        self.c2c = {}
        for p in state.c2c_policies:
            self.c2c.setdefault(p.destination.id, []).append(p)
        self.egress = list(state.egress_policies)
        self.config = state.config

    def snapshot(self) -> CellState:
        containers = self.local_containers()
        return CellState(
            cell_id=self.cell_id,
            containers=sorted(containers.values(), key=lambda c: c.handle),
            security_groups=[self.groups[g] for g in sorted(self.groups)],
            c2c_policies=[p for app in sorted(self.c2c) for p in self.c2c[app]],
            egress_policies=list(self.egress),
            app_instances={app: list(addrs) for app, addrs in sorted(self.apps.items())},
            config=self.config or self.default_config,
        )

    def summary(self) -> dict[str, int]:
        return {
            "containers": len(self.local_containers()),
            "registered_by_cni": len(self.registered),
            "security_groups": len(self.groups),
            "apps_with_instances": len(self.apps),
            "c2c_policies": sum(len(p) for p in self.c2c.values()),
            "egress_policies": len(self.egress),
        }


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
