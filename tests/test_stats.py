"""`cfnft stats` and the per-group totals on /metrics: the kernel's counters, mapped back to the rules,
move by exactly the number of probes sent (a new connection's first packet is the one the rule sees;
the rest of the connection is established traffic)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from prometheus_client import generate_latest

from lab.netlab import Outcome, probe_many
from tests import test_reconciler
from tests.test_reconciler import API, WEB, c2c, eventually, publish, running_reconciler

cell_lab = test_reconciler.cell_lab  # the fixture: one cell, web0 and api0 (api0 listening on 8080)

N = 3


def state(web, api):
    overlapping = [
        {"protocol": "tcp", "destination": "192.0.2.0/28", "ports": "80"},
        {"protocol": "tcp", "destination": "192.0.2.8-192.0.2.20", "ports": "80"},  # overlaps rule 0
        {"protocol": "udp", "destination": "198.51.100.53", "ports": "53"},
        {"protocol": "tcp", "destination": "203.0.113.9", "ports": "443"},  # never used
    ]
    group = {"guid": "public", "name": "public", "rules": overlapping, "globally_enabled": {"running": True}}
    policy = c2c(WEB, API, 8080)
    return {
        "cell_id": "a",
        "containers": [
            {"handle": "web0", "ip": str(web.ip), "app_guid": WEB, "space_guid": "s", "workload": "app"},
            {"handle": "api0", "ip": str(api.ip), "app_guid": API, "space_guid": "s", "workload": "app"},
        ],
        "security_groups": [group],
        "c2c_policies": [policy],
        "config": {"deny_networks": {"always": ["203.0.113.128/25"]}},
    }


def cli_stats(url, *extra):
    argv = [sys.executable, "-m", "cfnft.cli", "stats", "--cell", "a", "--nats-url", url, "--nats-insecure", *extra]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_counters_move_by_the_probes_sent_and_map_to_the_rule(nats_server, cell_lab, tmp_path):
    _, cell, ctrs = cell_lab
    web, api = ctrs["web0"][0], ctrs["api0"][0]
    await publish(nats_server.url, state(web, api))
    async with running_reconciler(nats_server.url, cell, tmp_path, rule_metrics_seconds=0.2) as rec:
        await eventually(lambda: rec.ready, what="in sync")
        before = json.loads(await asyncio.to_thread(cli_stats, nats_server.url, "--json"))
        targets = [
            ("tcp", "192.0.2.3", 80),  # rule 0 only
            ("tcp", "192.0.2.12", 80),  # rules 0 and 1 overlap: counts for rule 0
            ("tcp", "192.0.2.19", 80),  # rule 1 only, but in the element merged from both: rule 0
            ("udp", "198.51.100.53", 53),  # rule 2
            ("tcp", str(api.ip), 8080),  # the c2c policy
            ("tcp", "192.0.2.99", 80),  # default deny
            ("tcp", "203.0.113.200", 80),  # deny_networks.always
        ]
        for _ in range(N):
            results = await asyncio.to_thread(probe_many, web, targets)
            assert [r.outcome for r in results] == [Outcome.OPEN] * 5 + [Outcome.REJECTED] * 2, results
        after = json.loads(await asyncio.to_thread(cli_stats, nats_server.url, "--json"))

        def rules(s):
            [group] = s["security_groups"]
            return [r["hits"]["packets"] for r in group["rules"]]

        def denied(s, what):
            return next(d["hits"]["packets"] for d in s["denies"] if d["what"].startswith(what))

        assert [a - b for a, b in zip(rules(after), rules(before))] == [3 * N, 0, N, 0]
        [group] = after["security_groups"]
        assert group["hits"]["packets"] - before["security_groups"][0]["hits"]["packets"] == 4 * N
        assert after["policies"][0]["hits"]["packets"] - before["policies"][0]["hits"]["packets"] == N
        assert denied(after, "default deny (egress") - denied(before, "default deny (egress") == N
        assert denied(after, "deny_networks.always") - denied(before, "deny_networks.always") == N

        unused = await asyncio.to_thread(cli_stats, nats_server.url, "--unused")
        assert 'rule 3: {"protocol":"tcp","destination":"203.0.113.9","ports":"443"}' in unused
        assert "rule 0" not in unused and "c2c policy" not in unused
        text = await asyncio.to_thread(cli_stats, nats_server.url)
        assert 'security group "public" (public):' in text

        def metric_line():
            body = generate_latest(rec.metrics.registry).decode()
            line = next(ln for ln in body.splitlines() if ln.startswith("cfnft_security_group_packets_total{"))
            return line

        await eventually(
            lambda: metric_line().endswith(f" {float(group['hits']['packets'])}"), what="the group total on /metrics"
        )
        assert 'guid="public"' in metric_line()
