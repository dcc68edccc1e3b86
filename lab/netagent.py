"""The half of the network lab that runs *inside* a namespace: listeners and probes.

`netlab` starts this file as a script with `ip netns exec <ns> python -I -S netagent.py ...`, so it
imports only the standard library and nothing of its own package:

    netagent.py serve --label internet --tcp 80,443 --udp 53
        Binds every port on 0.0.0.0 and ::, prints "ready" once all are bound, then serves until its
        stdin closes (so it dies with the lab that started it) or it gets SIGTERM. TCP: accepts and
        sends one line "<label> tcp/<port>", then closes. UDP: echoes each datagram prefixed with
        "<label> udp/<port> ". ICMP echo is answered by the kernel, nothing to serve.

    netagent.py probe < {"targets": [["tcp", "192.0.2.1", 80], ["icmp", "2001:db8::1", null]], "timeout": 0.5}
        Probes all targets concurrently and prints one JSON list of [outcome, detail] in target order.

How a probe reads the network (sockets carry IP_RECVERR, so an ICMP error arrives with its type,
code and sender; that is what separates a firewall's reject from the target's own answer):

    OPEN      TCP handshake completed / UDP echo came back / ICMP echo reply came back.
    REFUSED   The target itself said "nothing here": a TCP RST (a closed port, or nft
              `reject with tcp reset`, which forges the RST in the target's name), or for UDP an
              ICMP port-unreachable sent by the target address.
    REJECTED  An ICMP error came back from anyone else, or of another kind: nft `reject` on the
              path (ICMP port-unreachable or admin-prohibited from the firewall's address), no route
              on a router, or any ICMP error to a TCP SYN or an echo request.
    TIMEOUT   Nothing came back within the timeout: nft `drop` (or a black hole).

A UDP reject by a firewall running *on the target host itself* answers from the target's address
with port-unreachable and so reads as REFUSED; probe a port that has a listener when the
difference matters.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

# Not exported by Python's socket module; values from <linux/in.h> and <linux/in6.h>.
IP_RECVERR = 11
IPV6_RECVERR = 25
IP_PKTINFO = 8
# <linux/errqueue.h>: who generated a queued error.
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data
_IN_PKTINFO = struct.Struct("=I4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr

READY_LINE = "ready"


class Proto(StrEnum):
    """What a probe sends."""

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


class Outcome(StrEnum):
    """How a probe ended; see the module docstring for what produces each."""

    OPEN = "open"
    REFUSED = "refused"
    REJECTED = "rejected"
    TIMEOUT = "timeout"


class Verdict(NamedTuple):
    """One probe's outcome plus a human-readable detail (banner, ICMP type/code and sender, errno)."""

    outcome: Outcome
    detail: str


@dataclass(frozen=True, slots=True)
class IcmpError:
    """An ICMP error the kernel queued on a socket (IP_RECVERR), with the address that sent it."""

    family: int
    icmp_type: int
    icmp_code: int
    sender: str

    @property
    def port_unreachable(self) -> bool:
        if self.family == socket.AF_INET6:
            return (self.icmp_type, self.icmp_code) == (1, 4)
        return (self.icmp_type, self.icmp_code) == (3, 3)

    def __str__(self) -> str:
        kind = "icmpv6" if self.family == socket.AF_INET6 else "icmp"
        return f"{kind} type {self.icmp_type} code {self.icmp_code} from {self.sender}"


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _enable_recverr(sock: socket.socket, family: int) -> None:
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)


def _queued_icmp_error(sock: socket.socket, family: int) -> IcmpError | None:
    """Pop the ICMP error the kernel queued for this socket, if any; never blocks."""
    sock.setblocking(False)
    try:
        _, ancdata, _, _ = sock.recvmsg(0, 512, socket.MSG_ERRQUEUE)
    except OSError:
        return None
    for _level, _type, data in ancdata:
        if len(data) < _EXTENDED_ERR.size:
            continue
        _errno, origin, icmp_type, icmp_code, _pad, _info, _data = _EXTENDED_ERR.unpack_from(data)
        if origin not in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
            continue
        # SO_EE_OFFENDER: a sockaddr right after the struct.
        offender = data[_EXTENDED_ERR.size :]
        if family == socket.AF_INET6:
            sender = socket.inet_ntop(socket.AF_INET6, offender[8:24])
        else:
            sender = socket.inet_ntop(socket.AF_INET, offender[4:8])
        return IcmpError(family, icmp_type, icmp_code, sender)
    return None


def _same_address(a: str, b: str) -> bool:
    family = _family(a)
    return family == _family(b) and socket.inet_pton(family, a) == socket.inet_pton(family, b)


def probe_tcp(ip: str, port: int, timeout: float) -> Verdict:
    """Connect; a completed handshake is OPEN (the listener's banner, if it sent one, is the detail)."""
    family = _family(ip)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        _enable_recverr(sock, family)
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
        except TimeoutError:
            return Verdict(Outcome.TIMEOUT, f"no answer within {timeout}s")
        except OSError as exc:
            icmp = _queued_icmp_error(sock, family)
            if icmp is not None:
                return Verdict(Outcome.REJECTED, str(icmp))
            if isinstance(exc, ConnectionRefusedError):
                return Verdict(Outcome.REFUSED, "tcp reset")
            return Verdict(Outcome.REJECTED, f"local error: {exc.strerror}")
        try:
            banner = sock.recv(256).decode(errors="replace").strip()
        except OSError:
            banner = ""
        return Verdict(Outcome.OPEN, banner or "connected")


def _wait_reply(
    sock: socket.socket, family: int, target: str, timeout: float, expect: bytes, describe: Callable[[bytes], str]
) -> Verdict:
    """Read until a datagram containing `expect` arrives, an ICMP error is reported, or time runs out."""
    sock.settimeout(timeout)
    while True:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return Verdict(Outcome.TIMEOUT, f"no answer within {timeout}s")
        except OSError as exc:
            icmp = _queued_icmp_error(sock, family)
            if icmp is None:
                return Verdict(Outcome.REJECTED, f"local error: {exc.strerror}")
            if icmp.port_unreachable and _same_address(icmp.sender, target):
                return Verdict(Outcome.REFUSED, str(icmp))
            return Verdict(Outcome.REJECTED, str(icmp))
        if expect in data:
            return Verdict(Outcome.OPEN, describe(data))


def probe_udp(ip: str, port: int, timeout: float) -> Verdict:
    """Send one datagram with a nonce; OPEN when an echo carrying the nonce comes back."""
    family = _family(ip)
    nonce = b"cfnft-probe-" + os.urandom(6).hex().encode()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        _enable_recverr(sock, family)
        sock.connect((ip, port))
        sock.send(nonce)
        return _wait_reply(
            sock, family, ip, timeout, nonce, lambda data: data.replace(nonce, b"").decode(errors="replace").strip()
        )


def probe_icmp(ip: str, timeout: float) -> Verdict:
    """One echo request over a ping socket (needs net.ipv4.ping_group_range to include our gid)."""
    family = _family(ip)
    proto, echo_request = (socket.IPPROTO_ICMPV6, 128) if family == socket.AF_INET6 else (socket.IPPROTO_ICMP, 8)
    nonce = b"cfnft-probe-" + os.urandom(6).hex().encode()
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    except PermissionError:
        return Verdict(Outcome.REJECTED, "ping sockets not allowed here: set net.ipv4.ping_group_range")
    with sock:
        _enable_recverr(sock, family)
        sock.connect((ip, 0))
        # The kernel fills in the identifier and checksum of a ping socket's echo request.
        sock.send(struct.pack("!BBHHH", echo_request, 0, 0, 0, 1) + nonce)
        return _wait_reply(sock, family, ip, timeout, nonce, lambda _: f"echo reply from {ip}")


def probe(proto: Proto, ip: str, port: int | None, timeout: float) -> Verdict:
    """Run one probe; `port` is ignored for ICMP."""
    if proto is Proto.ICMP:
        return probe_icmp(ip, timeout)
    if port is None:
        raise ValueError(f"{proto} probe of {ip} needs a port")
    if proto is Proto.TCP:
        return probe_tcp(ip, port, timeout)
    return probe_udp(ip, port, timeout)


def run_probes(targets: list[tuple[Proto, str, int | None]], timeout: float) -> list[Verdict]:
    """Probe all targets at once (one thread each, bounded) and return verdicts in target order."""
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(len(targets), 128)) as pool:
        return list(pool.map(lambda t: probe(t[0], t[1], t[2], timeout), targets))


def _bind(family: int, kind: int, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if kind == socket.SOCK_DGRAM:
        # The internet answers for whole ranges it has no address in (a local route); replies must
        # leave from the address the request went to, or the prober's connected socket ignores them.
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    sock.setblocking(False)
    return sock


def _echo(sock: socket.socket, prefix: bytes) -> None:
    """Answer one datagram from the address it was sent to."""
    data, ancdata, _flags, peer = sock.recvmsg(4096, 256)
    source = []
    for level, kind, cdata in ancdata:
        if (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO):
            _ifindex, _spec_dst, dst = _IN_PKTINFO.unpack_from(cdata)
            source.append((level, kind, _IN_PKTINFO.pack(0, dst, bytes(4))))
        elif (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO):
            source.append((level, kind, cdata[:16] + bytes(4)))  # in6_pktinfo: address, ifindex 0 (any)
    sock.sendmsg([prefix + data], source, 0, peer)


def serve(label: str, tcp_ports: list[int], udp_ports: list[int]) -> None:
    """Serve every port from one selector loop until stdin reaches EOF."""
    selector = selectors.DefaultSelector()
    for family in (socket.AF_INET, socket.AF_INET6):
        for port in tcp_ports:
            selector.register(_bind(family, socket.SOCK_STREAM, port), selectors.EVENT_READ, ("tcp", port))
        for port in udp_ports:
            selector.register(_bind(family, socket.SOCK_DGRAM, port), selectors.EVENT_READ, ("udp", port))
    selector.register(sys.stdin, selectors.EVENT_READ, ("stdin", 0))
    print(READY_LINE, flush=True)
    while True:
        for key, _ in selector.select():
            kind, port = key.data
            if kind == "stdin":
                if not sys.stdin.readline():
                    return
                continue
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                if kind == "tcp":
                    conn, _ = sock.accept()
                    with conn:
                        conn.settimeout(1.0)
                        conn.sendall(f"{label} tcp/{port}\n".encode())
                else:
                    _echo(sock, f"{label} udp/{port} ".encode())
            except OSError:
                # A peer that vanished mid-exchange is the prober's problem, not the listener's.
                continue


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netagent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve")
    serve_cmd.add_argument("--label", required=True)
    serve_cmd.add_argument("--tcp", type=_ports, default=[])
    serve_cmd.add_argument("--udp", type=_ports, default=[])
    sub.add_parser("probe")
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            serve(args.label, args.tcp, args.udp)
        except OSError as exc:
            print(f"netagent serve: {exc}", file=sys.stderr)
            return 1
        return 0
    request = json.load(sys.stdin)
    targets = [(Proto(p), ip, port) for p, ip, port in request["targets"]]
    verdicts = run_probes(targets, float(request["timeout"]))
    json.dump([[v.outcome.value, v.detail] for v in verdicts], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
