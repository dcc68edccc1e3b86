"""The flow log: one JSON line per logged packet, with the rule that decided it.

The table's `log` statements (reconciler/logprefix.py) hand packets to NFLOG; the reconciler
reads them (reconciler/nflog.py) and writes lines in the shape of CF's iptables-logger, so
existing log pipelines keep working:

    {"timestamp": "1733057000.123456000", "source": "cfnetworking.iptables",
     "message": "cfnetworking.iptables.egress-allowed", "log_level": 1,
     "data": {"packet": {"direction", "allowed", "src_ip", "dst_ip", "src_port", "dst_port", "protocol",
                         "mark", "icmp_type", "icmp_code"},
              "source": {"container_id", "app_guid", "space_guid", "organization_guid", "host_ip", "host_guid"},
              "decided_by": {"kind", "reason", "security_group" | "policy" | "network"}}}

`source` is the container of this cell the packet is about (the sender for egress, the receiver
for ingress, as iptables-logger does). `decided_by` is what iptables-logger cannot say: it is
`cfnft explain`'s answer for the packet (reconciler/explain.py) against what the cell committed,
cached per flow until the next commit.

Lines are appended to `file`; `reopen()` (SIGHUP) closes and reopens it, for log rotation that
moves the file away. Which packets are logged, and how many per second, is the table's business
(rules with `log`, `asg_logging`, `c2c_logging`, the denied and accepted-UDP rate limits).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import IO, TYPE_CHECKING, Any

from events.models import CellState, Container
from nft.objects import Ruleset
from reconciler import provenance
from reconciler.config import FlowLogConfig
from reconciler.explain import ExplainInputError, Probe, ProbeProto, explain
from reconciler.logprefix import FLOW_LOG_GROUP, LogPrefix
from reconciler.nflog import LoggedPacket, NflogError, NflogSocket

if TYPE_CHECKING:
    from reconciler.daemon import Reconciler

log = logging.getLogger(__name__)

_PROTOCOLS = {6: ProbeProto.TCP, 17: ProbeProto.UDP, 1: ProbeProto.ICMP, 58: ProbeProto.ICMPV6}
_PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}
CACHE_SIZE = 65536


def _decided_by(
    state: CellState, ruleset: Ruleset, prefix: LogPrefix, p: LoggedPacket, target: Container | None
) -> dict[str, Any]:
    if prefix in (LogPrefix.LIMIT_REJECT, LogPrefix.LIMIT_DRY_RUN):
        dry = " (dry run: let through)" if prefix is LogPrefix.LIMIT_DRY_RUN else ""
        return {"kind": "outbound_connections", "reason": f"over the outbound_connections rate{dry}"}
    if prefix.direction == "ingress":
        policies = [x for x in state.c2c_policies if target is not None and x.destination.id == target.app_guid]
        policy = None
        if p.src.version == 4 and p.protocol in (6, 17):
            sources = provenance.c2c_sources(state)
            policy = provenance.c2c_policy_of(policies, sources, int(p.src), p.protocol, (p.dst_port, p.dst_port))
        if policy is None:
            return {"kind": "c2c_default_deny", "reason": "no c2c policy allows this"}
        policy_json = policy.model_dump(mode="json", exclude_none=True)
        return {"kind": "c2c_policy", "reason": provenance.c2c_policy_text(policy), "policy": policy_json}
    proto = _PROTOCOLS.get(p.protocol)
    if proto is None:
        return {"kind": "unknown", "reason": f"protocol {p.protocol} is not one explain follows"}
    if proto in (ProbeProto.TCP, ProbeProto.UDP):
        probe = Probe(proto, p.dst, port=p.dst_port)
    else:
        probe = Probe(proto, p.dst, icmp_type=p.icmp_type, icmp_code=p.icmp_code)
    try:
        e = explain(state, str(p.src), probe, ruleset=ruleset)
    except ExplainInputError as err:
        return {"kind": "unknown", "reason": str(err)}
    out: dict[str, Any] = {"kind": e.decider.value, "reason": e.reason}
    for key in ("security_group", "policy", "network"):
        if getattr(e, key) is not None:
            out[key] = getattr(e, key)
    return out


def flow_line(
    p: LoggedPacket, prefix: LogPrefix, c: Container | None, decided_by: dict[str, Any], cfg: FlowLogConfig
) -> dict[str, Any]:
    """The iptables-logger record of `p` about container `c` of this cell, plus `decided_by`."""
    verdict = "allowed" if prefix.allowed else "denied"
    return {
        "timestamp": f"{p.timestamp:.9f}" if p.timestamp is not None else None,
        "source": "cfnetworking.iptables",
        "message": f"cfnetworking.iptables.{prefix.direction}-{verdict}",
        "log_level": 1,
        "data": {
            "packet": {
                "direction": prefix.direction,
                "allowed": prefix.allowed,
                "src_ip": str(p.src),
                "dst_ip": str(p.dst),
                "src_port": p.src_port,
                "dst_port": p.dst_port,
                "protocol": _PROTOCOL_NAMES.get(p.protocol, str(p.protocol)),
                "mark": "",
                "icmp_type": p.icmp_type,
                "icmp_code": p.icmp_code,
            },
            "source": {
                "container_id": c.handle if c else "",
                "app_guid": c.app_guid if c else "",
                "space_guid": c.space_guid if c else "",
                "organization_guid": c.org_guid if c else "",
                "host_ip": cfg.host_ip,
                "host_guid": cfg.host_guid,
            },
            "decided_by": decided_by,
        },
    }


class FlowLog:
    """Writes flow-log lines to the configured file; reopened on request (SIGHUP)."""

    def __init__(self, cfg: FlowLogConfig) -> None:
        self.cfg = cfg
        self._file: IO[str] | None = None
        self._reopen = False
        self._cache: dict[tuple[object, ...], dict[str, Any]] = {}
        self._cached_for: object = None
        self._by_address: dict[object, Container] = {}
        self.lines = 0

    def reopen(self) -> None:
        """Close and reopen the file before the next line (safe to call from a signal handler)."""
        self._reopen = True

    def _out(self) -> IO[str]:
        if self._reopen and self._file is not None:
            self._file.close()
            self._file = None
        self._reopen = False
        if self._file is None:
            self.cfg.file.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.cfg.file, "a", encoding="utf-8")  # noqa: SIM115 - kept open across batches
        return self._file

    def write(self, packets: list[LoggedPacket], committed: tuple[CellState, Ruleset] | None, now: float) -> int:
        """Append one line per packet of ours; returns how many. Decisions come from `committed`."""
        if committed is None:
            return 0
        state, ruleset = committed
        if self._cached_for is not committed or len(self._cache) > CACHE_SIZE:
            self._cache, self._cached_for = {}, committed
            self._by_address = {a: c for c in state.containers for a in (c.ip, c.ipv6) if a is not None}
        out = self._out()
        written = 0
        for p in packets:
            try:
                prefix = LogPrefix(p.prefix)
            except ValueError:
                continue  # another tool's log statement on our group: not ours to report
            about = self._by_address.get(p.dst if prefix.direction == "ingress" else p.src)
            key = (prefix, p.src, p.dst, p.protocol, p.dst_port, p.icmp_type, p.icmp_code)
            decided = self._cache.get(key)
            if decided is None:
                decided = self._cache[key] = _decided_by(state, ruleset, prefix, p, about)
            line = flow_line(p, prefix, about, decided, self.cfg)
            if line["timestamp"] is None:
                line["timestamp"] = f"{now:.9f}"  # the kernel stamps only packets that asked for it
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            written += 1
        out.flush()
        self.lines += written
        return written

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def run_flow_log(rec: Reconciler, flow_log: FlowLog, retry_seconds: float = 10.0) -> None:
    """Read the cell's NFLOG group and write the flow log, for as long as the reconciler runs."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            sock = await asyncio.to_thread(NflogSocket.open, FLOW_LOG_GROUP, rec.config.netns)
        except NflogError as e:
            log.error("flow log: cannot read NFLOG group %d (retrying in %.0fs): %s", FLOW_LOG_GROUP, retry_seconds, e)
            await asyncio.sleep(retry_seconds)
            continue
        break
    log.info("flow log: reading NFLOG group %d into %s", FLOW_LOG_GROUP, flow_log.cfg.file)
    arrived = asyncio.Event()
    loop.add_reader(sock.sock.fileno(), arrived.set)
    try:
        while True:
            await arrived.wait()
            arrived.clear()
            packets = sock.read()
            if packets:
                flow_log.write(packets, rec.committed, time.time())
    finally:
        loop.remove_reader(sock.sock.fileno())
        sock.close()
        flow_log.close()
