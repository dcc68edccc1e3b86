"""The state-document models and rule formats accept every form CF produces and mean what CF means."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from events.intervals import Interval
from events.models import (
    AddressRange,
    BBSSecurityGroupRule,
    CellConfig,
    CellState,
    Container,
    EgressPolicy,
    EgressRule,
    InternalSecurityGroup,
    NetOutRule,
    Protocol,
    SecurityGroup,
    SecurityGroupRule,
    Workload,
    load_cell_state,
    load_cell_state_file,
    parse_internal_policies,
)

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE = Path(__file__).parent.parent / "examples" / "cell-state.json"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def a(start: str, end: str | None = None) -> AddressRange:
    return AddressRange.of(ip_address(start), ip_address(end or start))


def p(lo: int, hi: int | None = None) -> Interval:
    return (lo, lo if hi is None else hi)


def rule(**fields: object) -> EgressRule:
    return SecurityGroupRule.model_validate(fields).egress_rule()


# --- CC rule forms ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "destination, expected",
    [
        ("192.0.2.7", (a("192.0.2.7"),)),
        ("2001:db8::1", (a("2001:db8::1"),)),
        ("192.0.2.5/24", (a("192.0.2.0", "192.0.2.255"),)),
        ("2001:db8::5/126", (a("2001:db8::4", "2001:db8::7"),)),
        ("192.0.2.10-192.0.2.20", (a("192.0.2.10", "192.0.2.20"),)),
        ("192.0.2.10-192.0.2.10", (a("192.0.2.10"),)),
        ("2001:db8::1-2001:db8::ff", (a("2001:db8::1", "2001:db8::ff"),)),
        ("0.0.0.0/0", (a("0.0.0.0", "255.255.255.255"),)),
        (
            "203.0.113.1-203.0.113.9,198.51.100.0/24,192.0.2.1",
            (a("192.0.2.1"), a("198.51.100.0", "198.51.100.255"), a("203.0.113.1", "203.0.113.9")),
        ),
        ("2001:db8::1,192.0.2.1", (a("192.0.2.1"), a("2001:db8::1"))),
        ("192.0.2.0/25,192.0.2.128/25", (a("192.0.2.0", "192.0.2.255"),)),
        ("192.0.2.1,192.0.2.2,192.0.2.3", (a("192.0.2.1", "192.0.2.3"),)),
        ("192.0.2.0/24,192.0.2.7", (a("192.0.2.0", "192.0.2.255"),)),
    ],
)
def test_destination_forms(destination: str, expected: tuple[AddressRange, ...]) -> None:
    """Every CC destination form parses to sorted, merged address ranges; host bits of a CIDR are dropped."""
    assert rule(protocol="tcp", destination=destination, ports="443").destinations == expected


@pytest.mark.parametrize(
    "ports, expected",
    [
        ("443", (p(443),)),
        ("80,443", (p(80), p(443))),
        ("443,80,443", (p(80), p(443))),
        ("8000-9000", (p(8000, 9000),)),
        (" 80 , 443 ", (p(80), p(443))),
        (" 8000 - 9000 ", (p(8000, 9000),)),
        ("080", (p(80),)),
        ("80-80", (p(80),)),
        ("1,65535", (p(1), p(65535))),
        ("1-65535", (p(1, 65535),)),
        ("80,81,82", (p(80, 82),)),
    ],
)
def test_port_forms(ports: str, expected: tuple[Interval, ...]) -> None:
    """Single port, comma list, one range, spaces around numbers; lists are merged into ranges."""
    assert rule(protocol="udp", destination="192.0.2.1", ports=ports).ports == expected


@pytest.mark.parametrize("icmp_type, icmp_code", [(-1, -1), (8, -1), (8, 0), (0, 0), (255, 255), (3, 4)])
def test_icmp_type_and_code(icmp_type: int, icmp_code: int) -> None:
    """ICMP type and code run -1..255; -1 (any) is kept as -1 for the compiler."""
    r = rule(protocol="icmp", destination="192.0.2.1", type=icmp_type, code=icmp_code)
    assert (r.icmp_type, r.icmp_code, r.ports) == (icmp_type, icmp_code, ())


def test_icmpv6_rule_takes_ipv6_destinations() -> None:
    r = rule(protocol="icmpv6", destination="2001:db8::/32", type=128, code=0)
    assert r.protocol is Protocol.ICMPV6
    assert r.destinations == (a("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),)


def test_all_rule_has_neither_ports_nor_icmp() -> None:
    r = rule(protocol="all", destination="192.0.2.0/24,2001:db8::/64", log=True, description="everything")
    assert (r.protocol, r.ports, r.icmp_type, r.icmp_code, r.log, r.description) == (
        Protocol.ALL,
        (),
        None,
        None,
        True,
        "everything",
    )


@pytest.mark.parametrize(
    "internal",
    [
        {
            "protocol": "all",
            "destination": "192.0.2.1",
            "ports": "",
            "type": 0,
            "code": 0,
            "description": "",
            "log": False,
        },
        {
            "protocol": "tcp",
            "destination": "192.0.2.1",
            "ports": "443",
            "type": 0,
            "code": 0,
            "description": "",
            "log": False,
        },
        {
            "protocol": "icmp",
            "destination": "192.0.2.1",
            "ports": "",
            "type": 8,
            "code": 0,
            "description": "",
            "log": True,
        },
    ],
)
def test_policy_server_internal_rule_form(internal: dict) -> None:
    """The policy server's seven-key form (ports "", type/code 0 where CC had none) means the same as CC's form."""
    parsed = SecurityGroupRule.model_validate(internal)
    cc = {
        k: v
        for k, v in internal.items()
        if v not in ("", 0, False) or (k in ("type", "code") and "icmp" in internal["protocol"])
    }
    assert parsed.egress_rule() == SecurityGroupRule.model_validate(cc).egress_rule()
    assert parsed.internal_form() == internal


# --- the canonical rule -----------------------------------------------------------------------------


def test_rules_equal_when_they_allow_the_same_packets() -> None:
    """Order, splitting and description do not matter: the compiler can dedupe rules by value."""
    one = rule(protocol="tcp", destination="192.0.2.0/24,198.51.100.1", ports="443,80", description="a")
    two = rule(protocol="tcp", destination="198.51.100.1,192.0.2.0/25,192.0.2.128/25", ports="80,443", description="b")
    assert one == two and hash(one) == hash(two)
    assert len({one, two}) == 1
    assert one != rule(protocol="tcp", destination="192.0.2.0/24,198.51.100.1", ports="80,443", log=True)
    assert one != rule(protocol="udp", destination="192.0.2.0/24,198.51.100.1", ports="80,443")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"protocol": "tcp", "destinations": ()}, "tcp rule without destinations"),
        ({"protocol": "tcp", "destinations": (a("192.0.2.1"),)}, "tcp rule without ports"),
        ({"protocol": "all", "destinations": (a("192.0.2.1"),), "ports": (p(80),)}, "all rule with ports"),
        ({"protocol": "udp", "destinations": (a("192.0.2.1"),), "ports": (p(0, 80),)}, "udp rule with a port outside"),
        ({"protocol": "icmp", "destinations": (a("2001:db8::1"),), "icmp_type": 0, "icmp_code": 0}, "IPv6"),
        ({"protocol": "icmpv6", "destinations": (a("192.0.2.1"),), "icmp_type": 0, "icmp_code": 0}, "IPv4"),
        ({"protocol": "icmp", "destinations": (a("192.0.2.1"),), "icmp_type": 0}, "without icmp_code"),
        ({"protocol": "icmp", "destinations": (a("192.0.2.1"),), "icmp_type": 256, "icmp_code": 0}, "256"),
        ({"protocol": "all", "destinations": (a("192.0.2.1"),), "icmp_type": 0}, "all rule with icmp_type"),
    ],
)
def test_egress_rule_refuses_impossible_rules(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EgressRule(**fields)  # type: ignore[arg-type]


def test_egress_rule_merges_numbers_and_refuses_what_is_no_address_or_port() -> None:
    r = EgressRule(
        protocol=Protocol.TCP, destinations=(AddressRange(4, 5, 9), AddressRange(4, 1, 4)), ports=((90, 99), (80, 89))
    )
    assert r.destinations == (AddressRange(4, 1, 9),) and r.ports == ((80, 99),)
    for destinations, message in [
        ((AddressRange(5, 1, 1),), "IP version 5"),
        ((AddressRange(4, 9, 1),), "9-1, not an IPv4 range"),
        ((AddressRange(4, 0, 2**32),), "not an IPv4 range"),
        ((AddressRange(6, -1, 0),), "not an IPv6 range"),
    ]:
        with pytest.raises(ValueError, match=message):
            EgressRule(protocol=Protocol.ALL, destinations=destinations)
    with pytest.raises(ValueError, match="tcp rule with ports 90-80: start after end"):
        EgressRule(protocol=Protocol.TCP, destinations=(a("192.0.2.1"),), ports=((90, 80),))


def test_address_range_of_one_ip_version() -> None:
    assert AddressRange.of(ip_address("2001:db8::1")) == AddressRange(6, 0x20010DB8 << 96 | 1, 0x20010DB8 << 96 | 1)
    with pytest.raises(ValueError, match="mixes IPv4 and IPv6"):
        AddressRange.of(ip_address("192.0.2.1"), ip_address("2001:db8::1"))


# --- Garden NetOutRule ------------------------------------------------------------------------------


def test_net_out_rule_from_cf_facts() -> None:
    """The garden-external-networker integration test's rule: protocol 1 is tcp."""
    data = {
        "protocol": 1,
        "networks": [{"start": "192.0.2.8", "end": "192.0.2.9"}],
        "ports": [{"start": 53, "end": 54}],
        "log": True,
    }
    assert NetOutRule.model_validate(data).egress_rule() == EgressRule(
        protocol=Protocol.TCP, destinations=(a("192.0.2.8", "192.0.2.9"),), ports=(p(53, 54),), log=True
    )


def test_net_out_rule_without_protocol_is_all() -> None:
    """Garden omits protocol 0 (all) from its JSON."""
    r = NetOutRule.model_validate({"networks": [{"start": "192.0.2.1", "end": "192.0.2.1"}]}).egress_rule()
    assert (r.protocol, r.ports, r.icmp_type) == (Protocol.ALL, (), None)


@pytest.mark.parametrize(
    "icmps, expected",
    [
        ({"type": 255, "code": 255}, (-1, -1)),
        ({"type": 8, "code": 255}, (8, -1)),
        ({"type": 8}, (8, -1)),
        ({"code": 0}, (0, 0)),
        ({}, (0, -1)),
        ({"type": 3, "code": 4}, (3, 4)),
    ],
)
def test_net_out_rule_icmp_255_means_any(icmps: dict, expected: tuple[int, int]) -> None:
    """The executor casts CC's -1 to uint8 255; Garden omits a zero type and a nil code (any)."""
    data = {"protocol": 3, "networks": [{"start": "192.0.2.1", "end": "192.0.2.1"}], "icmps": icmps}
    r = NetOutRule.model_validate(data).egress_rule()
    assert (r.protocol, r.icmp_type, r.icmp_code) == (Protocol.ICMP, *expected)


def test_net_out_rule_icmpv6_and_many_ranges() -> None:
    data = {
        "protocol": 4,
        "networks": [{"start": "2001:db8::1", "end": "2001:db8::9"}, {"start": "2001:db8::a", "end": "2001:db8::f"}],
        "icmps": {"type": 128, "code": 0},
    }
    r = NetOutRule.model_validate(data).egress_rule()
    assert (r.protocol, r.destinations, r.icmp_type) == (Protocol.ICMPV6, (a("2001:db8::1", "2001:db8::f"),), 128)


V4_AND_V6 = [{"start": "192.0.2.0", "end": "192.0.2.255"}, {"start": "2001:db8::1", "end": "2001:db8::9"}]


@pytest.mark.parametrize(
    "garden, cc",
    [
        # every protocol, Garden's omitted 0 (all) included
        ({"networks": V4_AND_V6}, {"protocol": "all", "destination": "192.0.2.0/24,2001:db8::1-2001:db8::9"}),
        ({"protocol": 0, "networks": V4_AND_V6[:1]}, {"protocol": "all", "destination": "192.0.2.0/24"}),
        (
            {"protocol": 1, "networks": V4_AND_V6, "ports": [{"start": 443, "end": 443}]},
            {"protocol": "tcp", "destination": "192.0.2.0/24,2001:db8::1-2001:db8::9", "ports": "443"},
        ),
        (
            {"protocol": 2, "networks": V4_AND_V6[1:], "ports": [{"start": 8000, "end": 9000}]},
            {"protocol": "udp", "destination": "2001:db8::1-2001:db8::9", "ports": "8000-9000"},
        ),
        # port shapes: a list of single ports, touching and overlapping ranges
        (
            {"protocol": 1, "networks": V4_AND_V6[:1], "ports": [{"start": 80, "end": 80}, {"start": 53, "end": 53}]},
            {"protocol": "tcp", "destination": "192.0.2.0/24", "ports": "53,80"},
        ),
        (
            {"protocol": 1, "networks": V4_AND_V6[:1], "ports": [{"start": 80, "end": 89}, {"start": 90, "end": 99}]},
            {"protocol": "tcp", "destination": "192.0.2.0/24", "ports": "80-99"},
        ),
        (
            {"protocol": 2, "networks": V4_AND_V6[:1], "ports": [{"start": 1, "end": 9}, {"start": 5, "end": 65535}]},
            {"protocol": "udp", "destination": "192.0.2.0/24", "ports": "1-65535"},
        ),
        # network shapes: one address, an unaligned range, touching ranges, a comma list
        (
            {"networks": [{"start": "192.0.2.7", "end": "192.0.2.7"}]},
            {"protocol": "all", "destination": "192.0.2.7"},
        ),
        (
            {"networks": [{"start": "192.0.2.7", "end": "192.0.2.9"}]},
            {"protocol": "all", "destination": "192.0.2.7-192.0.2.9"},
        ),
        (
            {"networks": [{"start": "192.0.2.8", "end": "192.0.2.15"}, {"start": "192.0.2.0", "end": "192.0.2.7"}]},
            {"protocol": "all", "destination": "192.0.2.0/28"},
        ),
        (
            {"networks": [{"start": "203.0.113.1", "end": "203.0.113.1"}, {"start": "192.0.2.1", "end": "192.0.2.1"}]},
            {"protocol": "all", "destination": "192.0.2.1,203.0.113.1"},
        ),
        # ICMP: Garden's 255 (CC's -1 after the executor's uint8 cast), omitted type 0 and nil code
        (
            {"protocol": 3, "networks": V4_AND_V6[:1], "icmps": {"type": 255, "code": 255}},
            {"protocol": "icmp", "destination": "192.0.2.0/24", "type": -1, "code": -1},
        ),
        (
            {"protocol": 3, "networks": V4_AND_V6[:1], "icmps": {"type": 8}},
            {"protocol": "icmp", "destination": "192.0.2.0/24", "type": 8, "code": -1},
        ),
        (
            {"protocol": 3, "networks": V4_AND_V6[:1], "icmps": {}},
            {"protocol": "icmp", "destination": "192.0.2.0/24", "type": 0, "code": -1},
        ),
        (
            {"protocol": 3, "networks": V4_AND_V6[:1], "icmps": {"code": 0}},
            {"protocol": "icmp", "destination": "192.0.2.0/24", "type": 0, "code": 0},
        ),
        (
            {"protocol": 3, "networks": V4_AND_V6[:1], "icmps": {"type": 3, "code": 4}},
            {"protocol": "icmp", "destination": "192.0.2.0/24", "type": 3, "code": 4},
        ),
        (
            {"protocol": 4, "networks": V4_AND_V6[1:], "icmps": {"type": 128, "code": 0}},
            {"protocol": "icmpv6", "destination": "2001:db8::1-2001:db8::9", "type": 128, "code": 0},
        ),
        (
            {"protocol": 4, "networks": V4_AND_V6[1:], "icmps": {"type": 255, "code": 255}},
            {"protocol": "icmpv6", "destination": "2001:db8::1-2001:db8::9", "type": -1, "code": -1},
        ),
        # logging
        (
            {"protocol": 1, "networks": V4_AND_V6[:1], "ports": [{"start": 22, "end": 22}], "log": True},
            {"protocol": "tcp", "destination": "192.0.2.0/24", "ports": "22", "log": True},
        ),
    ],
)
def test_net_out_rule_means_what_the_cc_rule_means(garden: dict, cc: dict) -> None:
    """Garden's form converts straight to the canonical rule, equal to the one Cloud Controller's
    form of the same rule gives (the executor made the Garden rule from that CC rule)."""
    assert NetOutRule.model_validate(garden).egress_rule() == SecurityGroupRule.model_validate(cc).egress_rule()


def test_container_creation_rules_are_its_egress_rules_and_its_net_out_rules() -> None:
    garden = {"protocol": 2, "networks": [{"start": "198.51.100.1", "end": "198.51.100.1"}],
              "ports": [{"start": 53, "end": 53}]}  # fmt: skip
    cc = {"protocol": "tcp", "destination": "192.0.2.1", "ports": "443"}
    c = Container.model_validate(
        {
            "handle": "h",
            "ip": "10.255.0.2",
            "app_guid": "a",
            "space_guid": "s",
            "workload": "app",
            "egress_rules": [cc],
            "net_out_rules": [garden],
        }  # fmt: skip
    )
    assert c.creation_rules() == [
        SecurityGroupRule.model_validate(cc).egress_rule(),
        NetOutRule.model_validate(garden).egress_rule(),
    ]
    assert Container.model_validate_json(c.model_dump_json()) == c
    assert "net_out_rules" not in c.model_copy(update={"net_out_rules": []}).model_dump()


# --- BBS rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bbs, cc",
    [
        (
            {
                "protocol": "tcp",
                "destinations": ["192.0.2.0/24,198.51.100.7"],
                "ports": [80, 443],
                "annotations": ["security_group_id:g1"],
            },
            {
                "protocol": "tcp",
                "destination": "192.0.2.0/24,198.51.100.7",
                "ports": "80,443",
                "description": "security_group_id:g1",
                "log": False,
            },
        ),
        (
            {
                "protocol": "udp",
                "destinations": ["203.0.113.1"],
                "port_range": {"start": 8000, "end": 8080},
                "log": True,
            },
            {"protocol": "udp", "destination": "203.0.113.1", "ports": "8000-8080", "log": True},
        ),
        (
            {"protocol": "tcp", "destinations": ["203.0.113.1"], "port_range": {"start": 443, "end": 443}},
            {"protocol": "tcp", "destination": "203.0.113.1", "ports": "443-443", "log": False},
        ),
        (
            {"protocol": "icmp", "destinations": ["203.0.113.1"], "icmp_info": {"type": 8, "code": -1}},
            {"protocol": "icmp", "destination": "203.0.113.1", "type": 8, "code": -1, "log": False},
        ),
        (
            {"protocol": "icmp", "destinations": ["203.0.113.1"], "icmp_info": {}},
            {"protocol": "icmp", "destination": "203.0.113.1", "type": 0, "code": 0, "log": False},
        ),
        (
            {
                "protocol": "all",
                "destinations": ["192.0.2.1", "2001:db8::1"],
                "annotations": ["security_group_id:a", "security_group_id:b"],
            },
            {
                "protocol": "all",
                "destination": "192.0.2.1,2001:db8::1",
                "description": "security_group_id:a, security_group_id:b",
                "log": False,
            },
        ),
    ],
)
def test_bbs_rule_to_cc_rule(bbs: dict, cc: dict) -> None:
    """CC's egress_rules.rb backwards: ports list, port_range, joined destinations, icmp_info, annotations."""
    converted = BBSSecurityGroupRule.model_validate(bbs).to_cc_rule()
    assert converted.model_dump(exclude_none=True) == cc


# --- dynamic egress policies ------------------------------------------------------------------------


def egress_policy(source: dict, lifecycle: str = "all", **destination: object) -> EgressPolicy:
    dest = {"protocol": "tcp", "ips": [{"start": "192.0.2.100", "end": "192.0.2.101"}], **destination}
    return EgressPolicy.model_validate({"source": source, "destination": dest, "app_lifecycle": lifecycle})


def test_egress_policy_conversion() -> None:
    fix = parse_internal_policies(fixture("policy/internal_policies_with_egress.json"))[1]
    assert fix[0].egress_rule() == EgressRule(
        protocol=Protocol.TCP, destinations=(a("192.0.2.100", "192.0.2.101"),), ports=(p(5432),), description="postgres"
    )
    ping = fix[1].egress_rule()
    assert (ping.protocol, ping.destinations, ping.icmp_type, ping.icmp_code) == (
        Protocol.ICMP,
        (a("203.0.113.1"),),
        8,
        -1,
    )
    assert ping.description == "ping the gateway"


def test_egress_policy_without_ports_allows_every_port() -> None:
    """The VPA added no --dport when the destination had no ports."""
    assert egress_policy({"id": "app"}).egress_rule().ports == (p(1, 65535),)


def test_egress_policy_all_protocol() -> None:
    r = egress_policy({"id": "app"}, protocol="all").egress_rule()
    assert (r.protocol, r.ports, r.icmp_type) == (Protocol.ALL, (), None)


@pytest.mark.parametrize(
    "source, lifecycle, app, space, workload, applies",
    [
        ({"id": "app-1", "type": "app"}, "all", "app-1", "space-1", "app", True),
        ({"id": "app-1"}, "all", "app-1", "space-1", "task", True),
        ({"id": "app-1"}, "all", "app-2", "space-1", "app", False),
        ({"id": "space-1", "type": "space"}, "all", "app-2", "space-1", "app", True),
        ({"id": "space-1", "type": "space"}, "all", "app-2", "space-2", "app", False),
        ({"id": "space-1", "type": "app"}, "all", "app-2", "space-1", "app", False),
        ({"type": "default"}, "all", "anything", "anywhere", "staging", True),
        ({"id": "app-1"}, "running", "app-1", "s", "app", True),
        ({"id": "app-1"}, "running", "app-1", "s", "task", True),
        ({"id": "app-1"}, "running", "app-1", "s", "staging", False),
        ({"id": "app-1"}, "staging", "app-1", "s", "staging", True),
        ({"id": "app-1"}, "staging", "app-1", "s", "app", False),
        ({"id": "app-1"}, "staging", "app-1", "s", None, True),
        ({"id": "app-1"}, "running", "app-1", "s", "", True),
        ({"type": "default"}, "running", "x", "y", "staging", False),
    ],
)
def test_egress_policy_matching(
    source: dict, lifecycle: str, app: str, space: str, workload: str | None, applies: bool
) -> None:
    """The historical VPA: source by app id, by space (type space) or default; lifecycle all/running/staging."""
    assert egress_policy(source, lifecycle).applies_to(app, space, workload) is applies


def test_egress_policy_lifecycle_null_means_all() -> None:
    """The policy server's app_lifecycle is a nullable pointer defaulting to all."""
    assert egress_policy({"id": "a"}, None).app_lifecycle == "all"  # type: ignore[arg-type]


# --- security groups ----------------------------------------------------------------------------------


def test_cc_v3_list_page_resources_parse_verbatim() -> None:
    """Resources of GET /v3/security_groups paste in as they are (created_at, links and all)."""
    groups = [SecurityGroup.model_validate(r) for r in fixture("cc/security_groups_one_page.json")["resources"]]
    dns, payments, mirror = groups
    assert dns.applies_to("any-space", Workload.APP) and dns.applies_to("any-space", Workload.STAGING)
    space = "5d0c9b1e-2f3a-4c5d-8e7f-0a1b2c3d4e5f"
    assert payments.applies_to(space, "app") and payments.applies_to(space, "task")
    assert not payments.applies_to(space, "staging") and not payments.applies_to("other", "app")
    assert mirror.applies_to(space, "staging") and not mirror.applies_to(space, "app")
    assert [r.protocol for r in payments.egress_rules()] == ["tcp", "tcp", "icmp", "udp", "all"]
    assert payments.egress_rules()[1].log and payments.egress_rules()[0].description == "payment gateway"
    assert "links" not in dns.model_dump() and "created_at" not in dns.model_dump()


def test_internal_security_groups_response() -> None:
    """The policy server's internal groups (rules as a JSON string) become the same CC groups."""
    internal = fixture("policy/internal_security_groups.json")["security_groups"]
    cc = fixture("cc/security_groups_one_page.json")["resources"]
    for item, resource in zip(internal, cc):
        group = InternalSecurityGroup.model_validate(item).to_security_group()
        expected = SecurityGroup.model_validate(resource)
        assert group.model_dump(exclude={"rules"}) == expected.model_dump(exclude={"rules"})
        assert group.egress_rules() == expected.egress_rules()
        assert [r.description for r in group.egress_rules()] == [r.description for r in expected.egress_rules()]


def test_internal_security_group_dumps_like_the_policy_server() -> None:
    """For simulators: the CC group -> internal form reproduces the policy server's seven-key rules string."""
    resource = fixture("cc/security_groups_one_page.json")["resources"][1]
    dumped = InternalSecurityGroup.from_security_group(SecurityGroup.model_validate(resource)).model_dump()
    assert dumped == fixture("policy/internal_security_groups.json")["security_groups"][1]
    assert isinstance(dumped["rules"], str)


def test_internal_group_space_lists_may_be_null() -> None:
    group = InternalSecurityGroup.model_validate(
        {"guid": "g", "name": "n", "rules": "[]", "running_space_guids": None, "staging_space_guids": None}
    )
    assert group.to_security_group().running_space_guids == frozenset()


def test_internal_policies_response() -> None:
    c2c, egress = parse_internal_policies(fixture("policy/internal_policies_with_egress.json"))
    assert [
        (c.source.id[:4], c.destination.protocol, c.destination.ports.start, c.destination.ports.end) for c in c2c
    ] == [
        ("2a6f", "tcp", 8080, 8080),
        ("2a6f", "udp", 9000, 9010),
        ("7c8d", "tcp", 9090, 9090),
    ]
    assert c2c[0].source.tag == "0001" and len(egress) == 2


def test_internal_policies_without_egress_keys() -> None:
    """Current policy servers send only total_policies and policies; tags are omitted when empty."""
    data = {
        "total_policies": 1,
        "policies": [
            {"source": {"id": "a"}, "destination": {"id": "b", "protocol": "udp", "ports": {"start": 1, "end": 65535}}}
        ],
    }
    c2c, egress = parse_internal_policies(data)
    assert c2c[0].source.tag is None and egress == []


# --- containers, config, the document ---------------------------------------------------------------


def test_container_defaults_and_frozen() -> None:
    c = Container.model_validate(
        {"handle": "h", "ip": "10.255.0.2", "app_guid": "a", "space_guid": "s", "workload": "task"}
    )
    assert (c.org_guid, c.ports, c.egress_rules, c.port_mappings, c.ipv6, c.log_config) == ("", [], [], [], None, None)
    assert c.workload is Workload.TASK
    with pytest.raises(Exception):
        c.handle = "other"  # type: ignore[misc]


def test_config_defaults() -> None:
    config = CellConfig()
    assert config.overlay_network == ip_network("10.255.0.0/16")
    assert (config.dynamic_asgs, config.asg_logging, config.c2c_logging) == (True, False, False)
    assert (config.denied_logs_per_sec, config.accepted_udp_logs_per_sec) == (1, 100)
    assert config.deny_networks.always == [] and config.dns_servers == []


def test_config_services_and_deny_networks() -> None:
    config = CellConfig.model_validate(
        {
            "host_tcp_services": ["169.254.0.2:9001", "[fd00::2]:8080"],
            "host_udp_services": ["169.254.0.2:53"],
            "deny_networks": {"always": ["192.0.2.5/24"], "running": ["2001:db8::/32"], "staging": ["198.51.100.0/24"]},
            "overlay_network": "10.255.7.1/16",
        }
    )
    assert config.tcp_services() == [(ip_address("169.254.0.2"), 9001), (ip_address("fd00::2"), 8080)]
    assert config.udp_services() == [(ip_address("169.254.0.2"), 53)]
    assert config.host_tcp_services == ["169.254.0.2:9001", "[fd00::2]:8080"], "the input shape is kept"
    assert config.deny_networks.for_workload("task") == [ip_network("192.0.2.0/24"), ip_network("2001:db8::/32")]
    assert config.deny_networks.for_workload("staging") == [ip_network("192.0.2.0/24"), ip_network("198.51.100.0/24")]
    assert config.overlay_network == ip_network("10.255.0.0/16")


def test_config_field_descriptions_are_the_reference_docs() -> None:
    schema = CellConfig.model_json_schema()["properties"]
    assert all(prop.get("description") for prop in schema.values()), "every config key is documented"


def test_minimal_document() -> None:
    state = load_cell_state({"containers": []})
    assert state == CellState(containers=[])
    assert state.config == CellConfig() and state.cell_id == ""


def test_example_document_loads_strictly() -> None:
    state = load_cell_state_file(EXAMPLE)
    assert len(state.containers) == 4 and {c.workload for c in state.containers} == {Workload.APP, Workload.STAGING}
    assert len({c.app_guid for c in state.containers}) == 2 and len({c.space_guid for c in state.containers}) == 2
    dns = state.security_groups[0]
    assert dns.globally_enabled.running and dns.globally_enabled.staging
    rules = [r for g in state.security_groups for r in g.egress_rules()]
    assert any(r.protocol is Protocol.ICMP for r in rules) and any(r.log for r in rules)
    assert any(r.ports and r.ports[0][0] != r.ports[0][1] for r in rules), "a tcp range"
    remote = set(map(str, state.app_instances[state.containers[0].app_guid])) - {str(c.ip) for c in state.containers}
    assert remote, "an instance on another cell"
    assert state.config.deny_networks.always and state.config.dns_servers


def test_example_uses_only_documentation_and_overlay_addresses() -> None:
    state = load_cell_state_file(EXAMPLE)
    docs = [ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]

    def documented(r: AddressRange) -> bool:
        return any(ip_address(r.start) in n and ip_address(r.end) in n for n in docs)

    rules = [r for g in state.security_groups for r in g.egress_rules()] + [
        p.egress_rule() for p in state.egress_policies
    ]
    assert all(documented(d) for r in rules for d in r.destinations)
    denied = [n for ns in (state.config.deny_networks.always, state.config.deny_networks.running) for n in ns]
    assert all(documented(AddressRange.of(n.network_address, n.broadcast_address)) for n in denied)
    overlay = state.config.overlay_network
    assert all(c.ip in overlay for c in state.containers)
    assert all(addr in overlay for addrs in state.app_instances.values() for addr in addrs)


def test_document_round_trips_through_json() -> None:
    """What we dump (NATS messages, `cfnft render --state`) loads back strictly to the same state."""
    state = load_cell_state_file(EXAMPLE)
    again = load_cell_state(json.loads(state.model_dump_json()))
    assert again == state


def test_container_egress_rules_are_cc_rules() -> None:
    """With dynamic ASGs off, a container's own egress_rules (CC format) are its rules."""
    c = Container.model_validate(
        {
            "handle": "h",
            "ip": "10.255.0.2",
            "ipv6": "fd00::2",
            "app_guid": "a",
            "space_guid": "s",
            "workload": "app",
            "egress_rules": [{"protocol": "tcp", "destination": "192.0.2.1", "ports": "443"}],
        }
    )
    assert c.egress_rules[0].egress_rule().ports == (p(443),)
    assert str(c.ipv6) == "fd00::2"


def test_an_address_parses_the_same_on_the_quick_path_and_the_long_one() -> None:
    """parse_ip takes IPv4 text through the C library's strict parser first; what that refuses goes
    through ipaddress, so every spelling gets ipaddress's answer."""
    import ipaddress

    from events.rules import parse_ip

    for text in ("10.0.0.1", "0.0.0.0", "255.255.255.255", "fd00::1", "::ffff:10.0.0.1", "fe80::1%eth0"):
        assert parse_ip(text) == ipaddress.ip_address(text), text
    for text in ("010.0.0.1", "1.02.3.4", "256.1.1.1", "1.1.1", " 1.1.1.1", "1.1.1.1\x00", "1..1.1", ""):
        with pytest.raises(ValueError, match="not an IP address"):
            parse_ip(text)
