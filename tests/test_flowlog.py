"""The flow log with real packets: the reconciler reads NFLOG in its cell and writes iptables-logger
lines that name the group and rule (or c2c policy) that decided each packet, allowed or denied,
within the table's rate limits, and reopens its file on request (SIGHUP)."""

from __future__ import annotations

import asyncio
import json
import signal
import time

from lab.netlab import Outcome, probe_many
from reconciler.config import FlowLogConfig
from tests import test_reconciler
from tests.test_reconciler import API, WEB, _ready, _spawn_reconciler, c2c, eventually, publish, running_reconciler

cell_lab = test_reconciler.cell_lab  # the fixture: one cell, web0 and api0 (api0 listening on 8080)

GROUP = {
    "guid": "logged",
    "name": "logged-name",
    "rules": [
        {"protocol": "tcp", "destination": "192.0.2.50", "ports": "80", "log": True},
        {"protocol": "tcp", "destination": "192.0.2.51", "ports": "80"},
    ],
    "globally_enabled": {"running": True},
}


def doc(ctrs, denied_per_sec):
    return {
        "cell_id": "a",
        "containers": [
            {"handle": name, "ip": str(c.ip), "app_guid": app, "space_guid": "s", "org_guid": "o", "workload": "app"}
            for name, (c, app) in ctrs.items()
        ],
        "security_groups": [GROUP],
        "c2c_policies": [c2c(WEB, API, 8080)],
        "config": {"asg_logging": True, "c2c_logging": True, "denied_logs_per_sec": denied_per_sec},
    }


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def test_flow_log_lines_name_the_deciding_rule_for_allowed_and_denied_packets(nats_server, cell_lab, tmp_path):
    _, cell, ctrs = cell_lab
    web, api = ctrs["web0"][0], ctrs["api0"][0]
    path = tmp_path / "flow.log"
    flow_log = FlowLogConfig(file=path, host_ip="100.64.1.1", host_guid="cell-guid")
    await publish(nats_server.url, doc(ctrs, denied_per_sec=1000))
    async with running_reconciler(nats_server.url, cell, tmp_path, flow_log=flow_log) as rec:
        await eventually(lambda: rec.ready, what="in sync")
        targets = [
            ("tcp", "192.0.2.50", 80),  # rule 0, log: true
            ("tcp", "192.0.2.51", 80),  # rule 1, logged by asg_logging
            ("tcp", "192.0.2.99", 80),  # default deny
            ("tcp", str(api.ip), 8080),  # c2c policy
            ("tcp", str(api.ip), 9090),  # c2c default deny
        ]
        for target in targets:  # one at a time: the lines come in this order
            await asyncio.to_thread(probe_many, web, [target])
        await eventually(lambda: len(lines(path)) >= 5, what="five flow-log lines")
        got = lines(path)
        assert [(x["message"], x["data"]["decided_by"]["kind"]) for x in got] == [
            ("cfnetworking.iptables.egress-allowed", "security_group"),
            ("cfnetworking.iptables.egress-allowed", "security_group"),
            ("cfnetworking.iptables.egress-denied", "default_deny"),
            ("cfnetworking.iptables.ingress-allowed", "c2c_policy"),
            ("cfnetworking.iptables.ingress-denied", "c2c_default_deny"),
        ]
        first = got[0]["data"]
        assert first["decided_by"]["security_group"] == {
            "guid": "logged",
            "name": "logged-name",
            "rule_index": 0,
            "rule": GROUP["rules"][0],
        }
        assert got[1]["data"]["decided_by"]["security_group"]["rule_index"] == 1
        assert first["packet"] | {"src_port": 0} == {
            "direction": "egress",
            "allowed": True,
            "src_ip": str(web.ip),
            "dst_ip": "192.0.2.50",
            "src_port": 0,
            "dst_port": 80,
            "protocol": "TCP",
            "mark": "",
            "icmp_type": 0,
            "icmp_code": 0,
        }
        assert first["source"] == {
            "container_id": "web0",
            "app_guid": WEB,
            "space_guid": "s",
            "organization_guid": "o",
            "host_ip": "100.64.1.1",
            "host_guid": "cell-guid",
        }
        ingress = got[3]["data"]
        assert ingress["source"]["container_id"] == "api0", "ingress lines are about the receiving container"
        assert ingress["decided_by"]["policy"]["source"]["id"] == WEB
        assert abs(float(got[0]["timestamp"]) - time.time()) < 60

        # Log rotation: the file is moved away, SIGHUP reopens it, new lines go to a new file.
        path.rename(tmp_path / "flow.log.1")
        assert rec.flow_log is not None
        rec.flow_log.reopen()
        await asyncio.to_thread(probe_many, web, [("tcp", "192.0.2.50", 80)])
        await eventually(lambda: len(lines(path)) == 1, what="a line in the reopened file")
        assert len(lines(tmp_path / "flow.log.1")) == 5


async def test_denied_packets_are_logged_at_their_rate_limit(nats_server, cell_lab, tmp_path):
    _, cell, ctrs = cell_lab
    web = ctrs["web0"][0]
    path = tmp_path / "flow.log"
    await publish(nats_server.url, doc(ctrs, denied_per_sec=1))
    async with running_reconciler(nats_server.url, cell, tmp_path, flow_log=FlowLogConfig(file=path)) as rec:
        await eventually(lambda: rec.ready, what="in sync")
        started = time.monotonic()
        results = await asyncio.to_thread(probe_many, web, [("tcp", "192.0.2.99", p) for p in range(1000, 1040)])
        elapsed = time.monotonic() - started
        assert {r.outcome for r in results} == {Outcome.REJECTED}
        await asyncio.sleep(0.3)  # the NFLOG batch timeout is 0.1 s
        denied = [x for x in lines(path) if x["message"] == "cfnetworking.iptables.egress-denied"]
        # nft's limit: 1 a second after a burst of 5.
        assert 1 <= len(denied) <= 5 + int(elapsed) + 1, (len(denied), elapsed)


async def test_cfnft_reconcile_reopens_its_flow_log_on_sighup(nats_server, cell_lab, tmp_path):
    from lab.natsserver import free_port

    _, cell, ctrs = cell_lab
    web = ctrs["web0"][0]
    path = tmp_path / "flow.log"
    await publish(nats_server.url, doc(ctrs, denied_per_sec=1000))
    port = free_port()
    proc = _spawn_reconciler(nats_server.url, cell, tmp_path, port, flow_log={"file": str(path)})
    try:
        await eventually(lambda: _ready(port), timeout=20, what="reconciler ready")
        await asyncio.to_thread(probe_many, web, [("tcp", "192.0.2.50", 80)])
        await eventually(lambda: len(lines(path)) == 1, what="a flow-log line")
        path.rename(tmp_path / "flow.log.1")
        proc.send_signal(signal.SIGHUP)

        def logged_to_a_new_file() -> bool:  # a probe until the handler has run: each one logs a line
            probe_many(web, [("tcp", "192.0.2.50", 80)])
            return len(lines(path)) >= 1

        await eventually(logged_to_a_new_file, what="a line in the reopened file")
        assert proc.poll() is None, "SIGHUP must not end the reconciler"
    finally:
        proc.terminate()
        proc.wait()
