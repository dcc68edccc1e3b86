"""compile(cell state) -> the whole `inet cfnft` ruleset of one cell. Pure: no I/O, no clock.

Packet path through the table (README "The nft table" shows a real listing):

  forward (base)   ct established,related -> accept
                   ip daddr vmap @ingress   local container as destination -> c2c-<app guid>
                   ip saddr vmap @egress    local container as source      -> asg-<bundle>
                   ip saddr <overlay>       anything else from the overlay -> reject (fail closed)
  c2c-<app>        port-mapped (DNAT) traffic -> accept; source address . proto . port in
                   @c2c-<app> -> accept; else reject
  asg-<bundle>     overlay destination -> accept (its own cell enforces c2c ingress);
                   outbound_connections over its rate -> reject (connlimit.py);
                   deny_networks -> reject; ASG/egress-policy sets -> accept; else reject
  input (base)     overlay source -> host-access: DNS, host services, else reject
  prerouting (nat) host port, from outside the overlay -> netin-<port>: DNAT to container:port
  postrouting (nat) overlay source leaving the overlay -> masquerade (unless `masquerade` is off)

Containers to which the same security groups (and egress policies) apply share one
`asg-<bundle>` chain, named after those contributors. Each security group's rules live in sets
of its own (`sg-<guid>-ports4`, ...), shared by every bundle it is part of, so editing a group
changes only that group's elements, and adding a container is one map element. Everything the
kernel looks up per packet is a verdict map or a (concatenated, interval) set: the per-packet
cost does not grow with the number of rules, containers or policies, only with the handful of
groups that apply to a container (one set lookup each).

A missing referent never opens anything: a c2c policy whose source app has no known address
contributes no element, a container whose group list is empty gets a bundle that rejects.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import typing
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar, cast

from events.intervals import Interval, merge_intervals
from events.models import (
    C2CPolicy,
    CellConfig,
    CellState,
    Container,
    EgressPolicy,
    EgressRule,
    Protocol,
    SecurityGroup,
    Workload,
)
from nft.objects import (
    AddrRange,
    Chain,
    ChainType,
    Element,
    Family,
    Hook,
    IntRange,
    KeyField,
    Map,
    Policy,
    Rule,
    Ruleset,
    Set,
    SetFlag,
    Table,
)
from reconciler.boxes import Box, disjoint_boxes
from reconciler.connlimit import add_limit_sets, limit_rules
from reconciler.logprefix import LogPrefix, log_statement

TABLE = Table(Family.INET, "cfnft")

# What a cached fragment (or bundle, or applicability) is keyed by: the values and object ids it is computed from.
FragmentKey = tuple[object, ...]
T = TypeVar("T")


class _Named(typing.Protocol):
    """A security group as make_bundle needs it: by guid (a model, or the store's compact form)."""

    @property
    def guid(self) -> str: ...


G = TypeVar("G", bound=_Named)

PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6 = 6, 17, 1, 58
ANY_BYTE = (0, 255)

# Sweep protocol and port boundaries before addresses: few distinct values, so few elements.
_ADDR_PROTO_PORT_ORDER = (1, 2, 0)
_ADDR_TYPE_CODE_ORDER = (1, 2, 0)

DISPATCH_MAPS = ("egress4", "egress6", "ingress4", "ingress6")
LOG_ASG_ACCEPT = "log-asg-accept"
LOG_C2C_ACCEPT = "log-c2c-accept"
HOST_ACCESS = "host-access"


class Lifecycle(StrEnum):
    """Which security groups apply: running groups to apps and tasks, staging groups to staging."""

    RUNNING = "running"
    STAGING = "staging"


def lifecycle_of(workload: Workload) -> Lifecycle:
    return Lifecycle.STAGING if workload == Workload.STAGING else Lifecycle.RUNNING


@dataclass(frozen=True, slots=True)
class RuleSource:
    """One contributor of allow rules, with sets of its own: a security group (`sg-<guid>`, shared
    by every bundle it applies to), or a bundle's egress policies or static rules."""

    prefix: str
    label: str
    rules: frozenset[EgressRule]


@dataclass(frozen=True, slots=True)
class Bundle:
    """The effective egress of one or more containers: what contributes their allow rules.

    `name` is a digest of the contributors (the lifecycle, the security group guids, the egress
    policies, or the static rules themselves), not of the rules: editing a group keeps its
    bundles' names and chains, and changes only the elements of that group's own sets. The
    digest is stable across processes (unlike hash()), so a restart writes nothing."""

    lifecycle: Lifecycle
    sources: tuple[RuleSource, ...]
    name: str

    @classmethod
    def of(cls, lifecycle: Lifecycle, sources: tuple[RuleSource, ...], identity: str) -> Bundle:
        text = f"{lifecycle.value}|{identity}"
        return cls(lifecycle, sources, "asg-" + hashlib.blake2s(text.encode(), digest_size=5).hexdigest())


@functools.lru_cache(maxsize=65536)
def rule_sort_key(r: EgressRule) -> str:
    # Part of bundle names: must spell a rule as it always has, or a restart renames chains.
    dests = ",".join(f"{d.start}-{d.end}/{d.version}" for d in r.destinations)
    ports = ",".join(f"{lo}-{hi}" for lo, hi in r.ports)
    return f"{r.protocol.value}|{dests}|{ports}|{r.icmp_type}|{r.icmp_code}|{int(r.log)}"


# ---------------------------------------------------------------------------------------------
# Which rules apply to a container


@dataclass(frozen=True, slots=True)
class Applicable:
    """What contributes to one container's egress: which groups, which egress policies, or its own
    static rules (dynamic ASGs off). Containers with equal `Applicable` share a bundle."""

    lifecycle: Lifecycle
    groups: tuple[int, ...]  # indexes into state.security_groups
    policies: tuple[int, ...]  # indexes into state.egress_policies
    static_rules: tuple[int, ...] = ()  # index of the container, when the rules it was created with apply


def applicable(state: CellState, index: int, c: Container) -> Applicable:
    lifecycle = lifecycle_of(c.workload)
    policies = tuple(
        i for i, p in enumerate(state.egress_policies) if p.applies_to(c.app_guid, c.space_guid, c.workload)
    )
    if not state.config.dynamic_asgs:
        return Applicable(lifecycle, (), policies, (index,) if c.egress_rules or c.net_out_rules else ())
    groups = tuple(i for i, g in enumerate(state.security_groups) if g.applies_to(c.space_guid, c.workload))
    return Applicable(lifecycle, groups, policies)


def group_source(group: SecurityGroup) -> RuleSource:
    return RuleSource(f"sg-{group.guid}", group.name, frozenset(group.egress_rules()))


def bundle_of(
    state: CellState, a: Applicable, source_of: Callable[[SecurityGroup], RuleSource] = group_source
) -> Bundle:
    """The bundle of `a`, whose indexes point into `state`."""
    return make_bundle(
        a.lifecycle,
        [state.security_groups[i] for i in a.groups],
        [state.egress_policies[i] for i in a.policies],
        {r for i in a.static_rules for r in static_rules(state.containers[i])},
        source_of,
    )


def static_rules(c: Container) -> set[EgressRule]:
    """The rules a container was created with: its egress when dynamic ASGs are off."""
    return set(c.creation_rules())


def make_bundle(
    lifecycle: Lifecycle,
    groups: Iterable[G],
    egress_policies: Iterable[EgressPolicy],
    static: set[EgressRule],
    source_of: Callable[[G], RuleSource],
) -> Bundle:
    """The rule sources of a bundle: one per security group, plus the bundle's own static rules and
    egress policies, which are named after the bundle (they have no guid of their own)."""
    identity: list[str] = []
    sources = []
    for group in sorted(groups, key=lambda g: g.guid):
        sources.append(source_of(group))
        identity.append(f"group:{group.guid}")
    if static:
        identity.append("static:" + ";".join(sorted(map(rule_sort_key, static))))
    policies: set[EgressRule] = set()
    names = []
    for policy in egress_policies:
        policies.add(policy.egress_rule())
        names.append(policy.destination.name or policy.destination.id or "egress policy")
        identity.append("policy:" + policy.model_dump_json())
    name = Bundle.of(lifecycle, (), "|".join(sorted(identity))).name
    own = []
    if static:
        own.append(RuleSource(f"{name}-static", "container egress_rules", frozenset(static)))
    if policies:
        own.append(RuleSource(f"{name}-egress", "egress policies: " + ", ".join(sorted(names)), frozenset(policies)))
    return Bundle(lifecycle, (*own, *sources), name)


# ---------------------------------------------------------------------------------------------
# Set element construction


def _addr(version: int, value: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def _elements(
    set_name: str, version: int, boxes: Iterable[Box], order: tuple[int, ...] | None, *, adjacent: bool = True
) -> list[Element]:
    """Elements whose first field is an address of `version`, the other fields small integers."""
    return _box_elements(set_name, version, disjoint_boxes(boxes, order=order, adjacent=adjacent))


def _box_elements(set_name: str, version: int, boxes: Iterable[Box]) -> list[Element]:
    """Elements for boxes that are already pairwise disjoint."""
    out = []
    for (alo, ahi), *rest in boxes:
        key: tuple[KeyField, ...] = (
            AddrRange(_addr(version, alo), _addr(version, ahi)),
            *(IntRange(lo, hi) for lo, hi in rest),
        )
        out.append(Element(set_name, key))
    return out


@dataclass(slots=True)
class _RuleBoxes:
    """The boxes of a group of allow rules, split by set kind and address family."""

    ports: dict[int, list[Box]]
    all: dict[int, list[Box]]
    icmp: dict[int, list[Box]]

    @classmethod
    def of(cls, rules: Iterable[EgressRule]) -> _RuleBoxes:
        acc = cls(defaultdict(list), defaultdict(list), defaultdict(list))
        for r in rules:
            for v, lo, hi in r.destinations:
                iv = (lo, hi)
                if r.protocol in (Protocol.TCP, Protocol.UDP):
                    proto = PROTO_TCP if r.protocol == Protocol.TCP else PROTO_UDP
                    acc.ports[v].extend((iv, (proto, proto), p) for p in r.ports)
                elif r.protocol == Protocol.ALL:
                    acc.all[v].append((iv,))
                elif (r.protocol == Protocol.ICMP and v == 4) or (r.protocol == Protocol.ICMPV6 and v == 6):
                    t = ANY_BYTE if r.icmp_type in (None, -1) else (r.icmp_type, r.icmp_type)
                    code = ANY_BYTE if r.icmp_code in (None, -1) else (r.icmp_code, r.icmp_code)
                    acc.icmp[v].append((iv, t, code))
        return acc


_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_IP = {4: "ip", 6: "ip6"}


def _allow_sets(rs: Ruleset, prefix: str, boxes: _RuleBoxes) -> list[tuple[str, str]]:
    """Create the non-empty sets for `boxes`; return (set name, match expression) pairs.

    Touching address ranges stay separate elements (only overlaps are merged): elements then
    follow the rules as written, and a rule added next to another is an element added, not a
    range replaced, which keeps an ASG edit a cheap add-only transaction."""
    matches: list[tuple[str, str]] = []
    for v in (4, 6):
        ip = _IP[v]
        if boxes.ports[v]:
            name = f"{prefix}-ports{v}"
            rs.add_set(Set(name, (_ADDR_TYPE[v], "inet_proto", "inet_service"), (SetFlag.INTERVAL,), counter=True))
            for e in _elements(name, v, boxes.ports[v], _ADDR_PROTO_PORT_ORDER, adjacent=False):
                rs.add_element(e)
            matches.append((name, f"{ip} daddr . meta l4proto . th dport @{name}"))
        if boxes.all[v]:
            name = f"{prefix}-all{v}"
            rs.add_set(Set(name, (_ADDR_TYPE[v],), (SetFlag.INTERVAL,), counter=True))
            for e in _elements(name, v, boxes.all[v], None, adjacent=False):
                rs.add_element(e)
            matches.append((name, f"{ip} daddr @{name}"))
        if boxes.icmp[v]:
            name = f"{prefix}-icmp{v}"
            if v == 4:
                types, match = ("ipv4_addr", "icmp_type", "icmp_code"), "ip daddr . icmp type . icmp code"
                proto = "meta l4proto icmp"
            else:
                types, match = ("ipv6_addr", "icmpv6_type", "icmpv6_code"), "ip6 daddr . icmpv6 type . icmpv6 code"
                proto = "meta l4proto ipv6-icmp"
            rs.add_set(Set(name, types, (SetFlag.INTERVAL,), counter=True))
            for e in _elements(name, v, boxes.icmp[v], _ADDR_TYPE_CODE_ORDER, adjacent=False):
                rs.add_element(e)
            matches.append((name, f"{proto} {match} @{name}"))
    return matches


# ---------------------------------------------------------------------------------------------
# The ruleset


def compile_ruleset(state: CellState) -> Ruleset:
    """The complete desired content of `inet cfnft` for `state`."""
    return Compiler().compile(state)


class Compiler:
    """Compiles cell states, reusing the chain-and-set fragments whose inputs did not change.

    A fragment (one bundle's chain and sets, one app's c2c chain and set) is cached under a key
    made of everything it is computed from, so the output is still a pure function of the state:
    the cache only saves the work, and hands back the very same objects, which lets `nft.diff`
    skip them by identity. Fragments not used by the latest compilation are dropped.
    """

    def __init__(self) -> None:
        self._fragments: dict[FragmentKey, tuple[Ruleset, object]] = {}
        # Bundles by the identity of the objects they were computed from; the key's objects are
        # kept alive in the value, so an id is never reused while its entry exists.
        self._bundles: dict[FragmentKey, tuple[tuple[object, ...], Bundle]] = {}
        # Applicability by (app, space, workload), valid while the groups' bindings and the egress
        # policy objects stay the same; `_inputs` pins those objects.
        self._inputs: tuple[tuple[object, ...], tuple[object, ...], bool] = ((), (), True)
        self._applicable: dict[FragmentKey, Applicable] = {}
        self._boxes: dict[FragmentKey, tuple[tuple[C2CPolicy, ...], tuple[Box, ...]]] = {}
        self._sources: dict[int, tuple[SecurityGroup, RuleSource]] = {}
        self._dispatch: dict[int, tuple[Container, str, list[Element]]] = {}
        self._maps: dict[str, dict[tuple[KeyField, ...], Element]] = {name: {} for name in DISPATCH_MAPS}

    def _group_source(self, group: SecurityGroup) -> RuleSource:
        """A group's rule source, parsed once per group object (the entry pins the object)."""
        hit = self._sources.get(id(group))
        if hit is None or hit[0] is not group:
            hit = self._sources[id(group)] = (group, group_source(group))
        return hit[1]

    def _bundle(
        self, state: CellState, a: Applicable, used: dict[FragmentKey, tuple[tuple[object, ...], Bundle]]
    ) -> Bundle:
        inputs = (
            *(state.security_groups[i] for i in a.groups),
            *(state.egress_policies[i] for i in a.policies),
            *(state.containers[i] for i in a.static_rules),
        )
        key = (a.lifecycle, len(a.groups), len(a.policies), *map(id, inputs))
        hit = self._bundles.get(key) or used.get(key)
        bundle = hit[1] if hit is not None else bundle_of(state, a, self._group_source)
        used[key] = (inputs, bundle)
        return bundle

    def compile(self, state: CellState) -> Ruleset:
        cfg = state.config
        rs = Ruleset(TABLE)
        overlay = str(cfg.overlay_network)
        used: dict[FragmentKey, tuple[Ruleset, object]] = {}

        def fragment(key: FragmentKey, build: Callable[..., T]) -> T:
            """Merge the fragment for `key` (built by `build(frag)` unless cached) and return
            what `build` returned; a key already merged by this compilation is not merged again."""
            if key in used:
                return cast(T, used[key][1])  # what `build` returned for this key
            hit = self._fragments.get(key)
            if hit is None:
                frag = Ruleset(TABLE)
                hit = (frag, build(frag))
            used[key] = hit
            _merge(rs, hit[0])
            return cast(T, hit[1])

        _skeleton(rs, cfg, state)
        _deny_sets(rs, cfg)
        add_limit_sets(rs, cfg)
        deny = tuple(name for name in rs.sets if name.startswith("deny-"))
        settings = (overlay, deny, cfg.asg_logging, cfg.c2c_logging, cfg.denied_logs_per_sec, cfg.outbound_connections)

        # Egress: one chain per distinct bundle, shared by its containers.
        bundles: set[str] = set()
        by_applicable: dict[Applicable, Bundle] = {}
        dispatch_used: dict[int, tuple[Container, str, list[Element]]] = {}
        dispatch_changed = False
        used_bundles: dict[FragmentKey, tuple[tuple[object, ...], Bundle]] = {}
        # What applies to a container depends only on its app, space and workload (and, without
        # dynamic ASGs, on its own rules): decide that once per such key, not per container.
        # Applicability depends on each group's bindings, not its rules: an edit of rules keeps it.
        bindings = tuple(
            (
                g.guid,
                g.globally_enabled.running,
                g.globally_enabled.staging,
                g.running_space_guids,
                g.staging_space_guids,
            )
            for g in state.security_groups
        )
        inputs = (bindings, tuple(state.egress_policies), state.config.dynamic_asgs)
        if not _same_inputs(inputs, self._inputs):
            self._applicable = {}
        self._inputs = inputs
        # Without dynamic ASGs a container's own rules decide, so the key is its index: per compile only.
        by_key = self._applicable if state.config.dynamic_asgs else {}
        for index, c in enumerate(state.containers):
            key: FragmentKey = (c.app_guid, c.space_guid, c.workload) if state.config.dynamic_asgs else (index,)
            a = by_key.get(key)
            if a is None:
                a = by_key[key] = applicable(state, index, c)
            if a not in by_applicable:
                by_applicable[a] = self._bundle(state, a, used_bundles)
            b = by_applicable[a]
            if b.name not in bundles:
                bundles.add(b.name)
                matches = tuple(
                    (src.label, fragment(("rules", src, cfg.asg_logging), lambda f, src=src: _source_sets(f, src, cfg)))
                    for src in b.sources
                )
                fragment(
                    ("bundle", b.name, b.lifecycle, matches, settings),
                    lambda f, b=b, m=matches: _bundle_chain(f, b, m, cfg, deny),
                )
            hit = self._dispatch.get(id(c))
            if hit is None or hit[0] is not c or hit[1] != b.name:
                hit = (c, b.name, _dispatch_elements(c, b.name))
                dispatch_changed = True
            dispatch_used[id(c)] = hit
        # The dispatch maps: when every container's entries are the ones of the last compilation,
        # hand back the very same element dicts (nft.diff then skips them by identity).
        if dispatch_changed or dispatch_used.keys() != self._dispatch.keys():
            maps: dict[str, dict[tuple[KeyField, ...], Element]] = {name: {} for name in DISPATCH_MAPS}
            for _, _, elements in dispatch_used.values():
                for e in elements:
                    maps[e.set][e.key] = e
            self._maps = maps
        for name in DISPATCH_MAPS:
            rs.elements[name] = self._maps[name]

        # Ingress: one chain per local destination app.
        instances = _instances(state)
        source_sets = {app: frozenset(addrs) for app, addrs in instances.items()}
        boxes_used: dict[FragmentKey, tuple[tuple[C2CPolicy, ...], tuple[Box, ...]]] = {}
        by_destination: dict[str, list[C2CPolicy]] = defaultdict(list)
        for p in state.c2c_policies:
            by_destination[p.destination.id].append(p)
        for app in sorted({c.app_guid for c in state.containers}):
            policies = by_destination.get(app, [])
            # Keyed by the policy objects' identity; the value pins them, so an id is never reused.
            key = (app, tuple(map(id, policies)), tuple(source_sets.get(p.source.id) for p in policies))
            cached = self._boxes.get(key) or boxes_used.get(key)
            boxes = cached[1] if cached is not None else _c2c_boxes(policies, instances)
            boxes_used[key] = (tuple(policies), boxes)
            sources = tuple(sorted({p.source.id for p in policies}))
            # `boxes` is the cached object when nothing changed: key by its identity (the fragment's
            # value keeps it alive) rather than hashing every box again.
            fragment(
                ("app", app, id(boxes), sources, settings),
                # The fragment's value, (None, boxes), is there to keep `boxes` alive.
                lambda frag, app=app, boxes=boxes, sources=sources: (
                    _app_ingress_chain(frag, app, boxes, sources, cfg),  # type: ignore[func-returns-value]
                    boxes,
                ),
            )
        for c in state.containers:
            for chain, rule, element in port_mappings(c):
                rs.add_chain(chain)
                rs.add_rule(rule)
                rs.add_element(element)
        live = {id(g) for g in state.security_groups}
        self._sources = {k: v for k, v in self._sources.items() if k in live}
        self._fragments = used
        self._dispatch = dispatch_used
        self._bundles = used_bundles
        self._boxes = boxes_used
        return rs


def _same_inputs(
    a: tuple[tuple[object, ...], tuple[object, ...], bool], b: tuple[tuple[object, ...], tuple[object, ...], bool]
) -> bool:
    """Same group bindings, the very same egress policy objects, same dynamic_asgs."""
    bindings_a, policies_a, dynamic_a = a
    bindings_b, policies_b, dynamic_b = b
    return (
        dynamic_a == dynamic_b
        and bindings_a == bindings_b
        and len(policies_a) == len(policies_b)
        and all(x is y for x, y in zip(policies_a, policies_b))
    )


def _merge(rs: Ruleset, frag: Ruleset) -> None:
    """Add a fragment's objects to `rs`, sharing (not copying) its rule lists and element dicts."""
    for name, chain in frag.chains.items():
        if name in rs.chains:
            raise ValueError(f"chain {name!r} defined twice")
        rs.chains[name] = chain
        rs.rules[name] = frag.rules[name]
    for name, s in frag.sets.items():
        if name in rs.sets:
            raise ValueError(f"set {name!r} defined twice")
        rs.sets[name] = s
        rs.elements[name] = frag.elements[name]


def _dispatch_elements(c: Container, bundle: str) -> list[Element]:
    """A container's entries in the dispatch maps: its egress bundle and its app's c2c chain."""
    comment = _container_comment(c)
    out = [
        Element("egress4", (AddrRange.single(c.ip),), f"jump {bundle}", comment),
        Element("ingress4", (AddrRange.single(c.ip),), f"jump {app_chain(c.app_guid)}", comment),
    ]
    if c.ipv6 is not None:
        out += [
            Element("egress6", (AddrRange.single(c.ipv6),), f"jump {bundle}", comment),
            Element("ingress6", (AddrRange.single(c.ipv6),), f"jump {app_chain(c.app_guid)}", comment),
        ]
    return out


def _container_comment(c: Container) -> str:
    return f"{c.handle} app={c.app_guid} space={c.space_guid} {c.workload.value}"


def port_mappings(c: Container) -> list[tuple[Chain, Rule, Element]]:
    """A container's host ports: a DNAT chain each, and the `port-mappings` element that goes to it."""
    comment = _container_comment(c)
    out = []
    for m in c.port_mappings:
        chain = netin_chain(m.host_port)
        rule = Rule(chain, f"meta l4proto tcp counter dnat ip to {c.ip}:{m.container_port}", comment)
        out.append(
            (Chain(chain), rule, Element("port-mappings", (IntRange.single(m.host_port),), f"goto {chain}", comment))
        )
    return out


def app_chain(app_guid: str) -> str:
    return f"c2c-{app_guid}"


def netin_chain(host_port: int) -> str:
    return f"netin-{host_port}"


def _instances(state: CellState) -> dict[str, set[ipaddress.IPv4Address]]:
    """Overlay IPv4 addresses of every app instance known anywhere, local containers included."""
    out: dict[str, set[ipaddress.IPv4Address]] = defaultdict(set)
    for app, addrs in state.app_instances.items():
        out[app].update(a for a in addrs if a.version == 4)
    for c in state.containers:
        out[c.app_guid].add(c.ip)
    return out


def _skeleton(rs: Ruleset, cfg: CellConfig, state: CellState) -> None:
    """Base chains, dispatch maps and the host-access chain: what holds with no container at all."""
    overlay = str(cfg.overlay_network)
    for name, ktype in (
        ("ingress4", "ipv4_addr"),
        ("ingress6", "ipv6_addr"),
        ("egress4", "ipv4_addr"),
        ("egress6", "ipv6_addr"),
    ):
        rs.add_set(Map(name, (ktype,), "verdict"))
    rs.add_set(Map("port-mappings", ("inet_service",), "verdict"))

    rs.add_chain(Chain("forward", ChainType.FILTER, Hook.FORWARD, 0, Policy.ACCEPT))
    for text, comment in (
        ("ct state established,related counter accept", "return traffic"),
        ("ip daddr vmap @ingress4", "to a local container: its app's c2c chain"),
        ("ip6 daddr vmap @ingress6", "to a local container (IPv6)"),
        ("ip saddr vmap @egress4", "from a local container: its egress bundle"),
        ("ip6 saddr vmap @egress6", "from a local container (IPv6)"),
        (f"ip saddr {overlay} counter reject", "unknown overlay source: fail closed"),
    ):
        rs.add_rule(Rule("forward", text, comment))
    if cfg.overlay_network6 is not None:
        rs.add_rule(
            Rule(
                "forward",
                f"ip6 saddr {cfg.overlay_network6} counter reject",
                "unknown overlay source (IPv6): fail closed",
            )
        )
    else:
        # Without the IPv6 overlay prefix, any forwarded IPv6 that no known container sends or
        # receives could come from a container not known yet: fail closed on all of it.
        rs.add_rule(Rule("forward", "meta nfproto ipv6 counter reject", "IPv6 of no known container: fail closed"))

    rs.add_chain(Chain("input", ChainType.FILTER, Hook.INPUT, 0, Policy.ACCEPT))
    rs.add_rule(Rule("input", f"ip saddr {overlay} counter jump {HOST_ACCESS}", "containers to their cell"))
    rs.add_rule(Rule("input", f"ip6 saddr @containers6 counter jump {HOST_ACCESS}", "containers to their cell (IPv6)"))
    rs.add_set(Set("containers6", ("ipv6_addr",), (SetFlag.INTERVAL,)))
    for c in state.containers:
        if c.ipv6 is not None:
            rs.add_element(Element("containers6", (AddrRange.single(c.ipv6),), None, c.handle))

    rs.add_chain(Chain(HOST_ACCESS))
    rs.add_rule(Rule(HOST_ACCESS, "ct state established,related counter accept", "return traffic"))
    rs.add_rule(
        Rule(
            HOST_ACCESS,
            "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } counter accept",
            "IPv6 neighbour discovery",
        )
    )
    services: dict[int, list[Box]] = {4: [], 6: []}
    for dns in cfg.dns_servers:
        iv = (int(dns), int(dns))
        services[dns.version] += [(iv, (PROTO_UDP,) * 2, (53, 53)), (iv, (PROTO_TCP,) * 2, (53, 53))]
    for proto, entries in ((PROTO_TCP, cfg.tcp_services()), (PROTO_UDP, cfg.udp_services())):
        for ip, port in entries:
            services[ip.version].append(((int(ip), int(ip)), (proto, proto), (port, port)))
    for v in (4, 6):
        if services[v]:
            name = f"host-services{v}"
            rs.add_set(Set(name, (_ADDR_TYPE[v], "inet_proto", "inet_service"), (SetFlag.INTERVAL,), counter=True))
            for e in _elements(name, v, services[v], _ADDR_PROTO_PORT_ORDER):
                rs.add_element(e)
            rs.add_rule(
                Rule(
                    HOST_ACCESS,
                    f"{_IP[v]} daddr . meta l4proto . th dport @{name} counter accept",
                    "dns_servers and host services",
                )
            )
    rs.add_rule(Rule(HOST_ACCESS, "counter reject", "anything else to the cell"))

    if cfg.masquerade:
        rs.add_set(Set("no-masquerade4", ("ipv4_addr",), (SetFlag.INTERVAL,)))
        for e in _elements(
            "no-masquerade4", 4, [_net_box(cfg.overlay_network), *map(_net_box, cfg.no_masquerade_networks)], None
        ):
            rs.add_element(e)
        rs.add_chain(Chain("postrouting", ChainType.NAT, Hook.POSTROUTING, 100, Policy.ACCEPT))
        rs.add_rule(
            Rule(
                "postrouting",
                f"ip saddr {overlay} ip daddr != @no-masquerade4 counter masquerade",
                "containers leaving the overlay: the cell's address",
            )
        )

    rs.add_chain(Chain("prerouting", ChainType.NAT, Hook.PREROUTING, -100, Policy.ACCEPT))
    rs.add_rule(
        Rule(
            "prerouting",
            f"ip saddr != {overlay} fib daddr type local tcp dport vmap @port-mappings",
            # As silk marks only what arrives from the underlay: a container does not reach another
            # app through its cell's host port (the c2c chain accepts any DNATed connection).
            "host ports to containers (gorouter, ssh), not from containers",
        )
    )

    _log_chain(rs, LOG_ASG_ACCEPT, LogPrefix.ASG_ACCEPT, cfg.accepted_udp_logs_per_sec)
    _log_chain(rs, LOG_C2C_ACCEPT, LogPrefix.C2C_ACCEPT, cfg.accepted_udp_logs_per_sec)


def _net_box(net: ipaddress.IPv4Network) -> Box:
    return ((int(net.network_address), int(net.broadcast_address)),)


def _log_chain(rs: Ruleset, name: str, prefix: LogPrefix, udp_rate: int) -> None:
    """Log a new connection, then accept it. UDP is rate limited, as silk does."""
    rs.add_chain(Chain(name))
    rs.add_rule(
        Rule(name, f"meta l4proto udp limit rate {udp_rate}/second counter {log_statement(prefix)}", "udp, limited")
    )
    rs.add_rule(Rule(name, f"meta l4proto != udp counter {log_statement(prefix)}", None))
    rs.add_rule(Rule(name, "counter accept", None))


def _denied_log(cfg: CellConfig, prefix: LogPrefix) -> str:
    """Log what the next rule rejects, at most `denied_logs_per_sec` packets a second."""
    return f"limit rate {cfg.denied_logs_per_sec}/second counter {log_statement(prefix)}"


def _deny_sets(rs: Ruleset, cfg: CellConfig) -> None:
    for lifecycle_name, nets in (
        ("always", cfg.deny_networks.always),
        ("running", cfg.deny_networks.running),
        ("staging", cfg.deny_networks.staging),
    ):
        for v in (4, 6):
            boxes = [((int(n.network_address), int(n.broadcast_address)),) for n in nets if n.version == v]
            if boxes:
                name = f"deny-{lifecycle_name}{v}"
                rs.add_set(Set(name, (_ADDR_TYPE[v],), (SetFlag.INTERVAL,), counter=True))
                for e in _elements(name, v, boxes, None):
                    rs.add_element(e)


def _source_sets(rs: Ruleset, src: RuleSource, cfg: CellConfig) -> tuple[tuple[str, bool], ...]:
    """The sets of one rule source; returns its (match expression, logged) pairs, logged first."""
    logged = [r for r in src.rules if r.log or cfg.asg_logging]
    plain = [r for r in src.rules if not (r.log or cfg.asg_logging)]
    return (
        *((match, True) for _, match in _allow_sets(rs, f"{src.prefix}-log", _RuleBoxes.of(logged))),
        *((match, False) for _, match in _allow_sets(rs, src.prefix, _RuleBoxes.of(plain))),
    )


def _bundle_chain(
    rs: Ruleset,
    b: Bundle,
    matches: tuple[tuple[str, tuple[tuple[str, bool], ...]], ...],
    cfg: CellConfig,
    deny_sets: tuple[str, ...],
) -> None:
    chain = b.name
    rs.add_chain(Chain(chain))
    rs.add_rule(
        Rule(
            chain, f"ip daddr {cfg.overlay_network} counter accept", "to the overlay: the destination cell enforces c2c"
        )
    )
    rs.add_rule(Rule(chain, "meta l4proto tcp ct state invalid counter drop", None))
    for rule in limit_rules(chain, cfg):
        rs.add_rule(rule)
    for lifecycle_name in ("always", b.lifecycle.value):
        for v in (4, 6):
            name = f"deny-{lifecycle_name}{v}"
            if name in deny_sets:
                rs.add_rule(Rule(chain, f"{_IP[v]} daddr @{name} counter reject", f"deny_networks.{lifecycle_name}"))
    for logged_pass in (True, False):  # logged rules first, so a logged rule logs even if another allows
        for label, pairs in matches:
            for match, logged in pairs:
                if logged is logged_pass:
                    verdict = f"counter jump {LOG_ASG_ACCEPT}" if logged else "counter accept"
                    rs.add_rule(Rule(chain, f"{match} {verdict}", f"{b.lifecycle.value}: {label}"))
    if cfg.asg_logging:
        rs.add_rule(Rule(chain, _denied_log(cfg, LogPrefix.ASG_DENY), None))
    rs.add_rule(Rule(chain, "counter reject", "default deny"))


def _c2c_boxes(policies: list[C2CPolicy], instances: dict[str, set[ipaddress.IPv4Address]]) -> tuple[Box, ...]:
    """Source address x protocol x port boxes allowed into an app: pairwise disjoint by
    construction (one address each; overlapping port ranges of one address and protocol
    merged), in a canonical order. Touching port ranges stay apart, so that adding a policy
    or an instance only ever adds elements."""
    ranges: dict[tuple[int, int], list[Interval]] = defaultdict(list)
    for p in policies:
        proto = PROTO_TCP if p.destination.protocol == "tcp" else PROTO_UDP
        ports = (p.destination.ports.start, p.destination.ports.end)
        for addr in instances.get(p.source.id, ()):
            ranges[(int(addr), proto)].append(ports)
    return tuple(
        ((addr, addr), (proto, proto), span)
        for (addr, proto), spans in sorted(ranges.items())
        for span in merge_intervals(spans, adjacent=False)
    )


def _app_ingress_chain(
    rs: Ruleset, app: str, boxes: tuple[Box, ...], sources: tuple[str, ...], cfg: CellConfig
) -> None:
    chain = app_chain(app)
    rs.add_chain(Chain(chain))
    rs.add_rule(Rule(chain, "ct status dnat counter accept", "port mappings from the cell (gorouter, ssh)"))
    if boxes:
        rs.add_set(Set(chain, ("ipv4_addr", "inet_proto", "inet_service"), (SetFlag.INTERVAL,), counter=True))
        for e in _box_elements(chain, 4, boxes):
            rs.add_element(e)
        verdict = f"counter jump {LOG_C2C_ACCEPT}" if cfg.c2c_logging else "counter accept"
        rs.add_rule(
            Rule(chain, f"ip saddr . meta l4proto . th dport @{chain} {verdict}", f"from apps {', '.join(sources)}")
        )
    if cfg.c2c_logging:
        rs.add_rule(Rule(chain, _denied_log(cfg, LogPrefix.C2C_DENY), None))
    rs.add_rule(Rule(chain, "counter reject", f"app={app}: default deny"))
