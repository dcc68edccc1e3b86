"""silk's `outbound_connections` with real packets: a container's new TCP connections to one
destination address and port pass up to the burst, then are rejected; other destinations and other
containers keep buckets of their own; a dry run only logs (counted: a namespace has no kernel log)."""

from __future__ import annotations

import pytest

from events.models import load_cell_state
from lab.netlab import Lab, Outcome, probe_many
from nft import NftRunner, diff
from reconciler.compile import TABLE, compile_ruleset

BURST = 5


@pytest.fixture(scope="module")
def world():
    with Lab(ipv6=False) as lab:
        cell = lab.add_cell("a")
        lab.add_internet()
        ctrs = [cell.add_container("web0"), cell.add_container("web1")]
        with NftRunner(netns=cell.name) as runner:
            yield cell, ctrs, runner


def apply(world, **limit):
    cell, ctrs, runner = world
    doc = {
        "cell_id": "a",
        "containers": [
            {"handle": f"web{i}", "ip": str(c.ip), "app_guid": "web", "space_guid": "s", "workload": "app"}
            for i, c in enumerate(ctrs)
        ],
        "security_groups": [
            {
                "guid": "public",
                "name": "public",
                "rules": [{"protocol": "tcp", "destination": "192.0.2.0/24", "ports": "80"}],
                "globally_enabled": {"running": True},
            }
        ],
        "config": {"outbound_connections": {"burst": BURST, "rate_per_sec": 1, **limit}},
    }
    desired = compile_ruleset(load_cell_state(doc))
    runner.apply(diff(desired, runner.read(TABLE)))
    assert diff(desired, runner.read(TABLE)).is_empty, "the kernel's buckets must not show as drift"


def limit_rule_packets(world, needle):
    _, _, runner = world
    kernel, counters = runner.read(TABLE), runner.read_counters(TABLE)
    fingerprints = {r.claimed_fingerprint for rules in kernel.rules.values() for r in rules if needle in r.text}
    return sum(c.packets for (_, fp), c in counters.rules.items() if fp in fingerprints)


def outcomes(container, target, n):
    return [r.outcome for r in probe_many(container, [target] * n)]


def test_connections_beyond_the_burst_are_rejected_per_container_and_destination(world):
    apply(world, limit=True, logging=True)
    _, (web0, web1), _ = world
    got = outcomes(web0, ("tcp", "192.0.2.10", 80), BURST + 2)
    assert sorted(got) == sorted([Outcome.OPEN] * BURST + [Outcome.REJECTED] * 2), got
    assert outcomes(web0, ("tcp", "192.0.2.11", 80), 1) == [Outcome.OPEN], "another destination: its own bucket"
    assert outcomes(web1, ("tcp", "192.0.2.10", 80), 1) == [Outcome.OPEN], "another container: its own bucket"
    assert limit_rule_packets(world, "cfnft-orl-deny") == 2


def test_dry_run_only_logs(world):
    apply(world, dry_run=True, logging=False)
    _, (web0, _), _ = world
    assert outcomes(web0, ("tcp", "192.0.2.20", 80), BURST + 2) == [Outcome.OPEN] * (BURST + 2)
    assert limit_rule_packets(world, "cfnft-orl-dryrun") == 2


def test_off_by_default_and_removed_cleanly(world):
    apply(world)
    _, (web0, _), runner = world
    assert "outbound-limit4" not in runner.read(TABLE).sets
    assert outcomes(web0, ("tcp", "192.0.2.30", 80), BURST + 2) == [Outcome.OPEN] * (BURST + 2)


def test_the_bucket_lifetime_reads_back_in_nfts_spelling(world):
    """ceil(burst / rate) seconds: 70 s lists as `1m10s`, and must not read as drift."""
    apply(world, limit=True, burst=70, rate_per_sec=1)
    assert world[2].read(TABLE).sets["outbound-limit4"].timeout == 70
