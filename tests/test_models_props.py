"""Properties of the rule grammar: parsing covers exactly what was written, whatever the spelling."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from events.intervals import Interval
from events.models import AddressRange, EgressRule, NetOutRule, Protocol, SecurityGroupRule

settings.register_profile("cfnft", deadline=None)
settings.load_profile("cfnft")

# Small address universes, so the addresses a destination covers can be enumerated one by one.
V4_BASE, V6_BASE = int(IPv4Address("192.0.2.0")), int(IPv6Address("2001:db8::"))


def addr(version: int, offset: int) -> str:
    return text(version, (V4_BASE if version == 4 else V6_BASE) + offset)


def text(version: int, number: int) -> str:
    return str(IPv4Address(number) if version == 4 else IPv6Address(number))


@st.composite
def destination_element(draw: st.DrawFn, version: int) -> tuple[str, set[tuple[int, int]]]:
    """One CC destination element and the (version, address) pairs it covers, computed independently."""
    max_prefix = 32 if version == 4 else 128
    kind = draw(st.sampled_from(["single", "cidr", "range"]))
    if kind == "single":
        offset = draw(st.integers(0, 255))
        text = addr(version, offset)
        return text, {(version, int(ip_address(text)))}
    if kind == "cidr":
        offset = draw(st.integers(0, 255))
        prefix = draw(st.integers(max_prefix - 8, max_prefix))
        text = f"{addr(version, offset)}/{prefix}"  # host bits set on purpose
        return text, {(version, int(a)) for a in ip_network(text, strict=False)}
    lo, hi = sorted(draw(st.lists(st.integers(0, 255), min_size=2, max_size=2)))
    text = f"{addr(version, lo)}-{addr(version, hi)}"
    return text, {(version, int(ip_address(addr(version, o)))) for o in range(lo, hi + 1)}


@st.composite
def cc_rule(draw: st.DrawFn) -> tuple[dict, set[tuple[int, int]], set[int]]:
    """A valid CC rule as JSON, with the addresses and ports it covers."""
    protocol = draw(st.sampled_from(list(Protocol)))
    versions = {Protocol.ICMP: [4], Protocol.ICMPV6: [6]}.get(protocol, [4, 6])
    elements = draw(st.lists(st.sampled_from(versions).flatmap(destination_element), min_size=1, max_size=8))
    rule: dict = {"protocol": str(protocol), "destination": ",".join(text for text, _ in elements)}
    covered = set().union(*(c for _, c in elements))
    ports: set[int] = set()
    if protocol.has_ports:
        pad = st.sampled_from(["", " ", "  "])
        if draw(st.booleans()):
            lo, hi = sorted(draw(st.lists(st.integers(1, 65535), min_size=2, max_size=2)))
            rule["ports"] = f"{draw(pad)}{lo}{draw(pad)}-{draw(pad)}{hi}{draw(pad)}"
            ports = set(range(lo, hi + 1))
        else:
            singles = draw(st.lists(st.integers(1, 65535), min_size=1, max_size=10))
            rule["ports"] = ",".join(f"{draw(pad)}{p}{draw(pad)}" for p in singles)
            ports = set(singles)
    if protocol.is_icmp:
        rule["type"] = draw(st.integers(-1, 255))
        rule["code"] = draw(st.integers(-1, 255))
    if draw(st.booleans()):
        rule["log"] = draw(st.booleans())
    return rule, covered, ports


def addresses_of(rule: EgressRule) -> set[tuple[int, int]]:
    return {(r.version, n) for r in rule.destinations for n in range(r.start, r.end + 1)}


def runs(ints: set[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive integers: the canonical port ranges, computed the slow way."""
    out: list[tuple[int, int]] = []
    for n in sorted(ints):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


@given(cc_rule())
def test_parsed_destinations_cover_exactly_the_input_addresses(case: tuple[dict, set, set]) -> None:
    data, covered, ports = case
    rule = SecurityGroupRule.model_validate(data).egress_rule()
    assert addresses_of(rule) == covered
    assert list(rule.ports) == runs(ports)
    # Canonical: sorted, and neither overlapping nor touching within a family.
    for a, b in zip(rule.destinations, rule.destinations[1:]):
        assert (a.version, a.end + 1) < (b.version, b.start)
    if rule.protocol.is_icmp:
        assert (rule.icmp_type, rule.icmp_code) == (data["type"], data["code"])


@given(cc_rule())
def test_internal_form_means_the_same(case: tuple[dict, set, set]) -> None:
    """The policy server's seven-key form of a rule allows exactly what the CC form allows."""
    parsed = SecurityGroupRule.model_validate(case[0])
    assert SecurityGroupRule.model_validate(parsed.internal_form()).egress_rule() == parsed.egress_rule()


@given(cc_rule(), st.randoms(use_true_random=False))
def test_order_of_destinations_does_not_matter(case: tuple[dict, set, set], rnd) -> None:  # noqa: ANN001
    data = case[0]
    pieces = data["destination"].split(",")
    rnd.shuffle(pieces)
    shuffled = {**data, "destination": ",".join(pieces)}
    assert (
        SecurityGroupRule.model_validate(shuffled).egress_rule() == SecurityGroupRule.model_validate(data).egress_rule()
    )


@st.composite
def addr_range(draw: st.DrawFn, version: int) -> AddressRange:
    bits = 32 if version == 4 else 128
    lo, hi = sorted(draw(st.lists(st.integers(0, 2**bits - 1), min_size=2, max_size=2)))
    if draw(st.booleans()):
        hi = lo
    return AddressRange(version, lo, hi)


@st.composite
def egress_rule(draw: st.DrawFn) -> EgressRule:
    """Any canonical rule, including ones Cloud Controller needs several rules to say."""
    protocol = draw(st.sampled_from(list(Protocol)))
    versions = {Protocol.ICMP: [4], Protocol.ICMPV6: [6]}.get(protocol, [4, 6])
    destinations = draw(st.lists(st.sampled_from(versions).flatmap(addr_range), min_size=1, max_size=6))
    ports: list[Interval] = []
    if protocol.has_ports:
        for lo, hi in draw(st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 300)), min_size=1, max_size=6)):
            ports.append((lo, min(lo + hi, 65535)))
    icmp = protocol.is_icmp
    return EgressRule(
        protocol=protocol,
        destinations=tuple(destinations),
        ports=tuple(ports),
        icmp_type=draw(st.integers(-1, 255)) if icmp else None,
        icmp_code=draw(st.integers(-1, 255)) if icmp else None,
        log=draw(st.booleans()),
        description=draw(st.text(max_size=20)),
    )


@given(egress_rule())
def test_net_out_rules_mean_what_they_say(rule: EgressRule) -> None:
    """A Garden rule built from a canonical rule converts back to it, and to what the same rule in
    Cloud Controller's form gives, where CC can say it in one rule (one port range, or single ports).
    In Garden 255 and -1 are both "any"."""
    garden_protocol = {Protocol.ALL: 0, Protocol.TCP: 1, Protocol.UDP: 2, Protocol.ICMP: 3, Protocol.ICMPV6: 4}
    data: dict = {
        "protocol": garden_protocol[rule.protocol],
        "networks": [{"start": text(d.version, d.start), "end": text(d.version, d.end)} for d in rule.destinations],
        "log": rule.log,
    }
    if rule.ports:
        data["ports"] = [{"start": lo, "end": hi} for lo, hi in rule.ports]
    if rule.icmp_type is not None and rule.icmp_code is not None:
        data["icmps"] = {"type": rule.icmp_type % 256, "code": rule.icmp_code % 256}  # the executor's uint8 cast
    converted = NetOutRule.model_validate(data).egress_rule()
    any_or = lambda v: None if v is None else -1 if v in (-1, 255) else v  # noqa: E731
    expected = EgressRule(
        protocol=rule.protocol,
        destinations=rule.destinations,
        ports=rule.ports,
        icmp_type=any_or(rule.icmp_type),
        icmp_code=any_or(rule.icmp_code),
        log=rule.log,
    )
    assert converted == expected
    cc: dict = {
        "protocol": str(rule.protocol),
        "destination": ",".join(f"{n['start']}-{n['end']}" for n in data["networks"]),
        "log": rule.log,
    }
    if len(rule.ports) == 1:
        cc["ports"] = "%d-%d" % rule.ports[0]
    elif rule.ports:
        if any(lo != hi for lo, hi in rule.ports):
            return  # several ranges: CC needs a rule per range
        cc["ports"] = ",".join(str(lo) for lo, _ in rule.ports)
    if rule.protocol.is_icmp:
        cc["type"], cc["code"] = expected.icmp_type, expected.icmp_code
    assert SecurityGroupRule.model_validate(cc).egress_rule() == converted
