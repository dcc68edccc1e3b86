"""Where each allow element of the table comes from: the rule as the operator wrote it.

The compiler turns a security group's rules into disjoint set elements (overlapping rules are
rewritten, so one element may stand for parts of several rules). This module answers the way
back, for `cfnft explain` and `cfnft stats`, from the same state the compiler read:

- `origins(source)`: the rules of one rule source (a security group, a bundle's egress policies
  or its static rules) with their position and the text an operator knows them by;
- `allow_set(source, rule, logged, version)`: the name of the set that holds a rule's elements;
- `element_origin(...)`: which rule an element counts for. An element covered by several
  overlapping rules counts for the first of them in the group's order, the one `explain` names
  for a packet matching both; so per-rule figures add up to the group's exactly.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from events.models import C2CPolicy, CellState, Container, EgressRule, Protocol
from nft.objects import AddrRange, IntRange, KeyField
from reconciler.compile import RuleSource, applicable, bundle_of


class OriginKind(StrEnum):
    """What kind of operator object an allow rule belongs to."""

    SECURITY_GROUP = "security_group"
    EGRESS_POLICY = "egress_policy"
    CONTAINER_RULE = "container_egress_rule"


@dataclass(frozen=True, slots=True)
class Origin:
    """One allow rule as the operator knows it: its group (or policy), its index there, its text."""

    kind: OriginKind
    guid: str  # the security group's guid; the policy id; the container handle
    name: str
    index: int
    shown: dict[str, object]  # the rule as Cloud Controller (or the policy server) shows it
    rule: EgressRule

    def title(self) -> str:
        if self.kind is OriginKind.SECURITY_GROUP:
            return f'security group "{self.name}" ({self.guid}) rule {self.index}'
        if self.kind is OriginKind.EGRESS_POLICY:
            return f'egress policy "{self.name}"' + (f" ({self.guid})" if self.guid else "")
        return f"container {self.guid} egress_rules[{self.index}]"


_SET_KIND = {Protocol.TCP: "ports", Protocol.UDP: "ports", Protocol.ALL: "all"}


def allow_set(source: RuleSource, rule: EgressRule, logged: bool, version: int) -> str:
    """The set of `source` that holds `rule`'s elements of IP `version` (compile's naming)."""
    kind = _SET_KIND.get(rule.protocol, "icmp")
    return f"{source.prefix}{'-log' if logged else ''}-{kind}{version}"


def sources_of(state: CellState, container: Container) -> tuple[str, tuple[RuleSource, ...]]:
    """The container's bundle chain name and its rule sources, in the chain's order."""
    index = state.containers.index(container)
    bundle = bundle_of(state, applicable(state, index, container))
    return bundle.name, bundle.sources


def origins(state: CellState, source: RuleSource, container: Container | None = None) -> list[Origin]:
    """The rules of `source` in the order an operator numbers them (only those the source holds)."""
    out: list[Origin] = []
    if source.prefix.startswith("sg-"):
        guid = source.prefix.removeprefix("sg-")
        group = next((g for g in state.security_groups if g.guid == guid), None)
        if group is not None:
            for i, cc in enumerate(group.rules):
                shown = cc.model_dump(mode="json", exclude_none=True)
                out.append(Origin(OriginKind.SECURITY_GROUP, guid, group.name, i, shown, cc.egress_rule()))
    elif source.prefix.endswith("-egress"):
        for i, p in enumerate(state.egress_policies):
            rule = p.egress_rule()
            if rule in source.rules:
                shown = p.model_dump(mode="json", exclude_defaults=True)
                name = p.destination.name or p.destination.id or "egress policy"
                out.append(Origin(OriginKind.EGRESS_POLICY, p.id, name, i, shown, rule))
    elif container is not None:
        for i, cc in enumerate(container.egress_rules):
            shown = cc.model_dump(mode="json", exclude_none=True)
            out.append(Origin(OriginKind.CONTAINER_RULE, container.handle, "", i, shown, cc.egress_rule()))
    return [o for o in out if o.rule in source.rules]


def _ranges_meet(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _rule_boxes(rule: EgressRule, version: int) -> list[tuple[tuple[int, int], ...]]:
    """The rule's boxes (address, then protocol and port, or ICMP type and code) of one family."""
    addrs = [(d.start, d.end) for d in rule.destinations if d.version == version]
    if rule.protocol in (Protocol.TCP, Protocol.UDP):
        proto = 6 if rule.protocol is Protocol.TCP else 17
        return [(a, (proto, proto), port) for a in addrs for port in rule.ports]
    if rule.protocol is Protocol.ALL:
        return [(a,) for a in addrs]

    def any_or(v: int | None) -> tuple[int, int]:
        return (0, 255) if v is None or v == -1 else (v, v)

    return [(a, any_or(rule.icmp_type), any_or(rule.icmp_code)) for a in addrs]


def _key_bounds(key: tuple[KeyField, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for f in key:
        if isinstance(f, AddrRange):
            out.append((int(f.start), int(f.end)))
        else:
            assert isinstance(f, IntRange)
            out.append((f.lo, f.hi))
    return tuple(out)


def element_origin(candidates: list[Origin], key: tuple[KeyField, ...], version: int) -> Origin | None:
    """The first of `candidates` (rules of one set) whose boxes meet the element `key`."""
    bounds = _key_bounds(key)
    for o in candidates:
        for box in _rule_boxes(o.rule, version):
            if len(box) == len(bounds) and all(_ranges_meet(x, y) for x, y in zip(box, bounds)):
                return o
    return None


def c2c_sources(state: CellState) -> dict[int, set[str]]:
    """Overlay IPv4 address (as int) -> apps with an instance there (local containers included)."""
    out: dict[int, set[str]] = {}
    for app, addrs in state.app_instances.items():
        for a in addrs:
            if a.version == 4:
                out.setdefault(int(a), set()).add(app)
    for c in state.containers:
        out.setdefault(int(c.ip), set()).add(c.app_guid)
    return out


def c2c_policy_of(
    policies: list[C2CPolicy], sources: dict[int, set[str]], src: int, proto: int, port: tuple[int, int]
) -> C2CPolicy | None:
    """The first policy (into one app) allowing source address `src`, `proto` and ports meeting `port`."""
    apps = sources.get(src, set())
    for p in policies:
        if p.source.id not in apps or (6 if p.destination.protocol == "tcp" else 17) != proto:
            continue
        if _ranges_meet((p.destination.ports.start, p.destination.ports.end), port):
            return p
    return None


def c2c_policy_text(p: C2CPolicy) -> str:
    d = p.destination
    ports = f"{d.ports.start}" if d.ports.start == d.ports.end else f"{d.ports.start}-{d.ports.end}"
    return f"c2c policy {p.source.id} -> {d.id} {d.protocol} {ports}"
