"""CF network policy, proven with real packets through the real kernel.

One lab for the module: cell "a" with containers attached by the real ptp/host-local CNI
plugins, an internet namespace owning the documentation ranges. Each test applies the
state it needs with `compile_ruleset` + `diff` + `NftRunner(netns=cell)` (level-triggered:
whatever the previous test left is simply driven to the new state) and probes.

Outcomes (tests/netagent.py): OPEN passed; REJECTED our `reject` answered; REFUSED the target
itself answered (a closed port, reached).
"""

from __future__ import annotations

import copy
import threading

import pytest

from events.models import load_cell_state
from lab.netlab import Lab, Outcome, assert_reachability, probe_many
from nft import NftRunner, diff
from reconciler.compile import TABLE, compile_ruleset

OPEN, REJECTED, REFUSED = Outcome.OPEN, Outcome.REJECTED, Outcome.REFUSED
WEB, API, STAGER = "app-web", "app-api", "app-stager"
SPACE1, SPACE2 = "space-1", "space-2"


@pytest.fixture(scope="module")
def world():
    with Lab() as lab:
        cell = lab.add_cell("a")
        lab.add_internet()
        ctrs = {name: cell.add_container(name) for name in ("web0", "web1", "api0", "stage0", "rogue")}
        ctrs["api0"].listen(tcp=[8080, 9090], udp=[7000])
        ctrs["web0"].listen(tcp=[8080])
        cell.listen(tcp=[9000, 9001], udp=[53])
        runner = NftRunner(netns=cell.name)
        try:
            yield lab, cell, ctrs, runner
        finally:
            runner.close()


def sg(guid, rules, running=False, staging=False, running_spaces=(), staging_spaces=()):
    return {
        "guid": guid,
        "name": guid,
        "rules": rules,
        "globally_enabled": {"running": running, "staging": staging},
        "relationships": {
            "running_spaces": {"data": [{"guid": s} for s in running_spaces]},
            "staging_spaces": {"data": [{"guid": s} for s in staging_spaces]},
        },
    }


def doc(world, groups, c2c=(), config=None, ipv6=True, **extra):
    _, cell, c, _ = world

    def ctr(name, app, space, workload="app"):
        out = {"handle": name, "ip": str(c[name].ip), "app_guid": app, "space_guid": space, "workload": workload}
        if ipv6 and c[name].ip6 is not None:
            out["ipv6"] = str(c[name].ip6)
        return out

    return {
        "cell_id": "a",
        "containers": [
            ctr("web0", WEB, SPACE1),
            ctr("web1", WEB, SPACE1),
            ctr("api0", API, SPACE2),
            ctr("stage0", STAGER, SPACE1, "staging"),
        ],
        "security_groups": list(groups),
        "c2c_policies": list(c2c),
        "config": {"dns_servers": [str(cell.gateway)], "host_tcp_services": [f"{cell.gateway}:9000"], **(config or {})},
        **extra,
    }


def apply(world, document):
    runner = world[3]
    desired = compile_ruleset(load_cell_state(document))
    runner.apply(diff(desired, runner.read(TABLE)))
    assert diff(desired, runner.read(TABLE)).is_empty, "second apply must change nothing"
    return desired


PUBLIC = sg(
    "public",
    [
        {"protocol": "tcp", "destination": "192.0.2.10", "ports": "80,443"},
        {"protocol": "tcp", "destination": "192.0.2.32/28", "ports": "8080"},
        {"protocol": "tcp", "destination": "192.0.2.100-192.0.2.110", "ports": "80-443"},
        {"protocol": "tcp", "destination": "198.51.100.7,198.51.100.9", "ports": "443"},
        {"protocol": "udp", "destination": "198.51.100.53", "ports": "53"},
        {"protocol": "icmp", "destination": "203.0.113.0/25", "type": 8, "code": -1},
        {"protocol": "all", "destination": "203.0.113.200"},
        {"protocol": "tcp", "destination": "2001:db8::1", "ports": "443"},
    ],
    running_spaces=[SPACE1],
)


def test_every_protocol_and_destination_form_allows_exactly_what_it_says(world):
    apply(world, doc(world, [PUBLIC]))
    _, _, c, _ = world
    assert_reachability(
        c["web0"],
        {
            ("tcp", "192.0.2.10", 80): OPEN,  # single address, port list
            ("tcp", "192.0.2.10", 443): OPEN,
            ("tcp", "192.0.2.10", 8080): REJECTED,  # port not in the list
            ("tcp", "192.0.2.11", 80): REJECTED,  # neighbour address
            ("tcp", "192.0.2.40", 8080): OPEN,  # CIDR
            ("tcp", "192.0.2.48", 8080): REJECTED,  # just past the CIDR
            ("tcp", "192.0.2.105", 443): OPEN,  # range, port range
            ("tcp", "192.0.2.111", 443): REJECTED,
            ("tcp", "198.51.100.9", 443): OPEN,  # comma list
            ("tcp", "198.51.100.8", 443): REJECTED,
            ("udp", "198.51.100.53", 53): OPEN,
            ("udp", "198.51.100.53", 123): REJECTED,  # udp, other port
            ("tcp", "198.51.100.53", 53): REJECTED,  # tcp not allowed to the DNS host
            ("icmp", "203.0.113.5"): OPEN,  # echo request, any code
            ("icmp", "203.0.113.130"): REJECTED,  # outside the icmp CIDR
            ("tcp", "203.0.113.200", 80): OPEN,  # protocol all: tcp ...
            ("udp", "203.0.113.200", 123): OPEN,  # ... udp ...
            ("icmp", "203.0.113.200"): OPEN,  # ... and icmp
            ("tcp", "2001:db8::1", 443): OPEN,  # IPv6 destination for a container with IPv6
            ("tcp", "2001:db8::1", 80): REJECTED,
            ("tcp", "2001:db8::2", 443): REJECTED,
        },
    )


def test_ipv4_only_containers_never_match_ipv6_rules(world):
    """A container known only by its IPv4 address gets no IPv6 egress, not even what an IPv6 rule
    allows: its IPv6 source is unknown, and unknown overlay sources are rejected."""
    apply(world, doc(world, [PUBLIC], ipv6=False, config={"overlay_network6": "fd00:255::/32"}))
    _, _, c, _ = world
    assert_reachability(c["web0"], {("tcp", "192.0.2.10", 80): OPEN, ("tcp", "2001:db8::1", 443): REJECTED})
    apply(world, doc(world, [PUBLIC], config={"overlay_network6": "fd00:255::/32"}))
    assert_reachability(c["web0"], {("tcp", "2001:db8::1", 443): OPEN})


def test_running_groups_apply_to_apps_staging_groups_to_staging(world):
    running = sg("run", [{"protocol": "tcp", "destination": "192.0.2.20", "ports": "80"}], running=True)
    staging = sg("stage", [{"protocol": "tcp", "destination": "192.0.2.21", "ports": "80"}], staging=True)
    apply(world, doc(world, [running, staging]))
    _, _, c, _ = world
    assert_reachability(c["web0"], {("tcp", "192.0.2.20", 80): OPEN, ("tcp", "192.0.2.21", 80): REJECTED})
    assert_reachability(c["stage0"], {("tcp", "192.0.2.20", 80): REJECTED, ("tcp", "192.0.2.21", 80): OPEN})


def test_space_bound_groups_apply_only_in_their_space(world):
    bound = sg("bound", [{"protocol": "tcp", "destination": "192.0.2.22", "ports": "80"}], running_spaces=[SPACE2])
    staged = sg(
        "bound-staging", [{"protocol": "tcp", "destination": "192.0.2.23", "ports": "80"}], staging_spaces=[SPACE1]
    )
    apply(world, doc(world, [bound, staged]))
    _, _, c, _ = world
    assert_reachability(c["api0"], {("tcp", "192.0.2.22", 80): OPEN, ("tcp", "192.0.2.23", 80): REJECTED})
    assert_reachability(c["web0"], {("tcp", "192.0.2.22", 80): REJECTED, ("tcp", "192.0.2.23", 80): REJECTED})
    assert_reachability(c["stage0"], {("tcp", "192.0.2.22", 80): REJECTED, ("tcp", "192.0.2.23", 80): OPEN})


def test_icmp_wildcards(world):
    any_type = sg("any", [{"protocol": "icmp", "destination": "203.0.113.1", "type": -1, "code": -1}], running=True)
    wrong_type = sg(
        "reply-only", [{"protocol": "icmp", "destination": "203.0.113.2", "type": 0, "code": -1}], running=True
    )
    exact = sg("exact", [{"protocol": "icmp", "destination": "203.0.113.3", "type": 8, "code": 0}], running=True)
    apply(world, doc(world, [any_type, wrong_type, exact]))
    _, _, c, _ = world
    assert_reachability(
        c["web0"],
        {
            ("icmp", "203.0.113.1"): OPEN,
            ("icmp", "203.0.113.2"): REJECTED,
            ("icmp", "203.0.113.3"): OPEN,
            ("icmp", "203.0.113.4"): REJECTED,
        },
    )


def test_deny_networks_beat_allows(world):
    wide = sg("wide", [{"protocol": "all", "destination": "0.0.0.0/0"}], running=True, staging=True)
    config = {"deny_networks": {"always": ["192.0.2.0/26"], "running": ["198.51.100.0/24"], "staging": []}}
    apply(world, doc(world, [wide], config=config))
    _, _, c, _ = world
    assert_reachability(
        c["web0"],
        {
            ("tcp", "192.0.2.10", 80): REJECTED,
            ("tcp", "192.0.2.70", 80): OPEN,
            ("tcp", "198.51.100.1", 80): REJECTED,
            ("icmp", "203.0.113.9"): OPEN,
        },
    )
    assert_reachability(c["stage0"], {("tcp", "192.0.2.10", 80): REJECTED, ("tcp", "198.51.100.1", 80): OPEN})


def test_c2c_allows_the_policy_port_in_the_policy_direction_only(world):
    policy = {
        "source": {"id": WEB},
        "destination": {"id": API, "protocol": "tcp", "ports": {"start": 8080, "end": 8080}},
    }
    apply(world, doc(world, [], c2c=[policy]))
    _, _, c, _ = world
    api, web = str(c["api0"].ip), str(c["web0"].ip)
    assert_reachability(
        c["web0"],
        {("tcp", api, 8080): OPEN, ("tcp", api, 9090): REJECTED, ("udp", api, 7000): REJECTED, ("icmp", api): REJECTED},
    )
    assert_reachability(c["web1"], {("tcp", api, 8080): OPEN})
    assert_reachability(c["api0"], {("tcp", web, 8080): REJECTED})  # not the other way round
    assert_reachability(c["stage0"], {("tcp", api, 8080): REJECTED})  # another app


def test_c2c_policy_removal_and_udp(world):
    policy = {
        "source": {"id": WEB},
        "destination": {"id": API, "protocol": "udp", "ports": {"start": 6000, "end": 7000}},
    }
    apply(world, doc(world, [], c2c=[policy]))
    _, _, c, _ = world
    api = str(c["api0"].ip)
    assert_reachability(c["web0"], {("udp", api, 7000): OPEN, ("tcp", api, 8080): REJECTED})
    apply(world, doc(world, [], c2c=[]))
    assert_reachability(c["web0"], {("udp", api, 7000): REJECTED})


def test_without_overlay_network6_unknown_ipv6_sources_still_fail_closed(world):
    """No IPv6 overlay prefix configured: a container whose IPv6 address the reconciler does not
    know (here: it knows only the IPv4 one) reaches nothing over IPv6; a known one keeps its rules."""
    everything = sg("everything", [{"protocol": "all", "destination": "::/0"}], running=True)
    apply(world, doc(world, [everything], ipv6=False))
    _, _, c, _ = world
    assert c["rogue"].ip6 is not None
    assert_reachability(c["rogue"], {("tcp", "2001:db8::1", 443): REJECTED})
    assert_reachability(c["web0"], {("tcp", "2001:db8::1", 443): REJECTED})
    apply(world, doc(world, [everything]))
    assert_reachability(c["web0"], {("tcp", "2001:db8::1", 443): OPEN})
    assert_reachability(c["rogue"], {("tcp", "2001:db8::1", 443): REJECTED})


def test_unknown_overlay_source_gets_nothing(world):
    everything = sg("everything", [{"protocol": "all", "destination": "0.0.0.0/0"}], running=True)
    policy = {"source": {"id": WEB}, "destination": {"id": API, "protocol": "tcp", "ports": {"start": 1, "end": 65535}}}
    apply(world, doc(world, [everything], c2c=[policy]))
    _, cell, c, _ = world
    api = str(c["api0"].ip)
    assert_reachability(
        c["rogue"],
        {("tcp", "192.0.2.10", 80): REJECTED, ("icmp", "203.0.113.1"): REJECTED, ("tcp", api, 8080): REJECTED},
    )
    assert_reachability(c["web0"], {("tcp", "192.0.2.10", 80): OPEN, ("tcp", api, 8080): OPEN})


def test_container_to_cell_only_dns_and_host_services(world):
    apply(world, doc(world, []))
    _, cell, c, _ = world
    gw = str(cell.gateway)
    assert_reachability(c["web0"], {("udp", gw, 53): OPEN, ("tcp", gw, 9000): OPEN, ("tcp", gw, 9001): REJECTED})


def test_security_group_edit_reaches_a_running_container_without_touching_it(world):
    before = sg("edit", [{"protocol": "tcp", "destination": "192.0.2.30", "ports": "80"}], running=True)
    after = sg("edit", [{"protocol": "tcp", "destination": "192.0.2.31", "ports": "80"}], running=True)
    apply(world, doc(world, [before]))
    _, _, c, _ = world
    assert_reachability(c["web0"], {("tcp", "192.0.2.30", 80): OPEN, ("tcp", "192.0.2.31", 80): REJECTED})
    apply(world, doc(world, [after]))
    assert_reachability(c["web0"], {("tcp", "192.0.2.30", 80): REJECTED, ("tcp", "192.0.2.31", 80): OPEN})


def test_containers_with_the_same_groups_share_one_bundle_in_the_kernel(world):
    apply(world, doc(world, [PUBLIC]))
    kernel = world[3].read(TABLE)
    targets = {e.key[0].start: e.value for e in kernel.elements["egress4"].values()}
    _, _, c, _ = world
    assert targets[c["web0"].ip] == targets[c["web1"].ip]
    assert targets[c["web0"].ip] != targets[c["api0"].ip]


def test_check_detects_a_rule_deleted_behind_our_back_and_apply_repairs_it(world):
    desired = apply(world, doc(world, [PUBLIC]))
    _, cell, c, runner = world
    bundle = next(iter(runner.read(TABLE).elements["egress4"].values())).value.split()[-1]
    listing = cell.run(["nft", "-a", "list", "chain", "inet", "cfnft", bundle]).stdout
    handle = next(line.rsplit("# handle ", 1)[1] for line in listing.splitlines() if "dport @" in line)
    cell.run(["nft", "delete", "rule", "inet", "cfnft", bundle, "handle", handle])
    assert not diff(desired, runner.read(TABLE)).is_empty, "the deleted rule must show as drift"
    apply(world, doc(world, [PUBLIC]))
    assert_reachability(c["web0"], {("tcp", "192.0.2.10", 80): OPEN})


def test_reapplying_never_opens_a_window(world):
    """Alternate two states while probing: what both deny is never reached, what both allow never fails."""
    both = [{"protocol": "tcp", "destination": "192.0.2.40", "ports": "80"}]
    state_a = doc(
        world, [sg("g", both + [{"protocol": "tcp", "destination": "192.0.2.41", "ports": "80"}], running=True)]
    )
    state_b = doc(
        world, [sg("g", both + [{"protocol": "udp", "destination": "192.0.2.42", "ports": "123"}], running=True)]
    )
    _, _, c, _ = world
    apply(world, state_a)
    stop = threading.Event()
    seen: list[tuple[Outcome, Outcome]] = []

    def probe_loop():
        while not stop.is_set():
            r = probe_many(c["web0"], [("tcp", "192.0.2.43", 80), ("tcp", "192.0.2.40", 80)], timeout=0.3)
            seen.append((r[0].outcome, r[1].outcome))

    t = threading.Thread(target=probe_loop)
    t.start()
    try:
        applies = 0
        while (applies < 30 or len(seen) < 10) and applies < 2000:
            apply(world, copy.deepcopy(state_b if applies % 2 == 0 else state_a))
            applies += 1
    finally:
        stop.set()
        t.join()
    assert len(seen) >= 10, f"the probe loop must have run during the re-applies ({applies} applies)"
    assert all(denied is REJECTED for denied, _ in seen), seen
    assert all(allowed is OPEN for _, allowed in seen), seen


def test_traffic_leaving_the_overlay_is_masqueraded_except_to_excluded_networks(world):
    everything = sg("everything", [{"protocol": "all", "destination": "0.0.0.0/0"}], running=True)
    _, cell, c, runner = world

    def masqueraded() -> int:
        counters = runner.read_counters(TABLE)
        return sum(v.packets for (chain, _), v in counters.rules.items() if chain == "postrouting")

    apply(world, doc(world, [everything], config={"no_masquerade_networks": ["198.51.100.0/24"]}))
    before = masqueraded()
    assert_reachability(c["web0"], {("tcp", "192.0.2.10", 80): OPEN})
    after_nat = masqueraded()
    assert after_nat > before, "a new connection out of the overlay goes through masquerade"
    assert_reachability(c["web0"], {("tcp", "198.51.100.10", 80): OPEN, ("tcp", str(c["api0"].ip), 8080): REJECTED})
    assert masqueraded() == after_nat, "excluded networks and the overlay keep the container's address"
    apply(world, doc(world, [everything], config={"masquerade": False}))
    assert "postrouting" not in runner.read(TABLE).chains
    assert_reachability(c["web0"], {("tcp", "192.0.2.10", 80): OPEN})


def test_logged_rules_and_denied_packets_are_logged_and_counted(world):
    """A non-initial namespace writes nothing to the kernel log, so the log rules are observed by
    their counters: accepted new connections of a `log: true` rule, and denied packets."""
    logged = sg(
        "logged",
        [
            {"protocol": "tcp", "destination": "192.0.2.50", "ports": "80", "log": True},
            {"protocol": "tcp", "destination": "192.0.2.51", "ports": "80"},
        ],
        running=True,
    )
    policy = {
        "source": {"id": WEB},
        "destination": {"id": API, "protocol": "tcp", "ports": {"start": 8080, "end": 8080}},
    }
    apply(world, doc(world, [logged], c2c=[policy], config={"c2c_logging": True, "denied_logs_per_sec": 1000}))
    _, _, c, runner = world

    def counted(chain: str, needle: str) -> int:
        kernel = runner.read(TABLE)
        counters = runner.read_counters(TABLE)
        fingerprints = {r.claimed_fingerprint for r in kernel.rules[chain] if needle in r.text}
        return sum(v.packets for (ch, fp), v in counters.rules.items() if ch == chain and fp in fingerprints)

    before = counted("log-asg-accept", "log prefix")
    assert_reachability(c["web0"], {("tcp", "192.0.2.50", 80): OPEN})
    assert counted("log-asg-accept", "log prefix") > before, "the logged rule's connection was logged"
    before = counted("log-asg-accept", "log prefix")
    assert_reachability(c["web0"], {("tcp", "192.0.2.51", 80): OPEN})
    assert counted("log-asg-accept", "log prefix") == before, "a rule without log: true is not logged"
    before = counted("log-c2c-accept", "log prefix")
    assert_reachability(c["web0"], {("tcp", str(c["api0"].ip), 8080): OPEN})
    assert counted("log-c2c-accept", "log prefix") > before
    app_chain = f"c2c-{API}"
    before = counted(app_chain, "cfnft-c2c-deny")
    assert_reachability(c["web0"], {("tcp", str(c["api0"].ip), 9090): REJECTED})
    assert counted(app_chain, "cfnft-c2c-deny") > before, "denied c2c packets are logged (rate limited)"
