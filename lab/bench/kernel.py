"""Benchmarks against the kernel: each measurement in a fresh network namespace of its own.

Cold apply compares three ways of loading the same policy into an empty namespace, side by
side in one run:
  cfnft      diff(desired, kernel) + render + one libnftables transaction (what `cfnft apply` does)
  nft -f     the `nft` binary loading the identical rendered ruleset from a file
  iptables   `iptables-restore` of silk's equivalent: a netout chain per container with one rule
             per destination range x port range (docs/cf-facts.md §2.5), plus the c2c ACCEPTs
"""

from __future__ import annotations

import contextlib
import secrets
import statistics
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

from events.models import CellState, Protocol
from nft import NftRunner, diff, render_ruleset
from reconciler.compile import TABLE, Compiler, applicable, bundle_of


@contextlib.contextmanager
def namespace(role: str) -> Iterator[str]:
    name = f"cfnft-bench-{secrets.token_hex(3)}-{role}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@dataclass
class ColdResult:
    compile_s: float
    cfnft_s: float
    nft_f_s: float
    iptables_s: float | None
    iptables_rules: int
    chains: int
    rules: int
    elements: int


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cold_apply(state: CellState, repeat: int = 3, with_iptables: bool = True) -> ColdResult:
    compile_s = statistics.median(_timed(lambda: Compiler().compile(state)) for _ in range(repeat))
    desired = Compiler().compile(state)
    text = render_ruleset(desired)
    ipt = silk_iptables(state) if with_iptables else ""

    def ours() -> float:
        with namespace("cfnft") as ns, NftRunner(netns=ns) as runner:
            return _timed(lambda: runner.apply(diff(desired, runner.read(TABLE))))

    def raw() -> float:
        with namespace("nft") as ns, tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
            f.write(text)
            f.flush()
            return _timed(lambda: subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", f.name], check=True))

    def iptables() -> float:
        with namespace("ipt") as ns:
            return _timed(
                lambda: subprocess.run(
                    ["ip", "netns", "exec", ns, "iptables-restore"], input=ipt, text=True, check=True
                )
            )

    cfnft_s = statistics.median(ours() for _ in range(repeat))
    nft_f_s = statistics.median(raw() for _ in range(repeat))
    ipt_s = statistics.median(iptables() for _ in range(max(1, repeat // 2))) if with_iptables else None
    chains, rules, elements = desired.counts()
    return ColdResult(compile_s, cfnft_s, nft_f_s, ipt_s, ipt.count("\n-A "), chains, rules, elements)


def silk_iptables(state: CellState) -> str:
    """silk's filter rules for this cell, as one iptables-restore input (docs/cf-facts.md §2.5, §6.4)."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    body: list[str] = []
    by_app_policies: dict[str, list] = {}
    for p in state.c2c_policies:
        by_app_policies.setdefault(p.destination.id, []).append(p)
    for i, c in enumerate(state.containers):
        bundle = bundle_of(state, applicable(state, i, c))
        netout = f"netout--{c.handle}"[:28]
        overlay = f"overlay--{c.handle}"[:28]
        lines += [f":{netout} - [0:0]", f":{overlay} - [0:0]"]
        body.append(f"-A FORWARD -s {c.ip}/32 -o eth0 -j {netout}")
        body.append(f"-A FORWARD -j {overlay}")
        chain = [
            f"-A {netout} -m state --state RELATED,ESTABLISHED -j ACCEPT",
            f"-A {netout} -p tcp -m state --state INVALID -j DROP",
        ]
        for net in state.config.deny_networks.for_workload(c.workload):
            if net.version == 4:
                chain.append(f"-A {netout} -d {net} -j REJECT --reject-with icmp-port-unreachable")
        for rule in {r for src in bundle.sources for r in src.rules}:
            for version, start, end in rule.destinations:
                if version != 4:
                    continue
                dst = f"-m iprange --dst-range {IPv4Address(start)}-{IPv4Address(end)}"
                if rule.protocol in (Protocol.TCP, Protocol.UDP):
                    for lo, hi in rule.ports:
                        chain.append(
                            f"-A {netout} {dst} -p {rule.protocol.value} -m {rule.protocol.value} "
                            f"--destination-port {lo}:{hi} -j ACCEPT"
                        )
                elif rule.protocol == Protocol.ICMP:
                    t = 255 if rule.icmp_type in (None, -1) else rule.icmp_type
                    code = 255 if rule.icmp_code in (None, -1) else rule.icmp_code
                    chain.append(f"-A {netout} {dst} -p icmp -m icmp --icmp-type {t}/{code} -j ACCEPT")
                elif rule.protocol == Protocol.ALL:
                    chain.append(f"-A {netout} {dst} -j ACCEPT")
        chain.append(f"-A {netout} -j REJECT --reject-with icmp-port-unreachable")
        body += chain
        body.append(f"-A {overlay} -d {c.ip}/32 -m state --state RELATED,ESTABLISHED -j ACCEPT")
        for p in by_app_policies.get(c.app_guid, []):
            body.append(
                f"-A {overlay} -d {c.ip}/32 -p {p.destination.protocol} --dport "
                f"{p.destination.ports.start}:{p.destination.ports.end} -m mark --mark 0x{_tag(p.source.id)} "
                f"-j ACCEPT"
            )
        body.append(f"-A {overlay} -d {c.ip}/32 -j REJECT --reject-with icmp-port-unreachable")
    return "\n".join(lines + body + ["COMMIT", ""])


def _tag(app_guid: str) -> str:
    """A stand-in for the policy server's per-app tag (any 16-bit value does for timing)."""
    return f"{zlib.crc32(app_guid.encode()) & 0xFFFF:04X}"
