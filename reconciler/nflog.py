"""Reading NFLOG: the packets nft's `log group N` statements hand to user space, over netlink.

Why our own reader (docs/design.md §3.8 has the measurement): the PyPI binding `nflogr` (a C++
extension over libnetfilter_log, "beta" by its author's word) crashed on the packets our rules log;
Debian's ulogd2 with its JSON output read no more lines per second than this module, and is a second
daemon per cell whose lines would have to be parsed again to add the container and the deciding
rule. Both are native code to build and ship on every cell; this is the standard library.

The protocol is small: bind a group, ask for the first bytes of each packet, then read batches
of `NFULNL_MSG_PACKET` messages, each a list of attributes (prefix, payload, timestamp, ...).
The kernel batches up to `QUEUE_THRESHOLD` packets or `FLUSH_CENTISECONDS` per netlink message,
so one `recv` returns many packets.

A socket belongs to the network namespace it is created in: `NflogSocket.open` creates it on a
thread inside the cell's namespace; it is read from anywhere after that. If the socket's buffer
overflows, the kernel drops what does not fit (counted in `dropped` when it tells us: ENOBUFS);
the flow log is best effort by nature, as the kernel log was.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

from cfnft.errors import OperationError
from nft.netns import NamespaceThread

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 3, 4, 5
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULA_PACKET_HDR, NFULA_TIMESTAMP, NFULA_PAYLOAD, NFULA_PREFIX = 1, 3, 9, 10
SOL_NETLINK, NETLINK_NO_ENOBUFS = 270, 5

COPY_RANGE = 96  # an IPv6 header and a TCP/UDP/ICMP header fit
QUEUE_THRESHOLD = 64
FLUSH_CENTISECONDS = 10  # a lone packet waits at most 0.1 s for company
RECEIVE_BUFFER = 8 << 20

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLATTR = struct.Struct("=HH")
_HDR_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class NflogError(OperationError):
    """The kernel refused to bind the group (taken by another listener, no CAP_NET_ADMIN)."""


@dataclass(frozen=True, slots=True)
class LoggedPacket:
    """One logged packet: the rule's prefix and what the first bytes of the packet say."""

    prefix: str
    timestamp: float | None
    protocol: int
    src: IPAddress
    dst: IPAddress
    src_port: int = 0
    dst_port: int = 0
    icmp_type: int = 0
    icmp_code: int = 0


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _config(group: int, family: int, *attrs: bytes) -> bytes:
    body = _NFGENMSG.pack(family, 0, group) + b"".join(attrs)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                            NLM_F_REQUEST | NLM_F_ACK, 0, 0)  # fmt: skip
    return header + body


def _check_ack(data: bytes, what: str) -> None:
    _, kind, _, _, _ = _NLMSGHDR.unpack_from(data)
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", data, _NLMSGHDR.size)
        if code != 0:
            raise NflogError(f"{what}: {errno.errorcode.get(-code, str(-code))} ({-code})")


def parse_packet(attrs: dict[int, bytes]) -> LoggedPacket | None:
    """A logged packet from its NFLOG attributes; None if the payload is no IP packet we read."""
    payload = attrs.get(NFULA_PAYLOAD, b"")
    prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode(errors="replace")
    stamp = attrs.get(NFULA_TIMESTAMP)
    timestamp = None
    src: IPAddress
    dst: IPAddress
    if stamp is not None and len(stamp) >= 16:
        sec, usec = struct.unpack_from("!QQ", stamp)
        timestamp = sec + usec / 1e6
    if len(payload) >= 20 and payload[0] >> 4 == 4:
        header_len = (payload[0] & 0x0F) * 4
        proto = payload[9]
        src, dst = ipaddress.IPv4Address(payload[12:16]), ipaddress.IPv4Address(payload[16:20])
        # Only the first fragment carries the ports.
        l4 = payload[header_len:] if struct.unpack_from("!H", payload, 6)[0] & 0x1FFF == 0 else b""
    elif len(payload) >= 40 and payload[0] >> 4 == 6:
        proto = payload[6]  # extension headers are not followed: their packets show protocol and addresses
        src, dst = ipaddress.IPv6Address(payload[8:24]), ipaddress.IPv6Address(payload[24:40])
        l4 = payload[40:]
    else:
        return None
    packet = LoggedPacket(prefix, timestamp, proto, src, dst)
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4)
        return LoggedPacket(prefix, timestamp, proto, src, dst, src_port=sport, dst_port=dport)
    if proto in (1, 58) and len(l4) >= 2:
        return LoggedPacket(prefix, timestamp, proto, src, dst, icmp_type=l4[0], icmp_code=l4[1])
    return packet


def parse_messages(data: bytes) -> list[LoggedPacket]:
    """Every logged packet in one `recv` worth of netlink messages."""
    out = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        if kind == _HDR_TYPE:
            attrs: dict[int, bytes] = {}
            pos = offset + _NLMSGHDR.size + _NFGENMSG.size
            end = offset + length
            while pos + _NLATTR.size <= end:
                alen, atype = _NLATTR.unpack_from(data, pos)
                if alen < _NLATTR.size:
                    break
                attrs[atype & 0x3FFF] = data[pos + _NLATTR.size : pos + alen]
                pos += (alen + 3) & ~3
            packet = parse_packet(attrs)
            if packet is not None:
                out.append(packet)
        offset += (length + 3) & ~3
    return out


class NflogSocket:
    """A netlink socket bound to one NFLOG group, in the namespace it was opened for."""

    def __init__(self, sock: socket.socket, group: int) -> None:
        self.sock = sock
        self.group = group
        self.dropped = 0

    @classmethod
    def open(cls, group: int, netns: str | None = None) -> NflogSocket:
        """Bind `group` (in named network namespace `netns`, else this one); NflogError if refused."""
        worker = NamespaceThread(netns)
        try:
            sock = worker.call(cls._bind, group)
        finally:
            worker.close()
        return cls(sock, group)

    @staticmethod
    def _bind(group: int) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # SO_RCVBUFFORCE: root may exceed rmem_max
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            for what, message in (
                ("bind", _config(group, socket.AF_UNSPEC, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])))),
                (
                    "configure",
                    _config(
                        group,
                        socket.AF_UNSPEC,
                        _attr(NFULA_CFG_MODE, struct.pack("!IBx", COPY_RANGE, NFULNL_COPY_PACKET)),
                        _attr(NFULA_CFG_QTHRESH, struct.pack("!I", QUEUE_THRESHOLD)),
                        _attr(NFULA_CFG_TIMEOUT, struct.pack("!I", FLUSH_CENTISECONDS)),
                    ),
                ),
            ):
                sock.send(message)
                _check_ack(sock.recv(4096), f"NFLOG group {group}: {what}")
        except (OSError, NflogError) as e:
            sock.close()
            raise NflogError(str(e)) from None
        sock.setblocking(False)
        return sock

    def read(self) -> list[LoggedPacket]:
        """Whatever has arrived, without blocking (empty when nothing has)."""
        out: list[LoggedPacket] = []
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.dropped += 1
                    continue
                raise
            out += parse_messages(data)

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.send(_config(self.group, socket.AF_UNSPEC, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND]))))
        except OSError:
            pass  # closing unbinds anyway
        self.sock.close()
