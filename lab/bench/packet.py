"""Per-packet cost against the number of rules a container has: is it flat?

A container on a cell sends UDP to an allowed internet address as fast as one process can,
for one second, while the cell's table holds a security group of N rules (N = 10 ... 10,000).
The bench's own table in the cell marks the container's packets `notrack`, so every packet
goes through the whole egress path (dispatch map, deny set, the group's set lookups) instead
of the established-connection shortcut. Forwarding runs in the sender's softirq on the same
CPU, so the forwarding cost shows up in the packets per second the sender achieves; flat cost
means the same rate for every N (ratio to N=10 near 1).
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from dataclasses import dataclass

from events.models import load_cell_state
from lab.netlab import Cell, Container, Lab
from nft import NftRunner, diff
from reconciler.compile import TABLE, compile_ruleset

TARGET, PORT = "192.0.2.99", 9999
SENDER = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload, n, end = b"x" * 64, 0, time.perf_counter() + {seconds}
while time.perf_counter() < end:
    for _ in range(200):
        s.sendto(payload, ("{target}", {port}))
    n += 200
print(n / {seconds})
"""


@dataclass
class PacketRate:
    rules: int
    pps: float  # cfnft's table
    linear_pps: float  # the same rules as one iptables chain, silk-style, the allowing rule last


def _rules(n: int) -> list[dict]:
    base = int(ipaddress.IPv4Address("100.64.0.0"))
    out = [{"protocol": "udp", "destination": TARGET, "ports": str(PORT)}]
    for i in range(n - 1):
        out.append(
            {
                "protocol": "tcp" if i % 3 else "udp",
                "destination": str(ipaddress.IPv4Address(base + 7 * i)),
                "ports": str(1024 + i % 60000),
            }
        )
    return out


def _rate(netns: str, seconds: float, repeat: int) -> float:
    code = SENDER.format(seconds=seconds, target=TARGET, port=PORT)
    rates = []
    for _ in range(repeat):
        out = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-I", "-S", "-c", code],
            capture_output=True,
            text=True,
            check=True,
        )
        rates.append(float(out.stdout))
    return sorted(rates)[len(rates) // 2]


def _silk_chain(container_ip: str, n: int) -> str:
    """silk's netout chain for the same N rules: one iptables rule each, evaluated in order."""
    lines = ["*filter", ":FORWARD ACCEPT [0:0]", ":netout - [0:0]", f"-A FORWARD -s {container_ip}/32 -j netout"]
    for rule in _rules(n)[1:]:
        lines.append(
            f"-A netout -m iprange --dst-range {rule['destination']}-{rule['destination']} -p {rule['protocol']} "
            f"-m {rule['protocol']} --dport {rule['ports']} -j ACCEPT"
        )
    lines += [f"-A netout -d {TARGET}/32 -p udp -m udp --dport {PORT} -j ACCEPT", "-A netout -j REJECT", "COMMIT", ""]
    return "\n".join(lines)


def bench_table(hook: str, rule: str) -> str:
    """The bench's own table (never ours, never the host's): one base chain with one rule."""
    return f"table inet cfnft-bench {{\n  chain bench {{\n    type {hook};\n    {rule}\n  }}\n}}\n"


def sender_cell(lab: Lab) -> tuple[Cell, Container]:
    """Cell "a" and its container "sender", whose UDP to TARGET:PORT the internet drops and the cell
    does not track (every packet takes the whole egress path, as a new flow)."""
    cell = lab.add_cell("a")
    internet = lab.add_internet(tcp_ports=(), udp_ports=())
    ctr = cell.add_container("sender")
    internet.run(
        ["nft", "-f", "-"], input=bench_table("filter hook input priority 0", f"udp dport {PORT} counter drop")
    )
    cell.run(
        ["nft", "-f", "-"], input=bench_table("filter hook prerouting priority -300", f"ip saddr {ctr.ip} notrack")
    )
    return cell, ctr


def per_packet(
    sizes: tuple[int, ...] = (10, 100, 1000, 10000), seconds: float = 1.0, repeat: int = 3
) -> list[PacketRate]:
    results: list[tuple[int, float]] = []
    with Lab(ipv6=False) as lab:
        cell, ctr = sender_cell(lab)
        with NftRunner(netns=cell.name) as runner:
            for n in sizes:
                doc = {
                    "cell_id": "a",
                    "containers": [
                        {
                            "handle": "sender",
                            "ip": str(ctr.ip),
                            "app_guid": "app",
                            "space_guid": "space",
                            "workload": "app",
                        }
                    ],
                    "security_groups": [
                        {
                            "guid": "g",
                            "name": "bench",
                            "rules": _rules(n),
                            "globally_enabled": {"running": True, "staging": False},
                        }
                    ],
                    "config": {"masquerade": False},
                }
                runner.apply(diff(compile_ruleset(load_cell_state(doc)), runner.read(TABLE)))
                ours = _rate(ctr.name, seconds, repeat)
                results.append((n, ours))
            cell.run(["nft", "delete", "table", "inet", "cfnft"])
        linear = []
        for n, ours in results:
            cell.run(["iptables-restore"], input=_silk_chain(str(ctr.ip), n))
            linear.append(PacketRate(n, ours, _rate(ctr.name, seconds, repeat)))
    return linear
