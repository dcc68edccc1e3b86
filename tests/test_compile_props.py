"""Properties of compile over random cell states (hypothesis): deterministic whatever the input
order, always loadable (FakeNft refuses overlapping elements and dangling references as the
kernel does), idempotent to apply, and every allowed (address, protocol, port) is in a set."""

from __future__ import annotations

import ipaddress
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from events.models import load_cell_state
from nft import FakeNft, diff, render_ruleset
from reconciler.compile import TABLE, compile_ruleset

SPACES = ["space-1", "space-2"]
APPS = ["app-1", "app-2", "app-3"]

octet = st.integers(0, 255)
address = st.builds(lambda a, b: f"192.0.2.{a}" if b else f"198.51.100.{a}", octet, st.booleans())


@st.composite
def destination(draw):
    kind = draw(st.sampled_from(["single", "cidr", "range", "list"]))
    if kind == "single":
        return draw(address)
    if kind == "cidr":
        return str(ipaddress.ip_network(f"{draw(address)}/{draw(st.integers(24, 32))}", strict=False))
    if kind == "range":
        a, b = sorted([draw(octet), draw(octet)])
        return f"203.0.113.{a}-203.0.113.{b}"
    return ",".join(draw(st.lists(address, min_size=1, max_size=3)))


@st.composite
def rule(draw):
    protocol = draw(st.sampled_from(["tcp", "udp", "icmp", "all"]))
    out = {"protocol": protocol, "destination": draw(destination()), "log": draw(st.booleans())}
    if protocol in ("tcp", "udp"):
        lo = draw(st.integers(1, 65000))
        out["ports"] = draw(st.sampled_from([str(lo), f"{lo}-{lo + draw(st.integers(1, 500))}", f"{lo},{lo + 7}"]))
    elif protocol == "icmp":
        out["type"], out["code"] = draw(st.integers(-1, 20)), draw(st.integers(-1, 5))
    return out


@st.composite
def cell_state(draw):
    groups = []
    for g in range(draw(st.integers(0, 4))):
        groups.append(
            {
                "guid": f"sg-{g}",
                "name": f"group {g}",
                "rules": draw(st.lists(rule(), max_size=6)),
                "globally_enabled": {"running": draw(st.booleans()), "staging": draw(st.booleans())},
                "relationships": {
                    "running_spaces": {"data": [{"guid": s} for s in draw(st.sets(st.sampled_from(SPACES)))]},
                    "staging_spaces": {"data": []},
                },
            }
        )
    containers = []
    for i in range(draw(st.integers(0, 6))):
        containers.append(
            {
                "handle": f"c{i}",
                "ip": f"10.255.1.{i + 2}",
                "app_guid": draw(st.sampled_from(APPS)),
                "space_guid": draw(st.sampled_from(SPACES)),
                "workload": draw(st.sampled_from(["app", "task", "staging"])),
            }
        )
    policies = [
        {
            "source": {"id": draw(st.sampled_from(APPS))},
            "destination": {
                "id": draw(st.sampled_from(APPS)),
                "protocol": draw(st.sampled_from(["tcp", "udp"])),
                "ports": {"start": p, "end": p + draw(st.integers(0, 20))},
            },
        }
        for p in draw(st.lists(st.integers(1, 60000), max_size=5))
    ]
    return {
        "cell_id": "a",
        "containers": containers,
        "security_groups": groups,
        "c2c_policies": policies,
        "app_instances": {"app-1": ["10.255.2.9"]},
        "config": {
            "deny_networks": {"always": draw(st.lists(st.just("192.0.2.128/26"), max_size=1))},
            "asg_logging": draw(st.booleans()),
            "c2c_logging": draw(st.booleans()),
        },
    }


@settings(max_examples=60, deadline=None)
@given(cell_state(), st.randoms(use_true_random=False))
def test_compile_is_deterministic_loadable_and_idempotent(doc, rnd: random.Random):
    rs = compile_ruleset(load_cell_state(doc))
    shuffled = {
        **doc,
        "containers": rnd.sample(doc["containers"], len(doc["containers"])),
        "security_groups": [
            {**g, "rules": rnd.sample(g["rules"], len(g["rules"]))}
            for g in rnd.sample(doc["security_groups"], len(doc["security_groups"]))
        ],
        "c2c_policies": rnd.sample(doc["c2c_policies"], len(doc["c2c_policies"])),
    }
    assert render_ruleset(compile_ruleset(load_cell_state(shuffled))) == render_ruleset(rs)
    kernel = FakeNft()
    kernel.apply(diff(rs, None))  # refuses overlaps and dangling references, as the kernel does
    assert diff(rs, kernel.read(TABLE)).is_empty


@settings(max_examples=60, deadline=None)
@given(st.lists(rule(), min_size=1, max_size=8))
def test_every_allowed_port_of_every_rule_is_in_the_group_sets(rules):
    doc = {
        "cell_id": "a",
        "containers": [{"handle": "c", "ip": "10.255.1.2", "app_guid": "x", "space_guid": "s", "workload": "app"}],
        "security_groups": [
            {"guid": "g", "name": "g", "rules": rules, "globally_enabled": {"running": True, "staging": False}}
        ],
    }
    state = load_cell_state(doc)
    rs = compile_ruleset(state)
    for r in state.security_groups[0].egress_rules():
        if r.protocol.value not in ("tcp", "udp"):
            continue
        proto = 6 if r.protocol.value == "tcp" else 17
        name = "sg-g-log-ports4" if r.log else "sg-g-ports4"
        for d in r.destinations:
            for lo, hi in r.ports:
                for addr, port in ((d.start, lo), (d.end, hi)):
                    assert any(
                        int(k[0].start) <= addr <= int(k[0].end)
                        and k[1].lo <= proto <= k[1].hi
                        and k[2].lo <= port <= k[2].hi
                        for k in rs.elements[name]
                    ), (r, addr, port)
