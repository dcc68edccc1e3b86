"""`revoke_established`: a long-lived TCP connection through a security group stops passing within a
second of the group's removal when the option is on, and keeps passing when it is off (CF's way).

A real reconciler (NATS, the kernel of a lab cell) enforces what `cfnft publish` puts on the stream;
an echo server in the internet and a client in the container exchange a byte every 50 ms over one
connection, and the client reports each exchange with its time."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import pytest

from tests import test_reconciler
from tests.test_reconciler import eventually, publish, running_reconciler

cell_lab = test_reconciler.cell_lab  # the fixture: one cell, web0 and api0

PORT = 7777
SERVER = f"""
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", {PORT})); s.listen()
print("ready", flush=True)
def echo(c):
    while (data := c.recv(64)):
        c.sendall(data)
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""
CLIENT = f"""
import socket, sys, time
c = socket.create_connection(("192.0.2.10", {PORT}), timeout=2)
c.settimeout(0.1)
print("connected", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        c.sendall(b"x")
        ok = c.recv(64) == b"x"
    except OSError:
        ok = False
    print(("ok " if ok else "fail ") + repr(time.time()), flush=True)
    time.sleep(0.05)
"""


def doc(ctrs, groups, revoke):
    return {
        "cell_id": "a",
        "containers": [
            {"handle": name, "ip": str(c.ip), "app_guid": app, "space_guid": "s", "workload": "app"}
            for name, (c, app) in ctrs.items()
        ],
        "security_groups": groups,
        "config": {"revoke_established": revoke},
    }


GROUP = {
    "guid": "echo",
    "name": "echo",
    "rules": [{"protocol": "tcp", "destination": "192.0.2.10", "ports": str(PORT)}],
    "globally_enabled": {"running": True},
}


@pytest.mark.parametrize("revoke", [True, False], ids=["revoke_established", "cf-default"])
async def test_removing_a_group_ends_its_open_connections_only_with_revoke_established(
    nats_server, cell_lab, tmp_path, revoke
):
    lab, cell, ctrs = cell_lab
    web = ctrs["web0"][0]
    await publish(nats_server.url, doc(ctrs, [GROUP], revoke))
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.internet.name, sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True
    )
    client = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        async with running_reconciler(nats_server.url, cell, tmp_path) as rec:
            await eventually(lambda: rec.ready, what="in sync")
            client = subprocess.Popen(
                ["ip", "netns", "exec", web.name, sys.executable, "-c", CLIENT, "3"], stdout=subprocess.PIPE, text=True
            )
            assert client.stdout is not None and client.stdout.readline().strip() == "connected"
            await asyncio.sleep(0.5)
            removed_at = time.time()
            await publish(nats_server.url, doc(ctrs, [], revoke), prune=True)
            await eventually(
                lambda: rec.committed is not None and "sg-echo-ports4" not in rec.committed[1].sets,
                what="the group's removal committed",
            )
            out, _ = await asyncio.to_thread(client.communicate)
            revoked = rec.metrics.registry.get_sample_value("cfnft_revoked_connections_total")
        lines = [(kind, float(t)) for kind, t in (line.split() for line in out.splitlines())]
        before = [kind for kind, t in lines if t < removed_at]
        late = [kind for kind, t in lines if t > removed_at + 1.0]
        assert before and set(before) == {"ok"}, lines
        assert late, "the client ran for more than a second after the removal"
        if revoke:
            assert set(late) == {"fail"}, f"still passing a second after the group's removal: {lines}"
            assert revoked == 1
        else:
            assert set(late) == {"ok"}, f"CF's default keeps established connections: {lines}"
            assert revoked == 0
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _track(family, proto, src, dst, sport, dport):
    """Add a conntrack entry (as the kernel would for a connection's first packet) in this thread's namespace."""
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    orig = NFCTAttrTuple(family, saddr=src, daddr=dst, proto=proto, sport=sport, dport=dport)
    reply = orig.reverse()
    if proto == socket.IPPROTO_ICMP:  # an echo request, answered by an echo reply
        orig = NFCTAttrTuple(family, saddr=src, daddr=dst, proto=proto, icmp_id=7, icmp_type=8, icmp_code=0)
        reply = NFCTAttrTuple(family, saddr=dst, daddr=src, proto=proto, icmp_id=7, icmp_type=0, icmp_code=0)
    with Conntrack(nfgen_family=family) as ct:
        ct.entry("add", timeout=300, tuple_orig=orig, tuple_reply=reply)


def _tracked():
    from pyroute2 import Conntrack

    count = 0
    for family in (socket.AF_INET, socket.AF_INET6):
        with Conntrack(nfgen_family=family) as ct:
            count += sum(1 for _ in ct.dump_entries())
    return count


@pytest.mark.kernel
def test_connection_tracking_is_listed_and_deleted_over_netlink_inside_the_namespace(netns):
    from nft.netns import NamespaceThread
    from reconciler.revoke import delete_flows, list_flows

    entries = [
        (socket.AF_INET, socket.IPPROTO_TCP, "10.255.1.2", "192.0.2.10", 40000, 7777),
        (socket.AF_INET, socket.IPPROTO_UDP, "10.255.1.2", "198.51.100.53", 5353, 53),
        (socket.AF_INET6, socket.IPPROTO_TCP, "fd00:255:1::2", "2001:db8::1", 1, 443),
    ]
    worker = NamespaceThread(netns)
    try:
        for entry in entries:
            worker.call(_track, *entry)
        # An ICMP entry is tracked too, and is not a flow revocation considers.
        worker.call(_track, socket.AF_INET, socket.IPPROTO_ICMP, "10.255.1.2", "203.0.113.1", None, None)
        assert worker.call(_tracked) == 4
        flows = worker.call(list_flows)
        assert sorted(str(f) for f in flows) == [
            "tcp 10.255.1.2:40000 -> 192.0.2.10:7777",
            "tcp fd00:255:1::2:1 -> 2001:db8::1:443",
            "udp 10.255.1.2:5353 -> 198.51.100.53:53",
        ]
        assert worker.call(list_flows) == flows  # listing changes nothing
        doomed = [f for f in flows if f.dport in (7777, 443)]
        worker.call(delete_flows, doomed)
        assert [str(f) for f in worker.call(list_flows)] == ["udp 10.255.1.2:5353 -> 198.51.100.53:53"]
        worker.call(delete_flows, doomed)  # ended meanwhile: nothing left to delete, and no error
    finally:
        worker.close()
    # The host's namespace was never touched.
    assert not {str(f) for f in flows} & {str(f) for f in list_flows()}


async def test_an_unknown_namespace_is_a_revoke_error():
    from events.models import CellState
    from reconciler.compile import compile_ruleset
    from reconciler.revoke import RevokeError, revoke_disallowed

    state = CellState(cell_id="a", containers=[])
    with pytest.raises(RevokeError, match="no-such-cell"):
        await revoke_disallowed(state, compile_ruleset(state), "no-such-cell")
