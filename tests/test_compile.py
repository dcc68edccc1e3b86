"""compile_ruleset: structure, sharing, fail-closed referents, determinism and state sequences.

Semantics (what passes and what is rejected) are proven with packets in test_policy_kernel.py;
here the ruleset is checked as data, through FakeNft, which refuses what the kernel refuses.
"""

from __future__ import annotations

import copy
import itertools
import random

import pytest

from events.models import load_cell_state
from nft import AddrRange, FakeNft, IntRange, diff, render_ruleset
from reconciler.compile import TABLE, compile_ruleset

WEB, API, WORKER = "a0000000-0000-4000-8000-000000000001", "a0000000-0000-4000-8000-000000000002", "a0000000-3"
SPACE1, SPACE2 = "s0000000-0000-4000-8000-000000000001", "s0000000-0000-4000-8000-000000000002"


def container(handle, ip, app, space, workload="app", **extra):
    return {"handle": handle, "ip": ip, "app_guid": app, "space_guid": space, "workload": workload, **extra}


def group(guid, rules, running=False, staging=False, running_spaces=(), staging_spaces=()):
    return {
        "guid": guid,
        "name": f"name-{guid}",
        "rules": rules,
        "globally_enabled": {"running": running, "staging": staging},
        "relationships": {
            "running_spaces": {"data": [{"guid": s} for s in running_spaces]},
            "staging_spaces": {"data": [{"guid": s} for s in staging_spaces]},
        },
    }


def base_doc():
    return {
        "cell_id": "cell-a",
        "containers": [
            container("web-0", "10.255.1.2", WEB, SPACE1),
            container("web-1", "10.255.1.3", WEB, SPACE1),
            container("api-0", "10.255.1.4", API, SPACE2),
            container("stage-0", "10.255.1.5", WEB, SPACE1, "staging"),
        ],
        "security_groups": [
            group("dns", [{"protocol": "udp", "destination": "0.0.0.0/0", "ports": "53"}], running=True, staging=True),
            group(
                "web",
                [
                    {"protocol": "tcp", "destination": "198.51.100.0/24", "ports": "80-90"},
                    {"protocol": "tcp", "destination": "198.51.100.16/28", "ports": "85-100"},
                    {"protocol": "icmp", "destination": "203.0.113.0/24", "type": -1, "code": -1},
                ],
                running_spaces=[SPACE1],
            ),
        ],
        "c2c_policies": [
            {
                "source": {"id": WEB},
                "destination": {"id": API, "protocol": "tcp", "ports": {"start": 8080, "end": 8080}},
            },
        ],
        "app_instances": {WEB: ["10.255.2.7"]},
        "config": {"deny_networks": {"always": ["198.51.100.128/25"], "running": [], "staging": []}},
    }


def compiled(doc):
    return compile_ruleset(load_cell_state(doc))


def egress_target(rs, ip):
    return rs.elements["egress4"][(AddrRange.single(_ip(ip)),)].value


def _ip(text):
    import ipaddress

    return ipaddress.ip_address(text)


def test_containers_with_the_same_groups_share_one_bundle():
    rs = compiled(base_doc())
    assert egress_target(rs, "10.255.1.2") == egress_target(rs, "10.255.1.3")
    assert egress_target(rs, "10.255.1.2") != egress_target(rs, "10.255.1.4"), "space 2 lacks group 'web'"
    assert egress_target(rs, "10.255.1.5") != egress_target(rs, "10.255.1.2"), "staging gets staging groups"
    bundles = {c for c in rs.chains if c.startswith("asg-")}
    assert len(bundles) == 3


def test_overlapping_rules_become_disjoint_elements_covering_the_same_ports():
    rs = compiled(base_doc())
    keys = set(rs.elements["sg-web-ports4"])
    tcp = IntRange.single(6)
    wide = AddrRange(_ip("198.51.100.0"), _ip("198.51.100.255"))
    narrow = AddrRange(_ip("198.51.100.16"), _ip("198.51.100.31"))
    assert (wide, tcp, IntRange(80, 90)) in keys
    assert (narrow, tcp, IntRange(91, 100)) in keys
    icmp = rs.elements["sg-web-icmp4"]
    assert list(icmp) == [(AddrRange(_ip("203.0.113.0"), _ip("203.0.113.255")), IntRange(0, 255), IntRange(0, 255))]


def test_deny_networks_are_checked_before_any_allow():
    rs = compiled(base_doc())
    bundle = egress_target(rs, "10.255.1.2").split()[-1]
    texts = [r.text for r in rs.rules[bundle]]
    deny = next(i for i, t in enumerate(texts) if "@deny-always4" in t)
    first_allow = next(i for i, t in enumerate(texts) if "@sg-" in t)
    assert deny < first_allow
    assert texts[-1] == "counter reject"


def test_c2c_sources_are_every_known_instance_of_the_source_app():
    rs = compiled(base_doc())
    allowed = {_ip(n) for k in rs.elements[f"c2c-{API}"] for n in range(int(k[0].start), int(k[0].end) + 1)}
    assert allowed == {_ip("10.255.1.2"), _ip("10.255.1.3"), _ip("10.255.1.5"), _ip("10.255.2.7")}
    assert f"c2c-{WEB}" not in rs.elements, "no policy targets web: no set, default deny"
    assert rs.rules[f"c2c-{WEB}"][-1].text == "counter reject"


def test_policy_from_an_app_without_known_instances_opens_nothing():
    doc = base_doc()
    doc["c2c_policies"] = [
        {"source": {"id": "ghost-app"}, "destination": {"id": API, "protocol": "tcp", "ports": {"start": 1, "end": 9}}}
    ]
    rs = compiled(doc)
    assert f"c2c-{API}" not in rs.elements
    assert [r.text for r in rs.rules[f"c2c-{API}"]][-1] == "counter reject"


def test_container_without_any_group_gets_a_rejecting_bundle():
    doc = base_doc()
    doc["security_groups"] = []
    rs = compiled(doc)
    bundle = egress_target(rs, "10.255.1.2").split()[-1]
    assert not any("@sg-" in r.text or f"@{bundle}-" in r.text for r in rs.rules[bundle])
    assert rs.rules[bundle][-1].text == "counter reject"


def test_static_egress_rules_apply_only_without_dynamic_asgs():
    doc = base_doc()
    doc["containers"][0]["egress_rules"] = [{"protocol": "tcp", "destination": "192.0.2.9", "ports": "443"}]
    dynamic = compiled(doc)
    doc["config"]["dynamic_asgs"] = False
    static = compiled(doc)
    b_dyn = egress_target(dynamic, "10.255.1.2").split()[-1]
    b_static = egress_target(static, "10.255.1.2").split()[-1]
    assert (AddrRange.single(_ip("192.0.2.9")), IntRange.single(6), IntRange.single(443)) in static.elements[
        f"{b_static}-static-ports4"
    ]
    assert not any("static" in name for name in dynamic.sets)
    assert not any(name.startswith("sg-") for name in static.sets), "groups are ignored without dynamic ASGs"
    assert any("@sg-web-ports4" in r.text for r in dynamic.rules[b_dyn])


def test_garden_net_out_rules_are_static_rules_like_the_same_cc_rules():
    """A container's Garden rules compile as its egress_rules do: the same rule in either form
    gives the same bundle, with the same elements."""
    garden = {"protocol": 1, "networks": [{"start": "192.0.2.9", "end": "192.0.2.9"}],
              "ports": [{"start": 443, "end": 443}]}  # fmt: skip
    cc = {"protocol": "tcp", "destination": "192.0.2.9", "ports": "443"}
    doc = base_doc()
    doc["config"]["dynamic_asgs"] = False
    doc["containers"][0]["net_out_rules"] = [garden]
    doc["containers"][1]["egress_rules"] = [cc]
    rs = compiled(doc)
    bundle = egress_target(rs, "10.255.1.2")
    assert bundle == egress_target(rs, "10.255.1.3") != egress_target(rs, "10.255.1.4")
    assert list(rs.elements[f"{bundle.split()[-1]}-static-ports4"]) == [
        (AddrRange.single(_ip("192.0.2.9")), IntRange.single(6), IntRange.single(443))
    ]


def test_egress_policy_applies_to_its_app_and_lifecycle_only():
    doc = base_doc()
    doc["egress_policies"] = [
        {
            "source": {"id": API, "type": "app"},
            "destination": {
                "id": "d1",
                "protocol": "tcp",
                "ports": [{"start": 5432, "end": 5432}],
                "ips": [{"start": "192.0.2.50", "end": "192.0.2.60"}],
            },
            "app_lifecycle": "running",
        }
    ]
    rs = compiled(doc)
    b_api = egress_target(rs, "10.255.1.4").split()[-1]
    b_web = egress_target(rs, "10.255.1.2").split()[-1]
    key = (AddrRange(_ip("192.0.2.50"), _ip("192.0.2.60")), IntRange.single(6), IntRange.single(5432))
    assert key in rs.elements[f"{b_api}-egress-ports4"]
    assert f"{b_web}-egress-ports4" not in rs.elements


def test_ipv6_destinations_only_for_containers_with_an_ipv6_address():
    doc = base_doc()
    doc["security_groups"][0]["rules"].append({"protocol": "tcp", "destination": "2001:db8::/64", "ports": "443"})
    doc["containers"][0]["ipv6"] = "fd00:255:1::2"
    rs = compiled(doc)
    assert set(k[0].start for k in rs.elements["egress6"]) == {_ip("fd00:255:1::2")}
    bundle = egress_target(rs, "10.255.1.2").split()[-1]
    assert "sg-dns-ports6" in rs.sets
    assert any("@sg-dns-ports6" in r.text for r in rs.rules[bundle])


def test_logged_rules_go_through_the_log_chain():
    doc = base_doc()
    doc["security_groups"][1]["rules"][0]["log"] = True
    rs = compiled(doc)
    bundle = egress_target(rs, "10.255.1.2").split()[-1]
    assert any(r.text.endswith("counter jump log-asg-accept") for r in rs.rules[bundle])
    assert "sg-web-log-ports4" in rs.sets


def test_compile_does_not_depend_on_input_order():
    doc = base_doc()
    expected = render_ruleset(compiled(doc))
    rng = random.Random(7)
    for _ in range(5):
        shuffled = copy.deepcopy(doc)
        for key in ("containers", "security_groups", "c2c_policies"):
            rng.shuffle(shuffled[key])
        for g in shuffled["security_groups"]:
            rng.shuffle(g["rules"])
        assert render_ruleset(compiled(shuffled)) == expected


def test_editing_one_container_touches_only_its_own_elements():
    before = compiled(base_doc())
    doc = base_doc()
    doc["containers"][2]["space_guid"] = SPACE1  # api-0 moves into space 1's bundle
    tx = diff(compiled(doc), before)
    dispatch = [op.obj for op in tx.ops if getattr(op.obj, "set", None) in ("egress4", "ingress4")]
    assert dispatch and {e.key[0].start for e in dispatch} == {_ip("10.255.1.4")}
    rewritten = {op.obj.name for op in tx.ops if op.verb.value == "flush"}
    assert not rewritten, f"no chain of another container is rewritten: {rewritten}"


# --- state sequences (Felix's expanders): the end state never depends on the path -------------


def _states():
    s0 = base_doc()
    s1 = base_doc()
    s1["containers"].append(container("worker-0", "10.255.1.9", WORKER, SPACE2))
    s2 = copy.deepcopy(s1)
    s2["security_groups"][1]["relationships"]["running_spaces"]["data"].append({"guid": SPACE2})
    s3 = copy.deepcopy(s2)
    s3["c2c_policies"] = []
    s4 = copy.deepcopy(s3)
    s4["containers"] = s4["containers"][1:]
    empty = {"cell_id": "cell-a", "containers": []}
    return [s0, s1, s2, s3, s4, empty]


def _sequences():
    states = _states()
    yield "forward", states
    yield "reversed", list(reversed(states))
    yield "with empties", list(itertools.chain.from_iterable((s, _states()[-1]) for s in states))
    yield "squashed", [states[-1]]
    for i, s in enumerate(states):
        yield f"alone-{i}", [s]


@pytest.mark.parametrize("name,sequence", list(_sequences()), ids=[n for n, _ in _sequences()])
def test_applying_a_sequence_ends_where_compiling_the_last_state_does(name, sequence):
    kernel = FakeNft()
    for doc in sequence:
        tx = diff(compiled(doc), kernel.read(TABLE))
        kernel.apply(tx)
    fresh = FakeNft()
    fresh.apply(diff(compiled(sequence[-1]), None))
    assert kernel.dump() == fresh.dump()
    assert diff(compiled(sequence[-1]), kernel.read(TABLE)).is_empty


def test_a_long_lived_compiler_gives_what_a_fresh_one_gives():
    """The daemon's Compiler reuses fragments by object identity; reuse must never change the output."""
    from events.models import C2CPolicy, SecurityGroup
    from reconciler.compile import Compiler

    shared = Compiler()
    state = load_cell_state(base_doc())
    steps = []
    added = state.containers[0].model_copy(update={"handle": "web-9", "ip": _ip("10.255.1.99")})
    steps.append(state.model_copy(update={"containers": [*state.containers, added]}))
    raw = state.security_groups[1].model_dump(mode="json")
    raw["rules"].append({"protocol": "udp", "destination": "192.0.2.77", "ports": "5000-5010"})
    steps.append(
        steps[-1].model_copy(update={"security_groups": [state.security_groups[0], SecurityGroup.model_validate(raw)]})
    )
    policy = C2CPolicy.model_validate(
        {"source": {"id": API}, "destination": {"id": WEB, "protocol": "udp", "ports": {"start": 53, "end": 53}}}
    )
    steps.append(steps[-1].model_copy(update={"c2c_policies": [*state.c2c_policies, policy]}))
    rebound = raw | {"relationships": {"running_spaces": {"data": [{"guid": SPACE2}]}}}
    steps.append(
        steps[-1].model_copy(
            update={"security_groups": [state.security_groups[0], SecurityGroup.model_validate(rebound)]}
        )
    )
    steps.append(steps[-1].model_copy(update={"containers": steps[-1].containers[1:]}))
    static = steps[-1].config.model_copy(update={"dynamic_asgs": False})
    steps.append(steps[-1].model_copy(update={"config": static}))
    steps.append(state)
    for s in [state, *steps]:
        assert render_ruleset(shared.compile(s)) == render_ruleset(compile_ruleset(s))
