"""What the kernel needs of every object before it may enter a cell's desired state.

The models of events/ check that input is well formed; this module checks that it is usable *here*:
that every guid and handle can become part of an nft name (and a NATS subject token), that no
address carries an IPv6 zone id (nft has no syntax for one), that a host port lies in Garden's
range (so no message can DNAT the cell's own SSH), that a message's inner ids equal the ids of the
subject it came on, and that a container's addresses lie in the overlay networks. Everything here
is pure and cheap; one failed check costs only the object that failed it.

Two moments, two consequences (README "Operating it"):

- `message_problems` runs when a NATS message arrives (and `container_problems` when the CNI plugin
  registers a container): a message that fails is refused, and the store keeps what it had for
  that subject (its last good version, or nothing).
- `state_problems` runs on every pass over the whole desired state, because it depends on the
  rest of it (the overlay networks of the current config): what fails is left out of the ruleset
  while the condition lasts.

`cfnft render|apply|check` run both on a cell state document.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.messages import (
    AppInstancesMessage,
    C2CPoliciesMessage,
    CellConfigMessage,
    ContainerMessage,
    EgressPoliciesMessage,
    EpochMessage,
    Message,
    SecurityGroupMessage,
)
from events.models import C2CPolicy, CellConfig, CellState, Container, EgressPolicy, EgressRule, SecurityGroup
from events.problems import show
from reconciler.keys import Kind, StateKey
from reconciler.units import egress_policy_key

# Every guid becomes part of an nft name (`sg-<guid>-log-ports4`, `c2c-<app guid>`, at most 255
# characters, letters, digits, '_', '-' and '.') and of a NATS subject token (no '.'). CF's guids
# are UUIDs; 128 characters leaves room for any prefix and suffix cfnft adds.
GUID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# A container handle is CNI's container id (libcni: a letter or digit, then letters, digits, '_',
# '.', '-'); it appears in comments and file names, bounded here to the same 128 characters.
HANDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

T = TypeVar("T")


class Limits(BaseModel):
    """What one cell accepts (reconciler config `limits`): host ports, and the size of the ruleset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host_port_min: int = Field(61000, ge=1, le=65535, description="lowest host port (garden-cni nat_port_range_start)")
    host_port_max: int = Field(65535, ge=1, le=65535, description="highest host port a container may map")
    max_elements_per_group: int = Field(
        50_000, ge=1, description="set elements one security group, egress policy or container's rules may need"
    )
    max_elements_per_cell: int = Field(250_000, ge=1, description="set and map elements of the whole table")

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        if self.host_port_min > self.host_port_max:
            raise ValueError(f"host_port_min {self.host_port_min} is above host_port_max {self.host_port_max}")
        return self


@dataclass(frozen=True, slots=True)
class Unusable:
    """Why one object (`unit`; None when the object is the cell's config) cannot be used."""

    unit: StateKey | None
    reason: str


def guid_problem(value: str, what: str) -> str | None:
    if GUID.fullmatch(value):
        return None
    return f"{what} {show(value)} is not usable in an nft name (1-128 of letters, digits, '_', '-')"


def handle_problem(value: str) -> str | None:
    if HANDLE.fullmatch(value):
        return None
    return (
        f"handle {show(value)} is not a CNI container id "
        "(a letter or digit, then letters, digits, '_', '.', '-'; at most 128)"
    )


def _zone(addresses: Iterable[IPv4Address | IPv6Address], what: str) -> list[str]:
    return [f"{what} {a}: an IPv6 zone id has no place in a ruleset" for a in addresses if _scoped(a)]


def _scoped(a: IPv4Address | IPv6Address) -> bool:
    return isinstance(a, IPv6Address) and a.scope_id is not None


def container_problems(c: Container, limits: Limits) -> list[str]:
    """Why the kernel cannot take container `c`, wherever it came from (NATS, the CNI plugin, a document)."""
    found = [handle_problem(c.handle), guid_problem(c.app_guid, "app guid"), guid_problem(c.space_guid, "space guid")]
    if c.org_guid:
        found.append(guid_problem(c.org_guid, "org guid"))
    problems = [p for p in found if p]
    problems += _zone([c.ip] + ([c.ipv6] if c.ipv6 is not None else []), "address")
    seen: set[int] = set()
    for m in c.port_mappings:
        if not limits.host_port_min <= m.host_port <= limits.host_port_max:
            problems.append(
                f"host port {m.host_port} is outside Garden's range {limits.host_port_min}-{limits.host_port_max}"
            )
        if m.host_port in seen:
            problems.append(f"host port {m.host_port} is mapped twice")
        seen.add(m.host_port)
    return problems


def group_problems(g: SecurityGroup) -> list[str]:
    return [p for p in (guid_problem(g.guid, "security group guid"),) if p]


def c2c_policy_problems(p: C2CPolicy, destination: str | None = None) -> list[str]:
    """A c2c policy's ids; with `destination`, it must be that app's (the subject it came on)."""
    problems = [
        x
        for x in (guid_problem(p.source.id, "source app guid"), guid_problem(p.destination.id, "destination app guid"))
        if x
    ]
    if destination is not None and p.destination.id != destination:
        problems.append(f"a policy for destination {show(p.destination.id)} among the policies of {show(destination)}")
    return problems


def egress_policy_problems(p: EgressPolicy) -> list[str]:
    return [x for x in (guid_problem(p.source.id, "egress policy source id") if p.source.id else None,) if x]


def config_problems(cfg: CellConfig) -> list[str]:
    addresses = [*cfg.dns_servers, *(a for a, _ in cfg.tcp_services()), *(a for a, _ in cfg.udp_services())]
    return _zone(addresses, "config address")


@dataclass(frozen=True, slots=True)
class Checked:
    """A NATS message after `check_message`: the message to use (None: refused whole) and what was wrong."""

    message: Message | None
    problems: list[str]


def check_message(msg: Message, limits: Limits) -> Checked:
    """Check a NATS message as the kernel will need it.

    Whole-object messages (a container, a group, a config) are refused whole on any problem (the
    caller keeps its last good version). List messages (c2c policies, instance addresses, egress
    policies) lose only their bad entries, unless the subject's own id is bad."""
    match msg:
        case ContainerMessage():
            problems = [p for p in (handle_problem(msg.handle),) if p]
            if msg.container is not None:
                if msg.container.handle != msg.handle:
                    problems.append(f"holds container {show(msg.container.handle)}, not {show(msg.handle)}")
                problems += container_problems(msg.container, limits)
            return Checked(None if problems else msg, problems)
        case SecurityGroupMessage():
            problems = [p for p in (guid_problem(msg.guid, "security group guid"),) if p]
            if msg.security_group is not None and msg.security_group.guid != msg.guid:
                problems.append(f"holds security group {show(msg.security_group.guid)}, not {show(msg.guid)}")
            return Checked(None if problems else msg, problems)
        case CellConfigMessage():
            problems = config_problems(msg.config)
            return Checked(None if problems else msg, problems)
        case C2CPoliciesMessage():
            if problem := guid_problem(msg.destination_app_guid, "app guid"):
                return Checked(None, [problem])
            kept, dropped = _split(msg.policies, lambda p: c2c_policy_problems(p, msg.destination_app_guid))
            return Checked(msg.model_copy(update={"policies": kept}) if dropped else msg, dropped)
        case AppInstancesMessage():
            if problem := guid_problem(msg.app_guid, "app guid"):
                return Checked(None, [problem])
            zoned = _zone(msg.addresses, "address")
            addresses = [a for a in msg.addresses if not _scoped(a)]
            return Checked(msg.model_copy(update={"addresses": addresses}) if zoned else msg, zoned)
        case EgressPoliciesMessage():
            policies, bad = _split(msg.policies, egress_policy_problems)
            return Checked(msg.model_copy(update={"policies": policies}) if bad else msg, bad)
        case EpochMessage():
            return Checked(msg, [])  # names nothing the kernel sees
    raise TypeError(f"no admission rule for message {type(msg).__name__}")


def _split(items: Iterable[T], check: Callable[[T], list[str]]) -> tuple[list[T], list[str]]:
    kept: list[T] = []
    problems: list[str] = []
    for item in items:
        found = check(item)
        if found:
            problems += found
        else:
            kept.append(item)
    return kept, problems


def rule_elements(rules: Iterable[EgressRule]) -> int:
    """How many set elements `rules` need before overlaps are merged: the size of the compile's work."""
    return sum(len(r.destinations) * max(1, len(r.ports)) for r in rules)


class StateCheck:
    """The checks that depend on the whole state, run on every pass: containers outside the overlay
    networks, and rule sources too big for one cell (`max_elements_per_group`: a rule of 6,000
    destinations and 300 ports would otherwise compile for half a minute into 1.8 million elements).

    Element counts are remembered per object (the entry pins it, so an id is never reused while
    cached): a pass over an unchanged state re-counts nothing."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._counts: dict[int, tuple[object, int]] = {}

    def problems(self, state: CellState) -> list[Unusable]:
        cfg, cap = state.config, self.limits.max_elements_per_group
        counts: dict[int, tuple[object, int]] = {}

        def size(obj: T, rules: Callable[[T], Iterable[EgressRule]]) -> int:
            hit = self._counts.get(id(obj))
            if hit is None or hit[0] is not obj:
                hit = (obj, rule_elements(rules(obj)))
            counts[id(obj)] = hit
            return hit[1]

        problems: list[Unusable] = []
        for c in state.containers:
            unit = StateKey(Kind.CONTAINER, c.handle)
            if c.ip not in cfg.overlay_network:
                problems.append(Unusable(unit, f"address {c.ip} is outside the overlay network {cfg.overlay_network}"))
            elif c.ipv6 is not None and cfg.overlay_network6 is not None and c.ipv6 not in cfg.overlay_network6:
                problems.append(Unusable(unit, f"address {c.ipv6} is outside overlay_network6 {cfg.overlay_network6}"))
            elif not cfg.dynamic_asgs and (n := size(c, Container.creation_rules)) > cap:
                problems.append(Unusable(unit, self._too_big("its egress_rules", n)))
        for g in state.security_groups:
            if (n := size(g, SecurityGroup.egress_rules)) > cap:
                problems.append(Unusable(StateKey(Kind.GROUP, g.guid), self._too_big("its rules", n)))
        for p in state.egress_policies:
            if (n := size(p, lambda policy: [policy.egress_rule()])) > cap:
                problems.append(Unusable(StateKey(Kind.EGRESS, egress_policy_key(p)), self._too_big("it", n)))
        self._counts = counts
        return problems

    def _too_big(self, what: str, n: int) -> str:
        return f"{what} need {n} set elements, over max_elements_per_group {self.limits.max_elements_per_group}"


def document_problems(state: CellState, limits: Limits) -> list[Unusable]:
    """Every check of a whole cell state document: what its objects would be checked for as
    messages, and `StateCheck`. The one-shot commands refuse on any, or with --lenient drop them."""
    problems = [
        Unusable(StateKey(Kind.CONTAINER, c.handle), x) for c in state.containers for x in container_problems(c, limits)
    ]
    problems += [Unusable(StateKey(Kind.GROUP, g.guid), x) for g in state.security_groups for x in group_problems(g)]
    problems += [
        Unusable(StateKey(Kind.C2C, p.destination.id), x) for p in state.c2c_policies for x in c2c_policy_problems(p)
    ]
    for app, addresses in state.app_instances.items():
        found = [guid_problem(app, "app guid"), *_zone(addresses, "address")]
        problems += [Unusable(StateKey(Kind.APP, app), x) for x in found if x]
    for e in state.egress_policies:
        problems += [Unusable(StateKey(Kind.EGRESS, egress_policy_key(e)), x) for x in egress_policy_problems(e)]
    problems += [Unusable(None, x) for x in config_problems(state.config)]
    return problems + StateCheck(limits).problems(state)
