"""`revoke_established`: a removed allowance reaches the connections already open.

The egress and c2c chains accept established and related traffic before anything else (as CF
does), so a connection opened while a group allowed it outlives the group. With
`revoke_established` on, each pass that may have taken an allowance away (its transaction deletes
or flushes something, or adds to a `deny-*` set) lists the cell's connection tracking, asks the
model (reconciler/explain.py, over the table just committed) whether each flow's first packet
would still pass, and deletes the entries of those that would not. The flow's next packet then
finds no entry, is seen as new (conntrack picks up TCP mid-stream), and is judged, and rejected,
by the new rules.

Flows considered: TCP and UDP from a container of this cell (decided here: not those to another
cell's container, whose cell decides and revokes), and c2c flows into a container of this cell.

Why the `conntrack` CLI (Debian's conntrack package) and not netlink from Python: revocations
are rare (a policy change that takes something away), so a process or two per such pass costs
nothing that matters, and the tool is the reference implementation of ctnetlink's filters; a
netlink client of our own would be a few hundred lines of attribute parsing to own and test.
One listing per pass, and one deletion per (source, destination, protocol, port) that lost its
allowance, whatever the number of source ports.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import subprocess
from dataclasses import dataclass

from cfnft.errors import OperationError
from events.models import CellState, Container
from nft.objects import Element, Ruleset
from nft.transaction import Transaction, Verb
from reconciler import provenance
from reconciler.explain import Probe, ProbeProto, explain

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_ENTRY = re.compile(
    r"^(?P<family>ipv[46])\s+\d+\s+(?P<proto>tcp|udp)\s+\d+\s+\d+\s+(?:[A-Z_]+\s+)?"
    r"src=(?P<src>\S+) dst=(?P<dst>\S+) sport=(?P<sport>\d+) dport=(?P<dport>\d+)"
)


class RevokeError(OperationError):
    """conntrack could not be listed or changed (not installed, no permission)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """The original direction of one tracked connection."""

    proto: ProbeProto
    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int

    @property
    def target(self) -> tuple[ProbeProto, IPAddress, IPAddress, int]:
        """What the decision depends on (every source port of it shares the fate)."""
        return (self.proto, self.src, self.dst, self.dport)


def parse_flows(listing: str) -> list[Flow]:
    """TCP and UDP flows of `conntrack -L -o extended` output."""
    out = []
    for line in listing.splitlines():
        m = _ENTRY.match(line)
        if m is not None:
            src, dst = ipaddress.ip_address(m["src"]), ipaddress.ip_address(m["dst"])
            out.append(Flow(ProbeProto(m["proto"]), src, dst, int(m["sport"]), int(m["dport"])))
    return out


def may_revoke(tx: Transaction) -> bool:
    """Whether `tx` may take an allowance away: it removes or replaces something, or denies more."""
    return any(
        op.verb is not Verb.ADD or (isinstance(op.obj, Element) and op.obj.set.startswith("deny-")) for op in tx.ops
    )


def doomed(state: CellState, ruleset: Ruleset, flows: list[Flow]) -> list[Flow]:
    """The flows the table of `state` (compiled: `ruleset`) would no longer let start."""
    by_address = {a: c for c in state.containers for a in (c.ip, c.ipv6) if a is not None}
    sources = provenance.c2c_sources(state)
    verdicts: dict[tuple[ProbeProto, IPAddress, IPAddress, int], bool] = {}
    out = []
    for flow in flows:
        key = flow.target
        if key not in verdicts:
            verdicts[key] = _allowed(state, ruleset, by_address, sources, flow)
        if not verdicts[key]:
            out.append(flow)
    return out


def _allowed(
    state: CellState,
    ruleset: Ruleset,
    by_address: dict[IPAddress, Container],
    sources: dict[int, set[str]],
    flow: Flow,
) -> bool:
    container = by_address.get(flow.src)
    if container is not None:
        e = explain(state, str(flow.src), Probe(flow.proto, flow.dst, port=flow.dport), ruleset=ruleset)
        return e.allowed or e.enforced_on != "this cell"
    target = by_address.get(flow.dst)
    if target is None:
        return True  # neither end is a container here: not a flow this cell decides
    if flow.src.version != 4:
        return False  # c2c is IPv4 only: the destination's chain rejects it
    policies = [p for p in state.c2c_policies if p.destination.id == target.app_guid]
    number = 6 if flow.proto is ProbeProto.TCP else 17
    return provenance.c2c_policy_of(policies, sources, int(flow.src), number, (flow.dport, flow.dport)) is not None


def _conntrack(netns: str | None, args: list[str]) -> subprocess.CompletedProcess[str]:
    argv = (["ip", "netns", "exec", netns] if netns else []) + ["conntrack", *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RevokeError(f"conntrack {' '.join(args)}: {e}") from None


def list_flows(netns: str | None) -> list[Flow]:
    flows = []
    for family in ("ipv4", "ipv6"):
        proc = _conntrack(netns, ["-L", "-f", family, "-o", "extended"])
        if proc.returncode != 0:
            raise RevokeError(f"conntrack -L -f {family}: {proc.stderr.strip()}")
        flows += parse_flows(proc.stdout)
    return flows


def delete_flows(netns: str | None, proto: ProbeProto, src: IPAddress, dst: IPAddress, dport: int) -> None:
    family = "ipv6" if src.version == 6 else "ipv4"
    args = ["-D", "-f", family, "-p", proto.value, "-s", str(src), "-d", str(dst), "--dport", str(dport)]
    proc = _conntrack(netns, args)
    # Exit 1 with "0 flow entries" when the connection ended meanwhile: nothing left to revoke.
    if proc.returncode != 0 and "0 flow entries" not in proc.stderr:
        raise RevokeError(f"conntrack {' '.join(args)}: {proc.stderr.strip()}")


async def revoke_disallowed(state: CellState, ruleset: Ruleset, netns: str | None) -> list[Flow]:
    """Delete the conntrack entries of flows `ruleset` no longer allows; returns them."""
    flows = await asyncio.to_thread(list_flows, netns)
    gone = doomed(state, ruleset, flows)
    for target in sorted({f.target for f in gone}, key=str):
        await asyncio.to_thread(delete_flows, netns, *target)
    return gone
