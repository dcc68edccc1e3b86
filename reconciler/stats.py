"""`cfnft stats`: packets and bytes per rule as the operator wrote it, from the kernel's counters.

Every allow and deny set has a counter per element, and every rule of ours a counter. This
module maps them back (reconciler/provenance.py): a security group's elements to its rules, an
app's c2c elements to the policies, `deny-*` elements to the deny_networks entries, and the
default-deny rules to what they stand for. The compiler merges overlapping rules into shared
elements, and a kernel counter cannot be split: an element that stands for (parts of) several
rules counts for the first of them, so a group's rules add up to the group's total exactly, and
a rule whose every element it shares with an earlier rule shows zero.

Counters live as long as their element or rule: an element that an edit rewrites starts again
from zero, so "unused" means "matched nothing since its element was last written".

Pure: no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from pydantic import BaseModel

from events.models import CellState
from nft.objects import AddrRange, Counter, Counters, IntRange, KeyField, Ruleset
from reconciler import provenance
from reconciler.compile import HOST_ACCESS, app_chain, group_source


class Hits(BaseModel):
    packets: int = 0
    bytes: int = 0

    def add(self, c: Counter) -> None:
        self.packets += c.packets
        self.bytes += c.bytes


class RuleHits(BaseModel):
    index: int
    rule: dict[str, object]
    hits: Hits


class GroupHits(BaseModel):
    guid: str
    name: str
    hits: Hits
    rules: list[RuleHits]


class PolicyHits(BaseModel):
    kind: str  # "c2c" or "egress"
    policy: dict[str, object]
    destination_app: str | None = None  # c2c: the app the policy lets traffic into
    hits: Hits


class DenyHits(BaseModel):
    what: str  # "deny_networks.running 198.51.100.0/25", "default deny (egress)", ...
    hits: Hits


class CellStats(BaseModel):
    cell_id: str
    security_groups: list[GroupHits]
    policies: list[PolicyHits]
    denies: list[DenyHits]

    def unused(self) -> list[str]:
        """Every rule, policy and deny entry that matched nothing."""
        out = [
            f'security group "{g.name}" ({g.guid}) rule {r.index}: {_compact(r.rule)}'
            for g in self.security_groups
            for r in g.rules
            if r.hits.packets == 0
        ]
        out += [f"{p.kind} policy {_compact(p.policy)}" for p in self.policies if p.hits.packets == 0]
        out += [d.what for d in self.denies if d.hits.packets == 0]
        return out

    def text(self) -> str:
        lines = [f"cell {self.cell_id}: packets / bytes per rule since its element was written"]
        for g in self.security_groups:
            lines.append(f'security group "{g.name}" ({g.guid}): {g.hits.packets} packets, {g.hits.bytes} bytes')
            lines += [f"  rule {r.index}: {r.hits.packets:>8} {r.hits.bytes:>10}  {_compact(r.rule)}" for r in g.rules]
        for p in self.policies:
            lines.append(f"{p.kind} policy: {p.hits.packets:>8} {p.hits.bytes:>10}  {_compact(p.policy)}")
        for d in self.denies:
            lines.append(f"denied: {d.hits.packets:>8} {d.hits.bytes:>10}  {d.what}")
        return "\n".join(lines)


def _compact(value: object) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


def cell_stats(state: CellState, ruleset: Ruleset, counters: Counters) -> CellStats:
    """Per-rule hits of `state`, whose compiled table is `ruleset`, from the kernel's `counters`."""
    groups = _group_hits(state, ruleset, counters)
    policies = _c2c_hits(state, ruleset, counters) + _egress_policy_hits(state, ruleset, counters)
    return CellStats(
        cell_id=state.cell_id, security_groups=groups, policies=policies, denies=_deny_hits(state, ruleset, counters)
    )


_SUFFIXES = {f"{log}{kind}{v}" for log in ("", "log-") for kind in ("ports", "all", "icmp") for v in (4, 6)}


def _sets_of(ruleset: Ruleset, prefix: str) -> list[str]:
    """The allow sets of the rule source `prefix` (not those of a source whose name extends it)."""
    return [n for n in ruleset.sets if n.startswith(f"{prefix}-") and n.removeprefix(f"{prefix}-") in _SUFFIXES]


def _set_counters(counters: Counters, name: str) -> list[tuple[tuple[KeyField, ...], Counter]]:
    return [(key, c) for (s, key), c in counters.elements.items() if s == name]


def _attribute(
    origins: list[provenance.Origin],
    set_names: list[str],
    counters: Counters,
    logged_of: Callable[[provenance.Origin], bool],
) -> dict[int, Hits]:
    """Hits per origin index over the given sets; `logged_of(origin)` says which sets hold it."""
    hits: dict[int, Hits] = defaultdict(Hits)
    for name in set_names:
        logged = "-log-" in name
        version = int(name[-1])
        candidates = [o for o in origins if logged_of(o) is logged]
        for key, c in _set_counters(counters, name):
            origin = provenance.element_origin(candidates, key, version)
            if origin is not None:
                hits[origin.index].add(c)
    return hits


def _group_hits(state: CellState, ruleset: Ruleset, counters: Counters) -> list[GroupHits]:
    asg_logging = state.config.asg_logging
    out = []
    for group in state.security_groups:
        source = group_source(group)
        set_names = _sets_of(ruleset, source.prefix)
        if not set_names:
            continue  # the group applies to no container here
        origins = provenance.origins(state, source)
        hits = _attribute(origins, set_names, counters, lambda o: o.rule.log or asg_logging)
        total = Hits(packets=sum(h.packets for h in hits.values()), bytes=sum(h.bytes for h in hits.values()))
        rules = [RuleHits(index=o.index, rule=o.shown, hits=hits.get(o.index, Hits())) for o in origins]
        out.append(GroupHits(guid=group.guid, name=group.name, hits=total, rules=rules))
    return out


def _egress_policy_hits(state: CellState, ruleset: Ruleset, counters: Counters) -> list[PolicyHits]:
    if not state.egress_policies:
        return []
    asg_logging = state.config.asg_logging
    hits: dict[int, Hits] = defaultdict(Hits)
    seen: set[str] = set()
    for c in state.containers:
        _, sources = provenance.sources_of(state, c)
        for src in sources:
            if not src.prefix.endswith("-egress") or src.prefix in seen:
                continue
            seen.add(src.prefix)
            origins = provenance.origins(state, src)
            found = _attribute(origins, _sets_of(ruleset, src.prefix), counters, lambda o: asg_logging)
            for index, h in found.items():
                hits[index].packets += h.packets
                hits[index].bytes += h.bytes
    return [
        PolicyHits(kind="egress", policy=p.model_dump(mode="json", exclude_defaults=True), hits=hits.get(i, Hits()))
        for i, p in enumerate(state.egress_policies)
    ]


def _c2c_hits(state: CellState, ruleset: Ruleset, counters: Counters) -> list[PolicyHits]:
    sources = provenance.c2c_sources(state)
    hits: dict[int, Hits] = defaultdict(Hits)
    local_apps = {c.app_guid for c in state.containers}
    for app in local_apps:
        policies = [p for p in state.c2c_policies if p.destination.id == app]
        for key, c in _set_counters(counters, app_chain(app)):
            src, proto, port = key
            assert isinstance(src, AddrRange) and isinstance(proto, IntRange) and isinstance(port, IntRange)
            policy = provenance.c2c_policy_of(policies, sources, int(src.start), proto.lo, (port.lo, port.hi))
            if policy is not None:
                hits[id(policy)].add(c)
    return [
        PolicyHits(
            kind="c2c",
            policy=p.model_dump(mode="json", exclude_none=True),
            destination_app=p.destination.id,
            hits=hits.get(id(p), Hits()),
        )
        for p in state.c2c_policies
        if p.destination.id in local_apps
    ]


def _rule_hits(ruleset: Ruleset, counters: Counters, chain: str, index: int) -> Counter:
    rules = ruleset.rules.get(chain, [])
    if not rules:
        return Counter()
    return counters.rules.get((chain, rules[index].fingerprint), Counter())


def _deny_hits(state: CellState, ruleset: Ruleset, counters: Counters) -> list[DenyHits]:
    out = []
    cfg = state.config
    for lifecycle in ("always", "running", "staging"):
        nets = getattr(cfg.deny_networks, lifecycle)
        for v in (4, 6):
            mine = [n for n in nets if n.version == v]
            per: dict[str, Hits] = {str(n): Hits() for n in mine}
            for key, c in _set_counters(counters, f"deny-{lifecycle}{v}"):
                assert isinstance(key[0], AddrRange)
                lo, hi = int(key[0].start), int(key[0].end)
                net = next((n for n in mine if int(n.network_address) <= hi and lo <= int(n.broadcast_address)), None)
                if net is not None:
                    per[str(net)].add(c)
            out += [DenyHits(what=f"deny_networks.{lifecycle} {n}", hits=h) for n, h in per.items()]
    egress = Hits()
    dispatch = [e.value for m in ("egress4", "egress6") for e in ruleset.elements.get(m, {}).values() if e.value]
    for chain in {value.split()[-1] for value in dispatch}:
        egress.add(_rule_hits(ruleset, counters, chain, -1))
    out.append(DenyHits(what="default deny (egress: no rule allows it)", hits=egress))
    for app in sorted({c.app_guid for c in state.containers}):
        hits = Hits()
        hits.add(_rule_hits(ruleset, counters, app_chain(app), -1))
        out.append(DenyHits(what=f"c2c default deny into app {app}", hits=hits))
    host = Hits()
    host.add(_rule_hits(ruleset, counters, HOST_ACCESS, -1))
    out.append(DenyHits(what="to the cell: not DNS or a listed host service", hits=host))
    unknown = Hits()
    for r in ruleset.rules.get("forward", []):
        if "reject" in r.text:
            unknown.add(counters.rules.get(("forward", r.fingerprint), Counter()))
    out.append(DenyHits(what="unknown overlay source (fail closed)", hits=unknown))
    return out
