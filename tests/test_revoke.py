"""`revoke_established`: a long-lived TCP connection through a security group stops passing within a
second of the group's removal when the option is on, and keeps passing when it is off (CF's way).

A real reconciler (NATS, the kernel of a lab cell) enforces what `cfnft publish` puts on the stream;
an echo server in the internet and a client in the container exchange a byte every 50 ms over one
connection, and the client reports each exchange with its time."""

from __future__ import annotations

import asyncio
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


def test_conntrack_listing_is_read_as_flows():
    from reconciler.revoke import parse_flows

    listing = (
        "ipv4     2 tcp      6 431999 ESTABLISHED src=10.255.1.2 dst=192.0.2.10 sport=40000 dport=7777 "
        "src=192.0.2.10 dst=100.64.1.1 sport=7777 dport=40000 [ASSURED] mark=0 use=1\n"
        "ipv4     2 udp      17 29 src=10.255.1.2 dst=198.51.100.53 sport=5353 dport=53 [UNREPLIED] "
        "src=198.51.100.53 dst=100.64.1.1 sport=53 dport=5353 mark=0 use=1\n"
        "ipv6     10 tcp      6 119 SYN_SENT src=fd00:255:1::2 dst=2001:db8::1 sport=1 dport=443 "
        "[UNREPLIED] src=2001:db8::1 dst=fd00:255:1::2 sport=443 dport=1 mark=0 use=1\n"
        "ipv4     2 icmp     1 29 src=10.255.1.2 dst=203.0.113.1 type=8 code=0 id=7 src=203.0.113.1 dst=10.255.1.2\n"
    )
    assert [(f.proto.value, str(f.src), str(f.dst), f.sport, f.dport) for f in parse_flows(listing)] == [
        ("tcp", "10.255.1.2", "192.0.2.10", 40000, 7777),
        ("udp", "10.255.1.2", "198.51.100.53", 5353, 53),
        ("tcp", "fd00:255:1::2", "2001:db8::1", 1, 443),
    ]
