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

Conntrack is read and changed over ctnetlink (a NETLINK_NETFILTER socket) with pyroute2, a pure
Python wheel the BOSH release vendors like every other dependency: a Diego cell has no `conntrack`
tool, and nothing else to install is needed. The socket is opened on a thread inside the cell's
namespace (nft/netns.py), not through pyroute2's own namespace support, which forks a helper
process. One listing per family per pass; one deletion per entry that lost its allowance.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from cfnft.errors import OperationError
from events.models import CellState, Container
from nft.errors import NamespaceError
from nft.netns import NamespaceThread
from nft.objects import Element, Ruleset
from nft.transaction import Transaction, Verb
from reconciler import provenance
from reconciler.explain import Probe, ProbeProto, explain

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_PROTOCOLS = {socket.IPPROTO_TCP: ProbeProto.TCP, socket.IPPROTO_UDP: ProbeProto.UDP}


class RevokeError(OperationError):
    """Connection tracking could not be listed or changed (no permission, no such namespace)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """The original direction of one tracked connection."""

    proto: ProbeProto
    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int
    zone: int | None = None  # the conntrack zone, when the entry is in one (CF's cells use none)

    def __str__(self) -> str:
        return f"{self.proto} {self.src}:{self.sport} -> {self.dst}:{self.dport}"

    @property
    def target(self) -> tuple[ProbeProto, IPAddress, IPAddress, int]:
        """What the decision depends on (every source port of it shares the fate)."""
        return (self.proto, self.src, self.dst, self.dport)


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


def list_flows() -> list[Flow]:
    """The TCP and UDP entries of this thread's network namespace."""
    flows = []
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            with Conntrack(nfgen_family=family) as ct:
                for entry in ct.dump_entries():
                    flow = _flow(entry.tuple_orig, entry.zone)
                    if flow is not None:
                        flows.append(flow)
    except (NetlinkError, OSError) as e:
        raise RevokeError(f"listing connection tracking: {e}") from None
    return flows


def _flow(orig: NFCTAttrTuple, zone: int | None) -> Flow | None:
    proto = _PROTOCOLS.get(orig.proto)
    if proto is None:
        return None
    src, dst = ipaddress.ip_address(orig.saddr), ipaddress.ip_address(orig.daddr)
    return Flow(proto, src, dst, orig.sport, orig.dport, zone)


def delete_flows(flows: list[Flow]) -> None:
    """Delete the entries of `flows` in this thread's network namespace."""
    for family in (socket.AF_INET, socket.AF_INET6):
        mine = [f for f in flows if (f.src.version == 6) == (family == socket.AF_INET6)]
        if not mine:
            continue
        try:
            with Conntrack(nfgen_family=family) as ct:
                for f in mine:
                    _delete(ct, family, f)
        except (NetlinkError, OSError) as e:
            raise RevokeError(f"deleting connection tracking entries: {e}") from None


def _delete(ct: Conntrack, family: int, f: Flow) -> None:
    number = socket.IPPROTO_TCP if f.proto is ProbeProto.TCP else socket.IPPROTO_UDP
    orig = NFCTAttrTuple(family, saddr=str(f.src), daddr=str(f.dst), proto=number, sport=f.sport, dport=f.dport)
    try:
        ct.entry("del", tuple_orig=orig, zone=f.zone)
    except NetlinkError as e:
        # ENOENT: the connection ended (or its entry expired) meanwhile: nothing left to revoke.
        if e.code != errno.ENOENT:
            raise RevokeError(f"deleting the entry of {f}: {e}") from None


async def revoke_disallowed(state: CellState, ruleset: Ruleset, netns: str | None) -> list[Flow]:
    """Delete the conntrack entries of flows `ruleset` no longer allows (in `netns`); returns them."""
    try:
        worker = NamespaceThread(netns)
    except NamespaceError as e:
        raise RevokeError(str(e)) from None
    try:
        gone = doomed(state, ruleset, await worker.call_async(list_flows))
        if gone:
            await worker.call_async(delete_flows, gone)
    finally:
        worker.close()
    return gone
