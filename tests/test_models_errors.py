"""Bad input gives one clear line per problem (path, offending value, what is wrong), strict or lenient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events.models import (
    BBSSecurityGroupRule,
    C2CPolicy,
    CellConfig,
    CellState,
    Container,
    EgressPolicy,
    InternalSecurityGroup,
    NetOutRule,
    SecurityGroup,
    SecurityGroupRule,
    dedupe_containers,
    load_cell_state,
    load_cell_state_file,
    parse_internal_policies,
)
from events.problems import Problem, StateError, format_path, show, validate_strict

R = "security_groups[0].rules[0]"


def strict_lines(data: object) -> list[str]:
    with pytest.raises(StateError) as err:
        load_cell_state(data)
    return [str(p) for p in err.value.problems]


def lines_of(model: type, data: object) -> list[str]:
    with pytest.raises(StateError) as err:
        validate_strict(model, data)
    return [str(p) for p in err.value.problems]


def one_rule(rule: object) -> dict:
    return {"containers": [], "security_groups": [{"guid": "g", "name": "n", "rules": [rule]}]}


def tcp(**fields: object) -> dict:
    return {"protocol": "tcp", "destination": "192.0.2.1", "ports": "443", **fields}


def container(handle: str = "c1", ip: str = "10.255.0.2", **fields: object) -> dict:
    return {"handle": handle, "ip": ip, "app_guid": "app", "space_guid": "space", "workload": "app", **fields}


# --- CC rules: every refusal, word for word ----------------------------------------------------------


@pytest.mark.parametrize(
    "rule, expected",
    [
        # destinations
        (
            tcp(destination="192.0.2.1, 192.0.2.2"),
            [f"{R}.destination: '192.0.2.1, 192.0.2.2': must not contain whitespace"],
        ),
        (tcp(destination="192.0.2.1\t"), [rf"{R}.destination: '192.0.2.1\t': must not contain whitespace"]),
        (
            tcp(destination="010.0.0.1"),
            [f"{R}.destination: '010.0.0.1': leading zeros are not allowed in IPv4 addresses"],
        ),
        (
            tcp(destination="192.0.2.01/24"),
            [f"{R}.destination: '192.0.2.01/24': leading zeros are not allowed in IPv4 addresses"],
        ),
        (tcp(destination="192.0.2.9-192.0.2.1"), [f"{R}.destination: '192.0.2.9-192.0.2.1': start after end"]),
        (tcp(destination="2001:db8::9-2001:db8::1"), [f"{R}.destination: '2001:db8::9-2001:db8::1': start after end"]),
        (
            tcp(destination="192.0.2.1-2001:db8::1"),
            [f"{R}.destination: '192.0.2.1-2001:db8::1': range mixes IPv4 and IPv6"],
        ),
        (
            tcp(destination="192.0.2.1,,192.0.2.2"),
            [f"{R}.destination: '192.0.2.1,,192.0.2.2': empty element in comma list"],
        ),
        (tcp(destination="192.0.2.1,"), [f"{R}.destination: '192.0.2.1,': empty element in comma list"]),
        (
            tcp(destination="192.0.2.1,192.0.2.300"),
            [f"{R}.destination: '192.0.2.1,192.0.2.300': in '192.0.2.300': not an IP address, CIDR or address range"],
        ),
        (
            tcp(destination="192.0.2.1,192.0.2.9-192.0.2.1"),
            [f"{R}.destination: '192.0.2.1,192.0.2.9-192.0.2.1': in '192.0.2.9-192.0.2.1': start after end"],
        ),
        (tcp(destination="192.0.2.0/33"), [f"{R}.destination: '192.0.2.0/33': prefix length must be 0-32"]),
        (tcp(destination="2001:db8::/129"), [f"{R}.destination: '2001:db8::/129': prefix length must be 0-128"]),
        (
            tcp(destination="192.0.2.0/255.255.255.0"),
            [f"{R}.destination: '192.0.2.0/255.255.255.0': prefix length must be 0-32"],
        ),
        (
            tcp(destination="192.0.2.0/24-198.51.100.0/24"),
            [f"{R}.destination: '192.0.2.0/24-198.51.100.0/24': not an IP address, CIDR or address range"],
        ),
        (
            tcp(destination="fe80::1%eth0"),
            [f"{R}.destination: 'fe80::1%eth0': not an IP address, CIDR or address range"],
        ),
        (tcp(destination="example.com"), [f"{R}.destination: 'example.com': not an IP address, CIDR or address range"]),
        (tcp(destination=""), [f"{R}.destination: must not be empty"]),
        (tcp(destination=["192.0.2.1"]), [f'{R}.destination: ["192.0.2.1"]: must be a string']),
        (
            tcp(destination=",".join(["192.0.2.1"] * 6001)),
            [f"{R}.destination: {show(','.join(['192.0.2.1'] * 6001))}: 6001 destinations, at most 6000 allowed"],
        ),
        (
            {"protocol": "icmp", "destination": "2001:db8::1", "type": 0, "code": 0},
            [f"{R}.destination: '2001:db8::1': protocol 'icmp' takes IPv4 destinations only (use 'icmpv6' for IPv6)"],
        ),
        (
            {"protocol": "icmp", "destination": "192.0.2.1,2001:db8::1", "type": 0, "code": 0},
            [
                f"{R}.destination: '192.0.2.1,2001:db8::1': protocol 'icmp' takes IPv4 destinations only"
                " (use 'icmpv6' for IPv6)"
            ],
        ),
        (
            {"protocol": "icmpv6", "destination": "192.0.2.1", "type": 0, "code": 0},
            [f"{R}.destination: '192.0.2.1': protocol 'icmpv6' takes IPv6 destinations only (use 'icmp' for IPv4)"],
        ),
        # ports
        (
            tcp(ports="80,8000-9000"),
            [f"{R}.ports: '80,8000-9000': mixes a list and a range (use one range, or a list of single ports)"],
        ),
        (tcp(ports="0"), [f"{R}.ports: '0': out of range 1-65535"]),
        (tcp(ports="65536"), [f"{R}.ports: '65536': out of range 1-65535"]),
        (tcp(ports="80,65536"), [f"{R}.ports: '80,65536': port 65536 out of range 1-65535"]),
        (tcp(ports="0-80"), [f"{R}.ports: '0-80': port 0 out of range 1-65535"]),
        (tcp(ports="80-70"), [f"{R}.ports: '80-70': start after end"]),
        (tcp(ports="80,,443"), [f"{R}.ports: '80,,443': empty element in comma list"]),
        (tcp(ports="http"), [f"{R}.ports: 'http': not a port, a comma list of ports or a port range"]),
        (tcp(ports="+80"), [f"{R}.ports: '+80': not a port, a comma list of ports or a port range"]),
        (tcp(ports="80-90-100"), [f"{R}.ports: '80-90-100': not a port, a comma list of ports or a port range"]),
        (tcp(ports=443), [f"{R}.ports: 443: must be a string"]),
        ({"protocol": "tcp", "destination": "192.0.2.1"}, [f"{R}.ports: required for protocol 'tcp'"]),
        (tcp(ports=""), [f"{R}.ports: required for protocol 'tcp'"]),
        (tcp(protocol="udp", ports="  "), [f"{R}.ports: required for protocol 'udp'"]),
        (
            {"protocol": "all", "destination": "192.0.2.1", "ports": "80"},
            [f"{R}.ports: '80': not allowed for protocol 'all'"],
        ),
        (
            {"protocol": "icmp", "destination": "192.0.2.1", "ports": "80", "type": 0, "code": 0},
            [f"{R}.ports: '80': not allowed for protocol 'icmp'"],
        ),
        # icmp type and code
        (
            {"protocol": "icmp", "destination": "192.0.2.1", "type": 256, "code": -2},
            [
                f"{R}.type: 256: must be between -1 and 255 (-1 means any)",
                f"{R}.code: -2: must be between -1 and 255 (-1 means any)",
            ],
        ),
        (
            {"protocol": "icmpv6", "destination": "2001:db8::1"},
            [f"{R}.type: required for protocol 'icmpv6'", f"{R}.code: required for protocol 'icmpv6'"],
        ),
        (tcp(type=5), [f"{R}.type: 5: only allowed for protocols 'icmp' and 'icmpv6'"]),
        (tcp(code=-1), [f"{R}.code: -1: only allowed for protocols 'icmp' and 'icmpv6'"]),
        (
            {"protocol": "icmp", "destination": "192.0.2.1", "type": "8", "code": 0},
            [f"{R}.type: '8': must be an integer"],
        ),
        (
            {"protocol": "icmp", "destination": "192.0.2.1", "type": 8.0, "code": 0},
            [f"{R}.type: 8.0: must be an integer"],
        ),
        # the rest
        (tcp(protocol="TCP"), [f"{R}.protocol: 'TCP': must be one of 'tcp', 'udp', 'icmp', 'icmpv6' or 'all'"]),
        ({"destination": "192.0.2.1", "ports": "80"}, [f"{R}.protocol: required key is missing"]),
        ({"protocol": "tcp", "ports": "80"}, [f"{R}.destination: required key is missing"]),
        (tcp(log="true"), [f"{R}.log: 'true': must be true or false"]),
        (tcp(log=1), [f"{R}.log: 1: must be true or false"]),
        (tcp(description=5), [f"{R}.description: 5: must be a string"]),
        (tcp(colour="red"), [f"{R}.colour: unknown key"]),
        ("tcp 192.0.2.1 443", [f"{R}: 'tcp 192.0.2.1 443': must be an object"]),
    ],
)
def test_cc_rule_problems(rule: object, expected: list[str]) -> None:
    assert strict_lines(one_rule(rule)) == expected


def test_one_problem_per_field_and_all_of_them() -> None:
    """Strict loading reports every problem of the document at once, in document order."""
    doc = {
        "containers": [container(colour="red"), container("c2", "10.255.0.2"), {"handle": "", "ip": "10.255.0.300"}],
        "security_groups": [
            {"guid": "g1", "name": "dns", "rules": [tcp(), tcp(ports="80-70"), tcp(destination="010.0.0.1")]},
            {"guid": "g2", "rules": []},
        ],
        "c2c_policies": [
            {"source": {"id": "a"}, "destination": {"id": "b", "protocol": "icmp", "ports": {"start": 1, "end": 1}}}
        ],
        "bogus": 1,
    }
    assert strict_lines(doc) == [
        "containers[0].colour: unknown key",
        "containers[2].handle: must not be empty",
        "containers[2].ip: '10.255.0.300': not an IPv4 address",
        "containers[2].app_guid: required key is missing",
        "containers[2].space_guid: required key is missing",
        "containers[2].workload: required key is missing",
        "containers[1].ip: '10.255.0.2' is also the address of containers[0] (handle 'c1')",
        "security_groups[0].rules[1].ports: '80-70': start after end",
        "security_groups[0].rules[2].destination: '010.0.0.1': leading zeros are not allowed in IPv4 addresses",
        "security_groups[1].name: required key is missing",
        "c2c_policies[0].destination.protocol: 'icmp': must be one of 'tcp' or 'udp'",
        "bogus: unknown key",
    ]


@pytest.mark.parametrize(
    "doc, expected",
    [
        ([], ["[]: a cell state must be a JSON object"]),
        ({}, ["containers: required key is missing"]),
        ({"containers": {}}, ["containers: {}: must be a list"]),
        ({"containers": [], "cell_id": 7}, ["cell_id: 7: must be a string"]),
        ({"containers": [], "security_groups": {}}, ["security_groups: {}: must be a list"]),
        (
            {"containers": [], "app_instances": {"app": ["10.255.0.1", "nope"], "other": "10.255.0.2"}},
            ["app_instances.app[1]: 'nope': not an IP address", "app_instances.other: '10.255.0.2': must be a list"],
        ),
        (
            {"containers": [], "app_instances": []},
            ["app_instances: []: must be an object mapping app guids to address lists"],
        ),
        (
            {
                "containers": [
                    container("a"),
                    container("a", "10.255.0.3"),
                    container("b", "10.255.0.4", ipv6="fd00::1"),
                    container("c", "10.255.0.5", ipv6="fd00::1"),
                ]
            },
            [
                "containers[1].handle: 'a' is also the handle of containers[0]",
                "containers[3].ipv6: 'fd00::1' is also the address of containers[2] (handle 'b')",
            ],
        ),
        (
            {"containers": [container(ports=[0, "80"], port_mappings=[{"host_port": 61000}], workload="lrp")]},
            [
                "containers[0].workload: 'lrp': must be one of 'app', 'task' or 'staging'",
                "containers[0].ports[0]: 0: must be at least 1",
                "containers[0].ports[1]: '80': must be an integer",
                "containers[0].port_mappings[0].container_port: required key is missing",
            ],
        ),
        (
            {
                "containers": [],
                "egress_policies": [
                    {"source": {"id": "x", "type": "default"}, "destination": {"protocol": "icmpv6", "ips": []}}
                ],
            },
            [
                "egress_policies[0].source: 'x': a 'default' source has no id",
                "egress_policies[0].destination.protocol: 'icmpv6': egress policies take 'tcp', 'udp', 'icmp' or 'all'",
                "egress_policies[0].destination.ips: at least one address range is required",
            ],
        ),
        (
            {
                "containers": [],
                "config": {
                    "overlay_network": "2001:db8::/64",
                    "deny_networks": {"always": ["10.0.0.0/33"], "sometimes": []},
                    "dns_servers": ["dns.example"],
                    "host_udp_services": ["[fd00::1]:0", "169.254.0.2", 53, "[zz]:5"],
                    "denied_logs_per_sec": 0,
                    "asg_logging": "yes",
                },
            },
            [
                "config.overlay_network: '2001:db8::/64': not an IPv4 network",
                "config.deny_networks.always[0]: '10.0.0.0/33': not a CIDR network",
                "config.deny_networks.sometimes: unknown key",
                "config.dns_servers[0]: 'dns.example': not an IP address",
                "config.host_udp_services[0]: '[fd00::1]:0': port 0 out of range 1-65535",
                "config.host_udp_services[1]: '169.254.0.2': must be 'address:port' (IPv6 as '[address]:port')",
                "config.host_udp_services[2]: 53: must be a string",
                "config.host_udp_services[3]: '[zz]:5': 'zz' is not an IP address",
                "config.asg_logging: 'yes': must be true or false",
                "config.denied_logs_per_sec: 0: must be greater than 0",
            ],
        ),
    ],
)
def test_document_problems(doc: object, expected: list[str]) -> None:
    assert strict_lines(doc) == expected


def test_no_pydantic_text_ever_reaches_the_user() -> None:
    """Whatever the input, problems are our one-liners: no 'Input should', no URLs, no line breaks."""
    garbage: list[object] = [
        None,
        "text",
        {"containers": [None, 1, "x", [], {"ip": {}}]},
        {"containers": [], "security_groups": [None, {"guid": 1, "name": [], "rules": [None, 5, {"protocol": {}}]}]},
        {"containers": [], "c2c_policies": [{"source": 1, "destination": {"ports": []}}], "egress_policies": "x"},
        {"containers": [], "config": {"deny_networks": [], "dns_servers": {}, "overlay_network": 10}},
        {"containers": [], "config": []},
    ]
    for doc in garbage:
        with pytest.raises(StateError) as err:
            load_cell_state(doc)
        text = str(err.value)
        problems = err.value.problems
        assert problems and all("\n" not in str(p) for p in problems)
        assert len(text.splitlines()) == len(problems) + (len(problems) > 1)  # one line each, under a header
        for bad in ("Input should", "Value error", "pydantic", "http", "validation error", "[type="):
            assert bad not in text, text


# --- lenient loading ------------------------------------------------------------------------------


def test_lenient_drops_only_the_bad_rule() -> None:
    """A bad rule leaves its group with the other rules; other groups are untouched."""
    doc = {
        "containers": [container()],
        "security_groups": [
            {"guid": "g1", "name": "one", "rules": [tcp(), tcp(ports="80-70"), tcp(destination="198.51.100.1")]},
            {"guid": "g2", "name": "two", "rules": [{"protocol": "all", "destination": "203.0.113.0/24"}]},
        ],
    }
    state, problems = load_cell_state(doc, lenient=True)
    assert [str(p) for p in problems] == ["security_groups[0].rules[1].ports: '80-70': start after end"]
    assert [[r.destination for r in g.rules] for g in state.security_groups] == [
        ["192.0.2.1", "198.51.100.1"],
        ["203.0.113.0/24"],
    ]
    assert len(state.containers) == 1


def test_lenient_drops_bad_groups_policies_and_containers() -> None:
    doc = {
        "containers": [
            container("ok"),
            container("bad", "10.255.0.300"),
            container("rules", "10.255.0.3", egress_rules=[tcp(ports="0"), tcp()]),
        ],
        "security_groups": [{"guid": "g", "name": "", "rules": [tcp()]}, {"guid": "h", "name": "fine"}],
        "c2c_policies": [
            {"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 90, "end": 80}}},
            {"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 80, "end": 90}}},
        ],
        "egress_policies": [
            {
                "source": {"id": "a"},
                "destination": {"protocol": "tcp", "ips": [{"start": "192.0.2.9", "end": "192.0.2.1"}]},
            },
            {
                "source": {"id": "a"},
                "destination": {"protocol": "tcp", "ips": [{"start": "192.0.2.1", "end": "192.0.2.9"}]},
            },
        ],
        "app_instances": {"a": ["10.255.0.9", "10.255.0.999"]},
    }
    state, problems = load_cell_state(doc, lenient=True)
    assert [str(p) for p in problems] == [
        "containers[1].ip: '10.255.0.300': not an IPv4 address",
        "containers[2].egress_rules[0].ports: '0': out of range 1-65535",
        "security_groups[0].name: must not be empty",
        "c2c_policies[0].destination.ports: '90-80': start after end",
        "egress_policies[0].destination.ips[0]: '192.0.2.9-192.0.2.1': start after end",
        "app_instances.a[1]: '10.255.0.999': not an IP address",
    ]
    assert [c.handle for c in state.containers] == ["ok", "rules"]
    assert [r.ports for r in state.containers[1].egress_rules] == ["443"], (
        "a bad rule of a container is dropped, not the container"
    )
    assert [g.guid for g in state.security_groups] == ["h"]
    assert [p.destination.ports.start for p in state.c2c_policies] == [80]
    assert len(state.egress_policies) == 1
    assert [str(a) for a in state.app_instances["a"]] == ["10.255.0.9"]


def test_lenient_ignores_unknown_keys_and_reports_them() -> None:
    doc = {
        "containers": [container(colour="red")],
        "security_groups": [{"guid": "g", "name": "n", "colour": "red", "rules": [tcp(colour="red")]}],
        "colour": "red",
    }
    state, problems = load_cell_state(doc, lenient=True)
    assert [str(p) for p in problems] == [
        "containers[0].colour: unknown key",
        "security_groups[0].colour: unknown key",
        "security_groups[0].rules[0].colour: unknown key",
        "colour: unknown key",
    ]
    assert len(state.containers) == 1 and len(state.security_groups[0].rules) == 1


def test_lenient_drops_every_container_of_an_address_clash() -> None:
    """Two containers claiming one address: neither can be trusted, both are left out (fail closed)."""
    doc = {"containers": [container("a"), container("b"), container("c", "10.255.0.3")]}
    state, problems = load_cell_state(doc, lenient=True)
    assert [str(p) for p in problems] == [
        "containers[1].ip: '10.255.0.2' is also the address of containers[0] (handle 'a')"
    ]
    assert [c.handle for c in state.containers] == ["c"]


def test_lenient_same_problem_text_as_strict() -> None:
    doc = {
        "containers": [container(ip="nope")],
        "security_groups": [{"guid": "g", "name": "n", "rules": [tcp(ports="x")]}],
    }
    _, problems = load_cell_state(doc, lenient=True)
    assert [str(p) for p in problems] == strict_lines(doc)


@pytest.mark.parametrize(
    "doc, expected",
    [
        ([], ["[]: a cell state must be a JSON object"]),
        ({"security_groups": []}, ["containers: required key is missing"]),
        ({"containers": "none"}, ["containers: 'none': must be a list"]),
        (
            {"containers": [], "config": {"deny_networks": {"alway": ["192.0.2.0/24"]}}},
            ["config.deny_networks.alway: unknown key"],
        ),
        (
            {"containers": [], "config": {"deny_networks": {"always": ["192.0.2.0/99"]}}},
            ["config.deny_networks.always[0]: '192.0.2.0/99': not a CIDR network"],
        ),
    ],
)
def test_lenient_still_refuses_what_cannot_be_dropped_safely(doc: object, expected: list[str]) -> None:
    """A bad config (a dropped deny network would allow more) or a missing container list is fatal."""
    with pytest.raises(StateError) as err:
        load_cell_state(doc, lenient=True)
    assert [str(p) for p in err.value.problems] == expected


# --- single objects (NATS messages, API responses) --------------------------------------------------


def test_security_group_parse_lenient() -> None:
    data = {
        "guid": "g",
        "name": "n",
        "rules": [tcp(ports="70-60"), {"protocol": "all", "destination": "192.0.2.1"}],
        "colour": 1,
    }
    group, problems = SecurityGroup.parse_lenient(data)
    assert [str(p) for p in problems] == ["colour: unknown key", "rules[0].ports: '70-60': start after end"]
    assert [r.protocol for r in group.rules] == ["all"]


def test_security_group_parse_lenient_prefix() -> None:
    _, problems = SecurityGroup.parse_lenient(
        {"guid": "g", "name": "n", "rules": [tcp(ports="0")]}, at=("resources", 4)
    )
    assert [str(p) for p in problems] == ["resources[4].rules[0].ports: '0': out of range 1-65535"]


def test_security_group_parse_lenient_rules_not_a_list() -> None:
    """Unusable rules mean no rules (fail closed), but the group and its bindings are kept."""
    group, problems = SecurityGroup.parse_lenient({"guid": "g", "name": "n", "rules": "tcp 443"})
    assert group.rules == [] and [str(p) for p in problems] == ["rules: 'tcp 443': must be a list"]


def test_security_group_parse_lenient_needs_a_valid_group() -> None:
    with pytest.raises(StateError) as err:
        SecurityGroup.parse_lenient({"name": "n", "globally_enabled": {"running": "yes"}, "rules": [tcp(ports="x")]})
    assert [str(p) for p in err.value.problems] == [
        "guid: required key is missing",
        "globally_enabled.running: 'yes': must be true or false",
        "rules[0].ports: 'x': not a port, a comma list of ports or a port range",
    ]


INTERNAL_RULES = [
    {"protocol": "tcp", "destination": "192.0.2.1", "ports": "", "type": 0, "code": 0, "description": "", "log": False},
    {"protocol": "all", "destination": "192.0.2.1", "ports": "", "type": 0, "code": 0, "description": "", "log": False},
]


def test_internal_security_group_with_a_bad_rule_in_its_rules_string() -> None:
    data = {"guid": "g", "name": "n", "rules": json.dumps(INTERNAL_RULES), "staging_default": False}
    group, problems = InternalSecurityGroup.parse_lenient(data, at=("security_groups", 2))
    assert [str(p) for p in problems] == ["security_groups[2].rules[0].ports: required for protocol 'tcp'"]
    assert isinstance(group, SecurityGroup) and [r.protocol for r in group.rules] == ["all"]
    assert lines_of(InternalSecurityGroup, data) == ["rules[0].ports: required for protocol 'tcp'"]


@pytest.mark.parametrize(
    "rules, expected",
    [
        ('[{"protocol":', "rules: not valid JSON at column 14: Expecting value"),
        (5, "rules: 5: must be a string holding a JSON list of rules"),
        ('{"protocol": "all"}', 'rules: {"protocol":"all"}: must be a list'),
    ],
)
def test_internal_security_group_with_unusable_rules(rules: object, expected: str) -> None:
    group, problems = InternalSecurityGroup.parse_lenient(
        {"guid": "g", "name": "n", "rules": rules, "running_default": True}
    )
    assert [str(p) for p in problems] == [expected]
    assert group.rules == [] and group.globally_enabled.running


def test_internal_security_group_strict_json_error() -> None:
    assert lines_of(InternalSecurityGroup, {"guid": "g", "name": "n", "rules": "[{"}) == [
        "rules: not valid JSON at column 3: Expecting property name enclosed in double quotes"
    ]


def test_internal_policies_strict_and_lenient() -> None:
    good = {"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 1, "end": 2}}}
    data = {
        "total_policies": 2,
        "policies": [good, {"source": {}}],
        "egress_policies": [{"source": {"id": "a"}}],
        "next": 1,
    }
    expected = [
        "policies[1].source.id: required key is missing",
        "policies[1].destination: required key is missing",
        "egress_policies[0].destination: required key is missing",
        "next: unknown key",
    ]
    with pytest.raises(StateError) as err:
        parse_internal_policies(data)
    assert sorted(str(p) for p in err.value.problems) == sorted(expected)
    c2c, egress, problems = parse_internal_policies(data, lenient=True)
    assert sorted(str(p) for p in problems) == sorted(expected)
    assert len(c2c) == 1 and egress == []
    with pytest.raises(StateError, match="policies: required key is missing"):
        parse_internal_policies({"total_policies": 0}, lenient=True)


# --- other rule formats -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            {"protocol": 7, "networks": []},
            ["protocol: 7: must be one of 0, 1, 2, 3 or 4", "networks: at least one network is required"],
        ),
        (
            {"protocol": 1, "networks": [{"start": "192.0.2.9", "end": "192.0.2.1"}]},
            ["networks[0]: '192.0.2.9-192.0.2.1': start after end", "ports: required for protocol 1 (tcp)"],
        ),
        (
            {
                "protocol": 3,
                "networks": [{"start": "2001:db8::1", "end": "2001:db8::1"}],
                "ports": [{"start": 0, "end": 5}],
            },
            [
                "networks: '2001:db8::1-2001:db8::1': protocol 'icmp' takes IPv4 destinations only"
                " (use 'icmpv6' for IPv6)",
                "ports[0].start: 0: must be at least 1",
                "icmps: required for protocol 3 (icmp)",
            ],
        ),
        (
            {
                "networks": [{"start": "192.0.2.1", "end": "192.0.2.1"}],
                "ports": [{"start": 80, "end": 80}],
                "icmps": {"type": 300},
            },
            # A bad icmps object is reported for what is wrong inside it, not also for being there.
            ["ports: not allowed for protocol 0 (all)", "icmps.type: 300: must be at most 255"],
        ),
        (
            {"protocol": "tcp", "networks": [{"start": "192.0.2.1"}]},
            ["protocol: 'tcp': must be one of 0, 1, 2, 3 or 4", "networks[0].end: required key is missing"],
        ),
    ],
)
def test_net_out_rule_problems(data: dict, expected: list[str]) -> None:
    """Stricter than silk, which drops such rules silently; an unknown protocol number is not 'all'."""
    assert lines_of(NetOutRule, data) == expected


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            {"protocol": "tcp", "destinations": ["192.0.2.1"], "ports": [80], "port_range": {"start": 1, "end": 2}},
            ["port_range: protocol 'tcp' needs exactly one of 'ports' and 'port_range'"],
        ),
        (
            {"protocol": "udp", "destinations": ["192.0.2.1"]},
            ["port_range: protocol 'udp' needs exactly one of 'ports' and 'port_range'"],
        ),
        (
            {"protocol": "icmp", "destinations": [], "ports": [0]},
            [
                "destinations: at least one destination is required",
                "ports: 0: out of range 1-65535",
                "icmp_info: required for protocol 'icmp'",
            ],
        ),
        (
            {"protocol": "all", "destinations": ["192.0.2.1"], "icmp_info": {"type": 1}},
            ["icmp_info: not allowed for protocol 'all'"],
        ),
        ({"protocol": "all", "destinations": ["192.0.2.1"], "ports": [80]}, ["ports: not allowed for protocol 'all'"]),
        (
            {"protocol": "tcp", "destinations": ["192.0.2.1 "], "port_range": {"start": 9, "end": 8}},
            ["destinations: '192.0.2.1 ': must not contain whitespace", "port_range: '9-8': start after end"],
        ),
        (
            {"protocol": "icmp", "destinations": ["192.0.2.1"], "icmp_info": {"type": -2}},
            ["icmp_info.type: -2: must be between -1 and 255 (-1 means any)"],
        ),
        (
            {"protocol": "tcp", "destinations": ["192.0.2.1"], "ports": [80], "portRange": {}},
            ["portRange: unknown key"],
        ),
    ],
)
def test_bbs_rule_problems(data: dict, expected: list[str]) -> None:
    assert lines_of(BBSSecurityGroupRule, data) == expected


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            {
                "source": {"type": "space"},
                "destination": {
                    "protocol": "icmp",
                    "ports": [{"start": 1, "end": 2}],
                    "ips": [{"start": "192.0.2.1", "end": "192.0.2.1"}],
                    "icmp_type": 300,
                },
            },
            [
                "source: a source of type 'space' needs an id",
                "destination.ports: not allowed for protocol 'icmp'",
                "destination.icmp_type: 300: must be between -1 and 255 (-1 means any)",
            ],
        ),
        (
            {
                "source": {"id": "a"},
                "destination": {
                    "protocol": "tcp",
                    "ips": [{"start": "2001:db8::1", "end": "2001:db8::1"}],
                    "icmp_code": 0,
                },
            },
            [
                "destination.ips[0].start: '2001:db8::1': not an IPv4 address",
                "destination.ips[0].end: '2001:db8::1': not an IPv4 address",
                "destination.icmp_code: 0: only allowed for protocol 'icmp'",
            ],
        ),
        (
            {"source": {"id": "a"}, "destination": {"protocol": "udp"}, "app_lifecycle": "sometimes"},
            [
                "destination.ips: required key is missing",
                "app_lifecycle: 'sometimes': must be one of 'running', 'staging' or 'all'",
            ],
        ),
    ],
)
def test_egress_policy_problems(data: dict, expected: list[str]) -> None:
    assert lines_of(EgressPolicy, data) == expected


def test_c2c_policy_problems() -> None:
    data = {"source": {"id": ""}, "destination": {"id": "b", "protocol": "icmp", "ports": {"start": 0, "end": 70000}}}
    assert lines_of(C2CPolicy, data) == [
        "source.id: must not be empty",
        "destination.protocol: 'icmp': must be one of 'tcp' or 'udp'",
        "destination.ports.start: 0: must be at least 1",
        "destination.ports.end: 70000: must be at most 65535",
    ]
    reversed_ports = {
        "source": {"id": "a"},
        "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 90, "end": 80}},
    }
    assert lines_of(C2CPolicy, reversed_ports) == ["destination.ports: '90-80': start after end"]


def test_cell_state_itself_refuses_duplicate_containers() -> None:
    """Built directly (not loaded), a CellState still never holds two containers with one address."""
    one = Container.model_validate(container("a"))
    two = Container.model_validate(container("b"))
    assert lines_of(CellState, {"containers": [one, two]}) == [
        "containers: containers[1].ip: '10.255.0.2' is also the address of containers[0] (handle 'a')"
    ]
    kept, problems = dedupe_containers([one, two, Container.model_validate(container("c", "10.255.0.3"))])
    assert [c.handle for c in kept] == ["c"] and len(problems) == 1


def test_config_is_validated_alone() -> None:
    assert lines_of(CellConfig, {"accepted_udp_logs_per_sec": -5, "dynamic_asg": False}) == [
        "accepted_udp_logs_per_sec: -5: must be greater than 0",
        "dynamic_asg: unknown key",
    ]


def test_rule_model_errors_carry_the_same_text() -> None:
    assert lines_of(SecurityGroupRule, tcp(ports="80-70")) == ["ports: '80-70': start after end"]


# --- files --------------------------------------------------------------------------------------------


def test_file_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "cell.json"
    with pytest.raises(StateError) as err:
        load_cell_state_file(path)
    assert str(err.value) == f"{path}: cannot read: No such file or directory"


def test_file_with_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "cell.json"
    path.write_text('{\n  "containers": [\n    {"handle": "a",}\n  ]\n}\n')
    with pytest.raises(StateError) as err:
        load_cell_state_file(path)
    assert (
        str(err.value) == f"{path}: line 3 column 20: not valid JSON: Expecting property name enclosed in double quotes"
    )


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cell.json"
    path.write_bytes(b'{"containers": ["\xff"]}')
    with pytest.raises(StateError) as err:
        load_cell_state_file(path)
    assert str(err.value) == f"{path}: not UTF-8 text"


def test_file_problems_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cell.json"
    path.write_text(
        json.dumps(
            {
                "containers": [container(colour="red")],
                "security_groups": [{"guid": "g", "name": "n", "rules": [tcp(ports="80-70")]}],
            }
        )
    )
    with pytest.raises(StateError) as err:
        load_cell_state_file(path)
    assert str(err.value).splitlines() == [
        f"{path}: invalid cell state (2 problems):",
        "  containers[0].colour: unknown key",
        "  security_groups[0].rules[0].ports: '80-70': start after end",
    ]
    state, problems = load_cell_state_file(path, lenient=True)
    assert len(state.containers) == 1 and state.security_groups[0].rules == [] and len(problems) == 2


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot read: Is a directory"):
        load_cell_state_file(tmp_path)


# --- the pieces -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loc, path",
    [
        (("security_groups", 3, "rules", 7, "ports"), "security_groups[3].rules[7].ports"),
        (("app_instances", "2a6f-guid", 0), "app_instances.2a6f-guid[0]"),
        (("app_instances", "odd key.x", 0), "app_instances['odd key.x'][0]"),
        ((), ""),
        ((3,), "[3]"),
    ],
)
def test_paths(loc: tuple, path: str) -> None:
    assert format_path(loc) == path


def test_problem_without_path_is_just_the_message() -> None:
    assert str(Problem((), "not valid JSON")) == "not valid JSON"


def test_a_state_error_is_one_line_for_one_problem_and_a_list_for_more() -> None:
    assert str(StateError([Problem(("a",), "x")], source="f.json")) == "f.json: a: x"
    two = StateError([Problem(("a",), "x"), Problem((), "y")], source="f.json", what="cell state")
    assert str(two) == "f.json: invalid cell state (2 problems):\n  a: x\n  y"
    assert two.one_line() == "a: x; y"
    many = str(StateError([Problem(("k", i), "bad") for i in range(StateError.SHOWN + 3)]))
    assert many.startswith(f"invalid document ({StateError.SHOWN + 3} problems):\n  k[0]: bad\n")
    assert many.endswith(f"\n  k[{StateError.SHOWN - 1}]: bad\n  … and 3 more")


@pytest.mark.parametrize(
    "value, shown",
    [
        ("80-70", "'80-70'"),
        ("it's", '"it\'s"'),
        (None, "null"),
        (True, "true"),
        (5, "5"),
        ([1, "a"], '[1,"a"]'),
        ({"a": 1}, '{"a":1}'),
        ("x" * 100, repr("x" * 59 + "…")),
    ],
)
def test_show(value: object, shown: str) -> None:
    assert show(value) == shown
