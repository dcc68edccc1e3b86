"""`cfnft explain`: would this packet pass, and which one thing decides it?

`explain(state, source, probe)` follows a new connection's first packet (or, with
`established`, a packet of an existing one) through the table that `compile_ruleset(state)`
builds, in the kernel's order (compile.py's docstring draws the path):

    to the cell itself (dns_servers, host services)  -> host-access: the service, else reject
    established/related                              -> accept (return traffic)
    to a container of this cell                      -> its app's c2c chain: a policy, else reject
    from the container (its egress bundle):
        to the overlay                               -> accept here; the destination's cell decides
                                                        by its c2c policies (answered from them)
        deny_networks                                -> reject
        security groups / egress policies / static   -> accept (logged rules first, as in the chain)
        anything else                                -> reject (default deny)

It evaluates the operator's rules as written, not the compiled elements, so it checks the
compiler as well as explaining it; the answer names the nft rule that takes the verdict on this
cell (chain, text, fingerprint), which `--trace` compares with the kernel's own path.

Pure: no I/O, no clock. Bad input (unknown container, address family it lacks) raises
ExplainInputError.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from cfnft.errors import InputError
from events.models import CellState, Container, EgressRule, Protocol
from nft.objects import Rule, Ruleset
from reconciler import provenance
from reconciler.compile import HOST_ACCESS, app_chain, compile_ruleset

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ExplainInputError(InputError):
    """The question cannot be asked of this state (unknown container, malformed destination)."""


class ProbeProto(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ICMPV6 = "icmpv6"


_PROTO_NUMBER = {ProbeProto.TCP: 6, ProbeProto.UDP: 17, ProbeProto.ICMP: 1, ProbeProto.ICMPV6: 58}
_ECHO_REQUEST = {ProbeProto.ICMP: 8, ProbeProto.ICMPV6: 128}
_SPEC = re.compile(r"(?P<proto>[a-z0-9]+):(?:\[(?P<bracketed>[^\]]+)\]|(?P<plain>[^:]+))(?::(?P<rest>.+))?")


@dataclass(frozen=True, slots=True)
class Probe:
    """A packet to explain: protocol, destination, and the port (tcp/udp) or ICMP type/code."""

    proto: ProbeProto
    dst: IPAddress
    port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None

    @classmethod
    def parse(cls, text: str) -> Probe:
        """`tcp:IP:PORT`, `udp:IP:PORT`, `icmp:IP[:TYPE/CODE]`, `icmpv6:IP[:TYPE/CODE]`; IPv6 with a
        port or type in brackets (`tcp:[2001:db8::1]:443`). ICMP without a type is an echo request."""
        if "[" not in text and text.count(":") > 2:  # an unbracketed IPv6 address with nothing after it
            proto_text, _, addr_text = text.partition(":")
            text = f"{proto_text}:[{addr_text}]"
        m = _SPEC.fullmatch(text)
        if m is None:
            raise ExplainInputError(f"{text!r}: expected PROTO:IP[:PORT] (icmp:IP:TYPE/CODE, IPv6 as [IP])")
        try:
            proto = ProbeProto(m["proto"])
        except ValueError:
            raise ExplainInputError(f"{text!r}: protocol must be tcp, udp, icmp or icmpv6") from None
        try:
            dst = ipaddress.ip_address(m["bracketed"] or m["plain"])
        except ValueError:
            raise ExplainInputError(f"{text!r}: {m['bracketed'] or m['plain']!r} is not an IP address") from None
        rest = m["rest"]
        if proto in (ProbeProto.TCP, ProbeProto.UDP):
            if rest is None or not rest.isdigit() or not 1 <= int(rest) <= 65535:
                raise ExplainInputError(f"{text!r}: {proto} needs a port 1-65535 (PROTO:IP:PORT)")
            return cls(proto, dst, port=int(rest))
        if (proto is ProbeProto.ICMP) != (dst.version == 4):
            raise ExplainInputError(f"{text!r}: icmp goes with IPv4, icmpv6 with IPv6")
        icmp_type, icmp_code = _ECHO_REQUEST[proto], 0
        if rest is not None:
            t, _, c = rest.partition("/")
            if not (t.isdigit() and c.isdigit() and int(t) <= 255 and int(c) <= 255):
                raise ExplainInputError(f"{text!r}: ICMP type and code must be TYPE/CODE, each 0-255")
            icmp_type, icmp_code = int(t), int(c)
        return cls(proto, dst, icmp_type=icmp_type, icmp_code=icmp_code)

    @property
    def number(self) -> int:
        return _PROTO_NUMBER[self.proto]

    def __str__(self) -> str:
        host = f"[{self.dst}]" if self.dst.version == 6 else str(self.dst)
        if self.port is not None:
            return f"{self.proto} {host}:{self.port}"
        return f"{self.proto} {host} type {self.icmp_type} code {self.icmp_code}"

    def matches(self, rule: EgressRule) -> bool:
        """Whether `rule` allows this packet."""
        v, n = self.dst.version, int(self.dst)
        if not any(d.version == v and d.start <= n <= d.end for d in rule.destinations):
            return False
        if rule.protocol is Protocol.ALL:
            return True
        if rule.protocol.value != self.proto.value:
            return False
        if self.port is not None:
            return any(lo <= self.port <= hi for lo, hi in rule.ports)
        return rule.icmp_type in (None, -1, self.icmp_type) and rule.icmp_code in (None, -1, self.icmp_code)


class Decider(StrEnum):
    """The kinds of thing that decide a packet's fate."""

    SECURITY_GROUP = "security_group"
    EGRESS_POLICY = "egress_policy"
    CONTAINER_RULE = "container_egress_rule"
    C2C_POLICY = "c2c_policy"
    C2C_DEFAULT_DENY = "c2c_default_deny"
    NO_CONTAINER = "no_container"
    DENY_NETWORKS = "deny_networks"
    HOST_ACCESS = "host_access"
    HOST_DEFAULT_DENY = "host_default_deny"
    ESTABLISHED = "established"
    DEFAULT_DENY = "default_deny"


class NftRef(BaseModel):
    """The rule of this cell's table that takes the verdict."""

    model_config = ConfigDict(frozen=True)

    chain: str
    rule: str
    fingerprint: str


class Explanation(BaseModel):
    """The answer: verdict, the one deciding thing (with its provenance), and its nft rule."""

    model_config = ConfigDict(frozen=True)

    source: str
    source_ip: str
    probe: str
    allowed: bool
    decider: Decider
    reason: str
    logged: bool = False
    enforced_on: str = "this cell"
    security_group: dict[str, object] | None = None  # guid, name, rule_index, rule (as Cloud Controller shows it)
    policy: dict[str, object] | None = None  # the c2c or egress policy, as the policy server shows it
    network: str | None = None  # the deny_networks entry
    nft: NftRef

    def text(self) -> str:
        lines = [
            f"{'allowed' if self.allowed else 'denied'}: {self.source} ({self.source_ip}) -> {self.probe}",
            f"  decided by: {self.reason}",
        ]
        if self.security_group is not None:
            lines.append(f"  rule as Cloud Controller shows it: {_compact(self.security_group['rule'])}")
        if self.policy is not None:
            lines.append(f"  policy: {_compact(self.policy)}")
        if self.enforced_on != "this cell":
            lines.append(f"  enforced on: {self.enforced_on}")
        lines.append(f"  nft: chain {self.nft.chain}: {self.nft.rule} [{self.nft.fingerprint}]")
        return "\n".join(lines)


def _compact(value: object) -> str:
    import json

    return json.dumps(value, separators=(", ", ": "))


def find_source(state: CellState, name: str) -> Container:
    """A local container by handle, or by one of its addresses."""
    for c in state.containers:
        if name in (c.handle, str(c.ip), str(c.ipv6) if c.ipv6 else None):
            return c
    raise ExplainInputError(f"no container {name!r} on cell {state.cell_id or '(unnamed)'}")


def explain(
    state: CellState, source: str, probe: Probe, *, established: bool = False, ruleset: Ruleset | None = None
) -> Explanation:
    """Explain `probe` sent by the local container `source` (handle or address).

    `ruleset` is `compile_ruleset(state)` when the caller has it already."""
    return _Explainer(state, find_source(state, source), probe, ruleset or compile_ruleset(state)).run(established)


class _Explainer:
    def __init__(self, state: CellState, container: Container, probe: Probe, ruleset: Ruleset) -> None:
        self.state, self.c, self.p, self.rs = state, container, probe, ruleset
        if probe.dst.version == 6 and container.ipv6 is None:
            raise ExplainInputError(f"container {container.handle} has no IPv6 address: it cannot send {probe}")
        src = container.ip if probe.dst.version == 4 else container.ipv6
        assert src is not None  # checked just above
        self.src: IPAddress = src
        self.v = probe.dst.version

    def _answer(
        self,
        allowed: bool,
        decider: Decider,
        reason: str,
        rule: Rule,
        *,
        logged: bool = False,
        enforced_on: str = "this cell",
        security_group: dict[str, object] | None = None,
        policy: dict[str, object] | None = None,
        network: str | None = None,
    ) -> Explanation:
        return Explanation(
            source=self.c.handle,
            source_ip=str(self.src),
            probe=str(self.p),
            allowed=allowed,
            decider=decider,
            reason=reason,
            logged=logged,
            enforced_on=enforced_on,
            security_group=security_group,
            policy=policy,
            network=network,
            nft=NftRef(chain=rule.chain, rule=rule.text, fingerprint=rule.fingerprint),
        )

    def _rule(self, chain: str, needle: str | None = None, *, last: bool = False) -> Rule:
        rules = self.rs.rules.get(chain, [])
        found = [r for r in rules if needle is None or needle in r.text]
        if not found:
            raise LookupError(f"compiled chain {chain!r} has no rule with {needle!r}")  # a bug, not input
        return found[-1] if last else found[0]

    def run(self, established: bool) -> Explanation:
        cfg = self.state.config
        if self._to_cell():
            return self._host_access(established)
        if established:
            return self._answer(
                True,
                Decider.ESTABLISHED,
                "return traffic / an established connection (ct state established,related)",
                self._rule("forward", "ct state established,related"),
            )
        local = next((c for c in self.state.containers if self.p.dst in (c.ip, c.ipv6)), None)
        if local is not None:
            return self._c2c(local.app_guid, app_chain(local.app_guid))
        bundle, sources = provenance.sources_of(self.state, self.c)
        if self.v == 4 and self.p.dst in cfg.overlay_network:
            return self._remote(bundle)
        for lifecycle in ("always", "staging" if self.c.workload.value == "staging" else "running"):
            for net in getattr(cfg.deny_networks, lifecycle):
                if net.version == self.v and self.p.dst in net:
                    return self._answer(
                        False,
                        Decider.DENY_NETWORKS,
                        f"deny_networks.{lifecycle} {net}",
                        self._rule(bundle, f"@deny-{lifecycle}{self.v} "),
                        network=str(net),
                    )
        for logged_pass in (True, False):
            for src in sources:
                for o in provenance.origins(self.state, src, self.c):
                    logged = o.rule.log or cfg.asg_logging
                    if logged is logged_pass and self.p.matches(o.rule):
                        return self._allowed_by(o, bundle, provenance.allow_set(src, o.rule, logged, self.v), logged)
        default = self._rule(bundle, last=True)
        return self._answer(False, Decider.DEFAULT_DENY, "default deny (no rule allows it)", default)

    def _allowed_by(self, o: provenance.Origin, bundle: str, set_name: str, logged: bool) -> Explanation:
        rule = self._rule(bundle, f"@{set_name} ")
        if o.kind is provenance.OriginKind.SECURITY_GROUP:
            group = {"guid": o.guid, "name": o.name, "rule_index": o.index, "rule": o.shown}
            return self._answer(True, Decider.SECURITY_GROUP, o.title(), rule, security_group=group, logged=logged)
        if o.kind is provenance.OriginKind.EGRESS_POLICY:
            return self._answer(True, Decider.EGRESS_POLICY, o.title(), rule, policy=o.shown, logged=logged)
        return self._answer(True, Decider.CONTAINER_RULE, o.title(), rule, policy=o.shown, logged=logged)

    def _to_cell(self) -> bool:
        cfg = self.state.config
        services = [ip for ip, _ in cfg.tcp_services() + cfg.udp_services()]
        return self.p.dst in (*cfg.dns_servers, *services)

    def _host_access(self, established: bool) -> Explanation:
        cfg = self.state.config
        if established:
            return self._answer(
                True, Decider.ESTABLISHED, "return traffic to the cell", self._rule(HOST_ACCESS, "ct state established")
            )
        offered = []
        if self.p.dst in cfg.dns_servers:
            offered += [(f"dns_servers {self.p.dst}", proto, 53) for proto in (ProbeProto.TCP, ProbeProto.UDP)]
        for proto, entries in ((ProbeProto.TCP, cfg.tcp_services()), (ProbeProto.UDP, cfg.udp_services())):
            offered += [(f"host_{proto}_services {ip}:{port}", proto, port) for ip, port in entries if ip == self.p.dst]
        for what, proto, port in offered:
            if self.p.proto is proto and self.p.port == port:
                return self._answer(True, Decider.HOST_ACCESS, what, self._rule(HOST_ACCESS, f"@host-services{self.v}"))
        return self._answer(
            False,
            Decider.HOST_DEFAULT_DENY,
            "to the cell: not DNS or a listed host service",
            self._rule(HOST_ACCESS, last=True),
        )

    def _c2c(self, app: str, chain: str | None) -> Explanation:
        """The c2c verdict for a destination of `app`; `chain` is None when its cell is another."""
        policies = [p for p in self.state.c2c_policies if p.destination.id == app]
        policy = None
        if self.v == 4 and self.p.port is not None:
            sources = provenance.c2c_sources(self.state)
            policy = provenance.c2c_policy_of(policies, sources, int(self.src), self.p.number, (self.p.port,) * 2)
        cfg = self.state.config
        if chain is None:
            rule = self._rule(provenance.sources_of(self.state, self.c)[0], "ip daddr ")
            where = f"the cell of app {app}'s instance (this cell passes overlay traffic on)"
        elif policy is not None:
            rule, where = self._rule(chain, f"@{chain} "), "this cell"
        else:
            rule, where = self._rule(chain, last=True), "this cell"
        if policy is None:
            reason = f"no c2c policy allows this into app {app}"
            return self._answer(False, Decider.C2C_DEFAULT_DENY, reason, rule, enforced_on=where)
        return self._answer(
            True,
            Decider.C2C_POLICY,
            provenance.c2c_policy_text(policy),
            rule,
            policy=policy.model_dump(mode="json", exclude_none=True),
            logged=cfg.c2c_logging,
            enforced_on=where,
        )

    def _remote(self, bundle: str) -> Explanation:
        apps = provenance.c2c_sources(self.state).get(int(self.p.dst), set())
        if not apps:
            return self._answer(
                False,
                Decider.NO_CONTAINER,
                f"no known container has {self.p.dst}: the overlay delivers nothing there",
                self._rule(bundle, "ip daddr "),
                enforced_on="the overlay (this cell passes overlay traffic on)",
            )
        return self._c2c(sorted(apps)[0], None)
