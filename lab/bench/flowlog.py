"""Flow-log lines per second: how many logged packets the reconciler's NFLOG reader turns into
JSON lines (iptables-logger's fields and the deciding rule) when packets come as fast as one
sender can make them.

A container sends UDP to an address its security group allows with `log: true`; the bench's own
table in the cell marks the container's packets `notrack`, so every packet is a new flow through
the logged rule (and the accepted-UDP log limit is set far above what the sender reaches). The
reader is cfnft's own (`NflogSocket` + `FlowLog`, as `cfnft reconcile` runs them), in this
process, writing to a temporary file; it runs while the sender does, and what it did not read by
then counts as dropped. Both share this machine's cores with the kernel's forwarding, as on a cell.
"""

from __future__ import annotations

import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from events.models import load_cell_state
from lab.bench.packet import PORT, SENDER, TARGET, sender_cell
from lab.netlab import Lab
from nft import NftRunner, diff
from reconciler.compile import TABLE, compile_ruleset
from reconciler.config import FlowLogConfig
from reconciler.flowlog import FlowLog
from reconciler.logprefix import FLOW_LOG_GROUP
from reconciler.nflog import NflogSocket


@dataclass
class FlowLogRate:
    offered_pps: float  # packets the sender sent, per second
    lines_per_second: float  # lines written, per second of sending
    lines: int


def flow_log_rate(seconds: float = 2.0) -> FlowLogRate:
    with Lab(ipv6=False) as lab, tempfile.TemporaryDirectory() as tmp:
        cell, ctr = sender_cell(lab)
        doc = {
            "cell_id": "a",
            "containers": [
                {"handle": "sender", "ip": str(ctr.ip), "app_guid": "app", "space_guid": "space", "workload": "app"}
            ],
            "security_groups": [
                {
                    "guid": "g",
                    "name": "bench",
                    "rules": [{"protocol": "udp", "destination": TARGET, "ports": str(PORT), "log": True}],
                    "globally_enabled": {"running": True},
                }
            ],
            "config": {"masquerade": False, "accepted_udp_logs_per_sec": 100_000_000},
        }
        state = load_cell_state(doc)
        desired = compile_ruleset(state)
        with NftRunner(netns=cell.name) as runner:
            runner.apply(diff(desired, runner.read(TABLE)))
        flow_log = FlowLog(FlowLogConfig(file=Path(tmp) / "flow.log"))
        sock = NflogSocket.open(FLOW_LOG_GROUP, cell.name)
        try:
            code = SENDER.format(seconds=seconds, target=TARGET, port=PORT)
            sender = subprocess.Popen(
                ["ip", "netns", "exec", ctr.name, sys.executable, "-I", "-S", "-c", code],
                stdout=subprocess.PIPE,
                text=True,
            )
            while sender.poll() is None:
                select.select([sock.sock], [], [], 0.1)
                flow_log.write(sock.read(), (state, desired), time.time())
            flow_log.write(sock.read(), (state, desired), time.time())
            offered = float(sender.communicate()[0])
        finally:
            sock.close()
            flow_log.close()
    return FlowLogRate(offered, flow_log.lines / seconds, flow_log.lines)
