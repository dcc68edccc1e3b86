"""`cfnft explain --trace`: send the explained packet through the cell's kernel and read its path.

The probe must reach the cell as the container's packets do: from outside, with the container's
source address, so that the forward (or input) hook sees it exactly as it would see the real
thing. A throwaway namespace impersonates the container: a veth into the cell, the container's
address on it, a static neighbour for its default route (so nothing on the cell needs proxy
ARP). A throwaway table `inet cfnft-trace` sets `meta nftrace` on what arrives through that veth,
and `nft monitor trace` in the cell's namespace reports every rule the packet meets.

Only the first packet is sent and traced; answers go to the real container (which ignores or
resets them), never to the probe. Everything created is removed afterwards, also on failure.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

from cfnft.errors import OperationError
from nft.netns import NamespaceThread
from reconciler.explain import Decider, Explanation, Probe, ProbeProto

TRACE_TABLE = "cfnft-trace"
_GATEWAY4, _GATEWAY6 = "169.254.0.1", "fe80::1"
_LINE = re.compile(r"^trace id (?P<id>\S+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<what>.*)$")
_VERDICT = re.compile(r"\(verdict (?P<verdict>[a-z]+)(?: (?P<target>\S+))?\)$")
_FINGERPRINT = re.compile(r'\[([0-9a-f]{8})\]"')
_NAT_CHAINS = {"prerouting", "postrouting"}


class TraceError(OperationError):
    """The trace could not be run (no such namespace, nft refused, no trace event arrived)."""

    def __str__(self) -> str:
        return f"trace: {self.args[0]}"


@dataclass(frozen=True, slots=True)
class Step:
    """One rule (or policy) the traced packet met in table inet cfnft."""

    chain: str
    text: str
    verdict: str
    fingerprint: str | None

    def __str__(self) -> str:
        return f"{self.chain}: {self.text}"


@dataclass(frozen=True, slots=True)
class TraceResult:
    steps: tuple[Step, ...]
    accepted: bool
    agrees: bool
    disagreement: str | None

    def text(self) -> str:
        lines = ["kernel path (nft monitor trace):"]
        lines += [f"  {s}" for s in self.steps]
        lines.append(f"kernel verdict: {'accept' if self.accepted else 'reject/drop'}")
        lines.append("the kernel agrees with the model" if self.agrees else f"DISAGREEMENT: {self.disagreement}")
        return "\n".join(lines)


def _run(argv: list[str], what: str, stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TraceError(f"{what}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def _in(netns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def trace(explanation: Explanation, probe: Probe, cell_netns: str | None, timeout: float = 2.0) -> TraceResult:
    """Send `probe` as the explained container would and compare the kernel's path with `explanation`."""
    tag = secrets.token_hex(3)
    probe_ns, veth = f"cfnft-trace-{tag}", f"cfnfttr{tag}"
    ip_cell = ["ip", "-n", cell_netns] if cell_netns else ["ip"]
    monitor: subprocess.Popen[bytes] | None = None
    table_added = False
    try:
        _run(["ip", "netns", "add", probe_ns], "creating the probe namespace")
        _run([*ip_cell, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", probe_ns], "veth")
        _run([*ip_cell, "link", "set", veth, "up"], "veth up")
        mac = _run([*ip_cell, "-br", "link", "show", veth], "cell side MAC").split()[2]
        src = explanation.source_ip
        v6 = ":" in src
        gateway = _GATEWAY6 if v6 else _GATEWAY4
        batch = [
            "link set lo up",
            "link set eth0 up",
            f"addr add {src}/{128 if v6 else 32} dev eth0" + (" nodad" if v6 else ""),
            f"neigh add {gateway} lladdr {mac} dev eth0 nud permanent",
            f"route add default via {gateway} dev eth0 onlink",
        ]
        _run(["ip", "-n", probe_ns, "-batch", "-"], "configuring the probe namespace", "\n".join(batch) + "\n")
        # Only the probe's own packets: the probe namespace's interface also sends IPv6 ND and MLD.
        rule = f'iifname "{veth}" {"ip6" if v6 else "ip"} saddr {src} meta nftrace set 1'
        _run(
            _in(cell_netns, ["nft", "-f", "-"]),
            "adding the trace table",
            f"table inet {TRACE_TABLE} {{\n chain pre {{\n  type filter hook prerouting priority -350\n"
            f"  {rule}\n }}\n}}\n",
        )
        table_added = True
        monitor = subprocess.Popen(
            _in(cell_netns, ["nft", "monitor", "trace"]), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        lines = _send_and_collect(monitor, probe, probe_ns, timeout)
    finally:
        if monitor is not None:
            monitor.terminate()
            monitor.wait(timeout=5)
        if table_added:
            subprocess.run(_in(cell_netns, ["nft", "delete", "table", "inet", TRACE_TABLE]), capture_output=True)
        subprocess.run(["ip", "netns", "del", probe_ns], capture_output=True)
    return compare(explanation, parse_trace(lines))


def _send_and_collect(monitor: subprocess.Popen[bytes], probe: Probe, probe_ns: str, timeout: float) -> list[str]:
    """Send the probe (again, while the monitor may not be listening yet) until its trace ends."""
    assert monitor.stdout is not None
    fd = monitor.stdout.fileno()  # read raw: a buffered readline would hide lines from select()
    sender = NamespaceThread(probe_ns)
    lines: list[str] = []
    pending = b""
    deadline = time.monotonic() + timeout
    try:
        next_send = 0.0
        first_id = None
        while time.monotonic() < deadline:
            if first_id is None and time.monotonic() >= next_send:
                sender.call(_send, probe)
                next_send = time.monotonic() + 0.2
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace").strip()
                m = _LINE.match(line)
                if m is None or m["id"] != (first_id := first_id or m["id"]):
                    continue
                lines.append(line)
            if any(_decided(m) for m in map(_LINE.match, lines) if m is not None):
                break
            if first_id is not None and not _ready_again(fd, 0.3):
                break  # the packet's trace stopped short of a verdict: the cell did not route it
    finally:
        sender.close()
    if not any(m is not None and (m["family"], m["table"]) == ("inet", "cfnft") for m in map(_LINE.match, lines)):
        raise TraceError(f"no packet seen by table inet cfnft within {timeout}s (is the cell's namespace right?)")
    return lines


def _ready_again(fd: int, seconds: float) -> bool:
    return bool(select.select([fd], [], [], seconds)[0])


def _decided(m: re.Match[str]) -> bool:
    """Whether this trace line ends the packet's way through table inet cfnft's filter chains."""
    if (m["family"], m["table"]) != ("inet", "cfnft") or m["chain"] in _NAT_CHAINS:
        return False
    what = m["what"]
    verdict = _VERDICT.search(what)
    return what.startswith("policy ") or (verdict is not None and verdict["verdict"] in ("accept", "drop"))


def _send(probe: Probe) -> None:
    """One packet of `probe`, from inside the probe namespace (runs on its thread)."""
    family = socket.AF_INET6 if probe.dst.version == 6 else socket.AF_INET
    dst = str(probe.dst)
    if probe.proto is ProbeProto.TCP:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setblocking(False)
            try:
                s.connect((dst, probe.port))
            except BlockingIOError:
                pass  # the SYN is out; its answer goes to the real container
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif probe.proto is ProbeProto.UDP:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.sendto(b"cfnft-trace", (dst, probe.port))
    else:
        proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
        with socket.socket(family, socket.SOCK_RAW, proto) as s:
            # A fresh identifier per send: a resend must be a new flow, not "established" by the last one.
            header = struct.pack("!BBHHH", probe.icmp_type, probe.icmp_code, 0, secrets.randbelow(65536), 1)
            payload = b"cfnft-trace"
            if family == socket.AF_INET:  # the kernel fills in the checksum of ICMPv6 only
                header = header[:2] + struct.pack("!H", _checksum(header + payload)) + header[4:]
            s.sendto(header + payload, (dst, 0))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def parse_trace(lines: list[str]) -> list[Step]:
    """The steps of table inet cfnft in `nft monitor trace` lines of one packet."""
    steps = []
    for line in lines:
        m = _LINE.match(line)
        if m is None or (m["family"], m["table"]) != ("inet", "cfnft"):
            continue
        what = m["what"]
        if what.startswith("rule "):
            v = _VERDICT.search(what)
            if v is None:
                continue
            fp = _FINGERPRINT.search(what)
            text = _VERDICT.sub("", what.removeprefix("rule ")).strip()
            steps.append(Step(m["chain"], text, v["verdict"], fp.group(1) if fp else None))
        elif what.startswith("policy "):
            steps.append(Step(m["chain"], what, what.split()[-1], None))
    return steps


def compare(e: Explanation, steps: list[Step]) -> TraceResult:
    """Does the kernel's path pass through the model's deciding rule, and end the same way?

    A packet that meets no filter chain of ours was not routed by the cell (no route to it):
    that agrees only with a model that says no container is there."""
    filtering = [s for s in steps if s.chain not in _NAT_CHAINS]
    final = next((s for s in filtering if s.verdict in ("accept", "drop")), None)
    if not filtering:
        routed_nowhere = e.decider is Decider.NO_CONTAINER
        problem = None if routed_nowhere else "the cell did not route the packet to any filter chain"
        return TraceResult(tuple(steps), False, problem is None, problem)
    accepted = final is None or final.verdict == "accept"  # no verdict: the base chains' policy accept
    expected = e.allowed if e.enforced_on == "this cell" else True
    met = any(s.chain == e.nft.chain and s.fingerprint == e.nft.fingerprint for s in steps)
    problem = None
    if not met:
        problem = f"the packet never met the model's rule in chain {e.nft.chain} [{e.nft.fingerprint}]"
    elif accepted != expected:
        problem = f"the kernel {'accepted' if accepted else 'rejected'} what the model expects to be " + (
            "accepted" if expected else "rejected"
        )
    return TraceResult(tuple(steps), accepted, problem is None, problem)
