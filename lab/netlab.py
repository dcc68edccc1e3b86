"""A throwaway foundation in network namespaces: cells, containers, an internet, real packets.

The topology is docs/design.md §4, built with iproute2 and the real CNI reference plugins:

    container ns ──ptp veth──┐                       ┌── internet ns (owns 192.0.2.0/24, 198.51.100.0/24,
    container ns ──ptp veth──┤ cell "a" ns ──uplink──┤    203.0.113.0/24, 2001:db8::/32 on lo; TCP/UDP
                             │   (ip_forward=1)      │    listeners; the kernel answers ICMP echo)
                             │      │ underlay       │
    container ns ──ptp veth──┘ cell "b" ns ──uplink──┘

* A **cell** is a router namespace: forwarding on, where the nft table under test lives.
* A **container** is attached exactly as a CNI runtime (Garden) would: `/usr/lib/cni/ptp` with
  `host-local` IPAM, run inside the cell namespace so the host end of the veth lands there, config
  on stdin and CNI_* in the environment. That gives silk's shape: a /32 route per container on the
  cell, and a default route in the container via the cell. The ADD result is kept for DEL.
* The **internet** routes each cell's overlay back to that cell (no NAT), and answers on every
  address of the documentation ranges. Use only those ranges as outside destinations. For IPv6
  prefer 2001:db8::1 to 2001:db8::ff: only there does a closed UDP port read as REFUSED (see
  `INTERNET_HOSTS6`); elsewhere in 2001:db8::/32 it reads as REJECTED.
* Cells are meshed by a routed **underlay** (a veth per pair of cells, routes for each other's overlay).

Addresses (cell index i = 1, 2, ... in order of creation): overlay 10.255.i.0/24 and
fd00:255:i::/64, container gateway 10.255.i.1, cell uplink (its "host IP") 100.64.i.1 /
fd00:64:i::1 facing the internet at 100.64.i.2 / fd00:64:i::2, underlay 100.65.k.0/24 per pair.

Everything lives in namespaces named `cfnft-<lab id>-<role>`; nothing touches the host's own
interfaces, routes or ruleset. A `Lab` is a context manager that tears down processes, namespaces and
its temp dir (host-local's state included) also when the body raises; `sweep_stale_labs()` removes
what a killed process left behind. Probes (`tcp`, `udp`, `icmp`, `probe_many`) run a helper inside
the namespace; `netagent`'s docstring explains how an outcome maps to what the firewall did.

This module has no pytest in it so that `cfnft demo` can use it as is.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from cfnft.errors import OperationError

from .netagent import READY_LINE, Outcome, Proto

__all__ = [
    "DOCUMENTATION_NETWORKS",
    "OVERLAY_NETWORK",
    "Cell",
    "Container",
    "Internet",
    "Lab",
    "LabError",
    "Listener",
    "Netns",
    "Outcome",
    "ProbeResult",
    "Proto",
    "Target",
    "assert_reachability",
    "icmp",
    "missing_prerequisites",
    "probe_many",
    "sweep_stale_labs",
    "tcp",
    "udp",
]

CNI_BIN_DIR = Path("/usr/lib/cni")
NETNS_DIR = Path("/run/netns")
# One file per live lab, holding its owner's pid: how a sweep tells a crashed lab from a running one
# (other test sessions may run labs on the same machine at the same time).
REGISTRY_DIR = Path("/run/cfnft-netlab")
NAME_PREFIX = "cfnft-"
_LAB_NS = re.compile(r"^cfnft-([0-9a-f]{6})-")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")

OVERLAY_NETWORK = ipaddress.IPv4Network("10.255.0.0/16")
OVERLAY_NETWORK6 = ipaddress.IPv6Network("fd00:255::/32")
DOCUMENTATION_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.IPv4Network("192.0.2.0/24"),
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("203.0.113.0/24"),
    ipaddress.IPv6Network("2001:db8::/32"),
)
INTERNET_HOSTS6 = tuple(ipaddress.IPv6Address("2001:db8::") + n for n in range(1, 256))
INTERNET_TCP_PORTS = (80, 443, 8080)
INTERNET_UDP_PORTS = (53, 123)
DEFAULT_TIMEOUT = 0.5

# Every lab namespace: let root open ping sockets, and rate-limit no ICMP type at all (an empty
# ratemask lifts both the per-destination limit and the per-namespace token bucket, which spends a
# random 0-2 credits per error): a test that expects 100 rejects at once must see 100 ICMP errors,
# not 50 and then "timeouts". No DAD, so IPv6 addresses work the moment they are added.
_COMMON_SYSCTLS = (
    "net.ipv4.ping_group_range=0 2147483647",
    "net.ipv4.icmp_ratemask=0",
    "net.ipv6.icmp.ratemask=",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
)
_ROUTER_SYSCTLS = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


class LabError(OperationError):
    """Building, using or tearing down the lab failed; the message names the step and the namespace."""


def _run(argv: Sequence[str], *, input: str | None = None, env: Mapping[str, str] | None = None, what: str) -> str:
    proc = subprocess.run(list(argv), input=input, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}")[-2000:]
        raise LabError(f"{what}: {' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''}: {detail}")
    return proc.stdout


def missing_prerequisites() -> list[str]:
    """What this machine lacks for a lab (empty when a lab can be built); each entry says how to get it."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces need it)")
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("sysctl", "procps")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    for plugin in ("ptp", "host-local"):
        if not os.access(CNI_BIN_DIR / plugin, os.X_OK):
            missing.append(f"{CNI_BIN_DIR / plugin} (apt-get install containernetworking-plugins)")
    return missing


@dataclass(frozen=True, slots=True)
class Target:
    """Something to probe: a protocol, an address and (for TCP/UDP) a port."""

    proto: Proto
    ip: str
    port: int | None = None

    @classmethod
    def of(cls, value: Target | tuple[str, Any] | tuple[str, Any, int | None]) -> Target:
        """Accept a Target or a plain tuple like ("tcp", "192.0.2.1", 80) or ("icmp", "192.0.2.1")."""
        if isinstance(value, Target):
            return value
        proto, ip, *port = value
        return cls(Proto(proto), str(ip), port[0] if port else None)

    def __post_init__(self) -> None:
        if (self.port is None) != (self.proto is Proto.ICMP):
            raise ValueError(f"probe target {self.proto} {self.ip}: TCP and UDP need a port, ICMP takes none")

    def __str__(self) -> str:
        if self.port is None:
            return f"{self.proto} {self.ip}"
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{self.proto} {host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe saw; `detail` is the listener's banner, the ICMP error and its sender, etc."""

    target: Target
    outcome: Outcome
    detail: str


TargetLike: TypeAlias = Target | tuple[str, Any] | tuple[str, Any, int | None]


class Netns:
    """One network namespace of a lab. `run` executes a command inside it."""

    def __init__(self, lab: Lab, name: str, role: str) -> None:
        self.lab = lab
        self.name = name
        self.role = role

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def run(
        self, argv: Sequence[str], *, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in this namespace; with `check`, a failure raises LabError carrying its stderr."""
        full = ["ip", "netns", "exec", self.name, *argv]
        if check:
            stdout = _run(full, input=input, what=f"command in {self.name}")
            return subprocess.CompletedProcess(full, 0, stdout, "")
        return subprocess.run(full, input=input, capture_output=True, text=True, check=False)

    def listen(self, tcp: Iterable[int] = (), udp: Iterable[int] = ()) -> Listener:
        """Start one process serving all these ports (TCP banner, UDP echo) here; returns once bound."""
        return self.lab._start_listener(self, list(tcp), list(udp))

    def ip_batch(self, lines: Iterable[str], what: str) -> None:
        """Run iproute2 commands (one per line, without the leading `ip`) in one process in this namespace."""
        _run(["ip", "-n", self.name, "-batch", "-"], input="\n".join(lines) + "\n", what=f"{what} in {self.name}")


class Container(Netns):
    """A container namespace attached to its cell by the CNI ptp plugin (host-local IPAM)."""

    def __init__(self, lab: Lab, name: str, cell: Cell, handle: str) -> None:
        super().__init__(lab, name, f"container {handle} on {cell.cell_name}")
        self.cell = cell
        self.handle = handle
        self.cni_result: dict[str, Any] = {}
        self.ip: ipaddress.IPv4Address | None = None
        self.ip6: ipaddress.IPv6Address | None = None
        self.host_veth = ""

    def _take_result(self, result: dict[str, Any]) -> None:
        self.cni_result = result
        for entry in result.get("ips", []):
            address = ipaddress.ip_interface(entry["address"]).ip
            if isinstance(address, ipaddress.IPv4Address):
                self.ip = address
            else:
                self.ip6 = address
        interfaces = result.get("interfaces", [])
        self.host_veth = next((i["name"] for i in interfaces if "sandbox" not in i), "")
        if self.ip is None:
            raise LabError(
                f"ptp ADD for {self.handle} on cell {self.cell.cell_name} returned no IPv4 address: {result}"
            )


class Cell(Netns):
    """A Diego cell: a forwarding namespace that holds the containers' host-side veths and the ruleset."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        cell_name: str,
        index: int,
        overlay_subnet: ipaddress.IPv4Network,
        overlay_subnet6: ipaddress.IPv6Network | None,
    ) -> None:
        super().__init__(lab, name, f"cell {cell_name}")
        self.cell_name = cell_name
        self.index = index
        self.overlay_subnet = overlay_subnet
        self.overlay_subnet6 = overlay_subnet6
        self.host_ip = ipaddress.IPv4Address(f"100.64.{index}.1")
        self.host_ip6 = ipaddress.IPv6Address(f"fd00:64:{index}::1")
        self.containers: dict[str, Container] = {}

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The containers' default gateway (host-local's default: the subnet's first address)."""
        return self.overlay_subnet.network_address + 1

    def add_container(self, name: str, *, handle: str | None = None) -> Container:
        """Create a container namespace and attach it with a real CNI ADD; `handle` defaults to `name`."""
        return self.lab._add_container(self, name, handle or name)

    def remove_container(self, container: Container) -> None:
        """CNI DEL (with the ADD result as prevResult), then delete the container's namespace."""
        self.lab._remove_container(container)


class Internet(Netns):
    """The outside world: owns the documentation ranges, runs listeners, answers ICMP echo."""

    def __init__(self, lab: Lab, name: str) -> None:
        super().__init__(lab, name, "internet")
        self.tcp_ports: tuple[int, ...] = ()
        self.udp_ports: tuple[int, ...] = ()


@dataclass
class Listener:
    """A running `netagent serve` process in one namespace."""

    netns: str
    tcp_ports: tuple[int, ...]
    udp_ports: tuple[int, ...]
    process: subprocess.Popen[str] = field(repr=False)

    def stop(self) -> None:
        """Close its stdin (it exits on EOF); escalate to SIGTERM/SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


class Lab:
    """A set of namespaces built on demand and torn down as one; use as a context manager.

    >>> with Lab() as lab:                                     # doctest: +SKIP
    ...     cell = lab.add_cell("a")
    ...     lab.add_internet()
    ...     app = cell.add_container("app")
    ...     assert tcp(app, "192.0.2.10", 80) is Outcome.OPEN
    """

    def __init__(self, *, ipv6: bool = True) -> None:
        self.ipv6 = ipv6
        self.lab_id = ""
        self.tmpdir = Path()
        self.cells: dict[str, Cell] = {}
        self._internet: Internet | None = None
        self._namespaces: list[str] = []
        self._listeners: list[Listener] = []
        self._underlay_pairs = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        while True:
            lab_id = secrets.token_hex(3)
            try:
                fd = os.open(REGISTRY_DIR / lab_id, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as registry:
                registry.write(f"{os.getpid()}\n")
            break
        self.lab_id = lab_id
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"cfnft-lab-{lab_id}-"))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process, delete every namespace, remove the temp dir; safe to call twice."""
        if not self.lab_id:
            return
        errors: list[str] = []
        for listener in self._listeners:
            try:
                listener.stop()
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(f"stopping listener in {listener.netns}: {exc}")
        self._listeners.clear()
        # Containers first: their veths' host ends vanish with them.
        errors += _delete_namespaces(reversed(self._namespaces))
        self._namespaces.clear()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        (REGISTRY_DIR / self.lab_id).unlink(missing_ok=True)
        self.lab_id = ""
        if errors:
            raise LabError("lab teardown incomplete: " + "; ".join(errors))

    # -- topology ----------------------------------------------------------------------------

    @property
    def internet(self) -> Internet:
        """The internet namespace; LabError if `add_internet` was not called."""
        if self._internet is None:
            raise LabError("this lab has no internet: call add_internet() first")
        return self._internet

    def namespaces(self) -> list[str]:
        """Names of every namespace this lab currently owns."""
        return list(self._namespaces)

    def listeners(self) -> list[Listener]:
        """Every listener this lab started and has not stopped yet."""
        return list(self._listeners)

    def add_cell(
        self,
        name: str,
        *,
        overlay_subnet: str | None = None,
        overlay_subnet6: str | None = None,
    ) -> Cell:
        """Add a cell, linked to the internet (if any) and by underlay to every existing cell."""
        self._check_name(name, "cell name")
        if name in self.cells:
            raise LabError(f"cell {name!r} already exists in lab {self.lab_id}")
        index = len(self.cells) + 1
        subnet = ipaddress.IPv4Network(overlay_subnet or f"10.255.{index}.0/24")
        subnet6 = ipaddress.IPv6Network(overlay_subnet6 or f"fd00:255:{index}::/64") if self.ipv6 else None
        cell = Cell(self, self._create_netns(f"cell-{name}", router=True), name, index, subnet, subnet6)
        for other in self.cells.values():
            self._link_cells(other, cell)
        self.cells[name] = cell
        if self._internet is not None:
            self._link_internet(cell)
        return cell

    def add_internet(
        self, *, tcp_ports: Iterable[int] = INTERNET_TCP_PORTS, udp_ports: Iterable[int] = INTERNET_UDP_PORTS
    ) -> Internet:
        """Add the internet namespace, link it to every cell, and start its listeners."""
        if self._internet is not None:
            raise LabError(f"lab {self.lab_id} already has an internet")
        internet = Internet(self, self._create_netns("internet", router=False))
        claims = [f"route add local {net} dev lo" for net in DOCUMENTATION_NETWORKS if self.ipv6 or net.version == 4]
        if self.ipv6:
            # IPv6 sends ICMP errors from the destination address only if it is a real address, not
            # merely covered by a local route (IPv4 does either): without these, a closed UDP port
            # would answer from the link address and read as REJECTED instead of REFUSED.
            claims += [f"addr add {address}/128 dev lo nodad" for address in INTERNET_HOSTS6]
        internet.ip_batch(claims, "claiming the documentation ranges")
        self._internet = internet
        for cell in self.cells.values():
            self._link_internet(cell)
        internet.tcp_ports, internet.udp_ports = tuple(tcp_ports), tuple(udp_ports)
        if internet.tcp_ports or internet.udp_ports:
            internet.listen(internet.tcp_ports, internet.udp_ports)
        return internet

    def _check_name(self, name: str, what: str) -> None:
        if not _NAME.match(name):
            raise LabError(f"{what} {name!r} must be 1-16 of [a-z0-9-], starting with a letter or digit")

    def add_namespace(self, role: str) -> Netns:
        """A bare namespace (loopback up) torn down with the lab: for a container that something
        other than the lab attaches, e.g. a CNI chain under test."""
        self._check_name(role, "namespace role")
        return Netns(self, self._create_netns(role, router=False), role)

    def _create_netns(self, role: str, *, router: bool) -> str:
        if not self.lab_id:
            raise LabError("a Lab builds namespaces only inside `with Lab() as lab:` (which also tears them down)")
        name = f"{NAME_PREFIX}{self.lab_id}-{role}"
        # Registered before it exists, so a failure half-way still gets it deleted.
        self._namespaces.append(name)
        _run(["ip", "netns", "add", name], what=f"creating namespace {name}")
        sysctls = _COMMON_SYSCTLS + (_ROUTER_SYSCTLS if router else ())
        _run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", *sysctls], what=f"sysctls in {name}")
        _run(["ip", "-n", name, "link", "set", "lo", "up"], what=f"loopback up in {name}")
        return name

    def _link_internet(self, cell: Cell) -> None:
        i, internet = cell.index, self.internet
        cell_end = _LinkEnd(cell, "to-internet", [f"{cell.host_ip}/24"], [])
        internet_end = _LinkEnd(internet, f"to-{cell.cell_name}"[:15], [f"100.64.{i}.2/24"], [])
        cell_end.routes += [f"{net} via 100.64.{i}.2" for net in DOCUMENTATION_NETWORKS if net.version == 4]
        internet_end.routes.append(f"{cell.overlay_subnet} via {cell.host_ip}")
        if self.ipv6:
            cell_end.addresses.append(f"{cell.host_ip6}/64")
            internet_end.addresses.append(f"fd00:64:{i}::2/64")
            cell_end.routes += [f"{net} via fd00:64:{i}::2" for net in DOCUMENTATION_NETWORKS if net.version == 6]
            internet_end.routes.append(f"{cell.overlay_subnet6} via {cell.host_ip6}")
        _veth(cell_end, internet_end)

    def _link_cells(self, a: Cell, b: Cell) -> None:
        self._underlay_pairs += 1
        k = self._underlay_pairs
        a_end = _LinkEnd(a, f"ul-{b.cell_name}"[:15], [f"100.65.{k}.1/24"], [f"{b.overlay_subnet} via 100.65.{k}.2"])
        b_end = _LinkEnd(b, f"ul-{a.cell_name}"[:15], [f"100.65.{k}.2/24"], [f"{a.overlay_subnet} via 100.65.{k}.1"])
        if self.ipv6:
            a_end.addresses.append(f"fd00:65:{k}::1/64")
            b_end.addresses.append(f"fd00:65:{k}::2/64")
            a_end.routes.append(f"{b.overlay_subnet6} via fd00:65:{k}::2")
            b_end.routes.append(f"{a.overlay_subnet6} via fd00:65:{k}::1")
        _veth(a_end, b_end)

    # -- containers (CNI) --------------------------------------------------------------------

    def _cni_config(self, cell: Cell) -> dict[str, Any]:
        ranges = [[{"subnet": str(cell.overlay_subnet)}]]
        routes = [{"dst": "0.0.0.0/0"}]
        if cell.overlay_subnet6 is not None:
            ranges.append([{"subnet": str(cell.overlay_subnet6)}])
            routes.append({"dst": "::/0"})
        return {
            "cniVersion": "1.0.0",
            "name": f"cfnft-lab-{cell.cell_name}",
            "type": "ptp",
            "ipMasq": False,
            "ipam": {"type": "host-local", "dataDir": str(self.tmpdir / "ipam"), "ranges": ranges, "routes": routes},
        }

    def _cni(self, command: str, container: Container, config: dict[str, Any]) -> dict[str, Any]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container.handle,
            "CNI_NETNS": str(NETNS_DIR / container.name),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(CNI_BIN_DIR),
        }
        # ptp makes the host end of the veth in the namespace it runs in: run it in the cell.
        argv = ["ip", "netns", "exec", container.cell.name, str(CNI_BIN_DIR / "ptp")]
        proc = subprocess.run(argv, input=json.dumps(config), env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            # CNI errors are a JSON object on stdout: {"code": .., "msg": .., "details": ..}.
            try:
                err = json.loads(proc.stdout)
                reason = f"{err.get('msg', '')} {err.get('details', '')}".strip()
            except json.JSONDecodeError:
                reason = proc.stdout.strip() or proc.stderr.strip()
            raise LabError(f"CNI {command} of {container.handle} on cell {container.cell.cell_name}: {reason}")
        return json.loads(proc.stdout) if proc.stdout.strip() else {}

    def _add_container(self, cell: Cell, name: str, handle: str) -> Container:
        self._check_name(name, "container name")
        if any(name in c.containers for c in self.cells.values()):
            raise LabError(f"container {name!r} already exists in lab {self.lab_id}")
        container = Container(self, self._create_netns(f"ctr-{name}", router=False), cell, handle)
        container._take_result(self._cni("ADD", container, self._cni_config(cell)))
        cell.containers[name] = container
        return container

    def _remove_container(self, container: Container) -> None:
        config = self._cni_config(container.cell) | {"prevResult": container.cni_result}
        self._cni("DEL", container, config)
        for listener in [x for x in self._listeners if x.netns == container.name]:
            listener.stop()
            self._listeners.remove(listener)
        errors = _delete_namespaces([container.name])
        self._namespaces.remove(container.name)
        container.cell.containers = {k: v for k, v in container.cell.containers.items() if v is not container}
        if errors:
            raise LabError("; ".join(errors))

    # -- listeners ---------------------------------------------------------------------------

    def _start_listener(self, netns: Netns, tcp_ports: list[int], udp_ports: list[int]) -> Listener:
        argv = [
            "ip", "netns", "exec", netns.name, sys.executable, "-I", "-S", _AGENT, "serve", "--label", netns.role,
            "--tcp", ",".join(map(str, tcp_ports)), "--udp", ",".join(map(str, udp_ports)),
        ]  # fmt: skip
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        listener = Listener(netns.name, tuple(tcp_ports), tuple(udp_ports), process)
        self._listeners.append(listener)
        assert process.stdout is not None and process.stderr is not None
        ready, _, _ = select.select([process.stdout], [], [], 10)
        line = process.stdout.readline().strip() if ready else ""
        if line != READY_LINE:
            listener.stop()
            error = process.stderr.read().strip() if process.poll() is not None else "not ready after 10s"
            raise LabError(f"listener in {netns.name} (tcp {tcp_ports}, udp {udp_ports}) failed: {error}")
        return listener


_AGENT = str(Path(__file__).with_name("netagent.py"))


@dataclass
class _LinkEnd:
    """One end of a routed veth link: its namespace, interface, addresses (CIDR) and routes ("NET via GW")."""

    netns: Netns
    ifname: str
    addresses: list[str]
    routes: list[str]

    def lines(self) -> list[str]:
        # Up before addressing: an IPv6 address added to a down veth takes about a second (one neighbour
        # solicitation retransmit) to become reachable once the link comes up; added to an up link it is
        # usable at once (nodad: the namespace is ours, nothing can collide).
        lines = [f"link set {self.ifname} up"]
        lines += [f"addr add {a} dev {self.ifname}" + (" nodad" if ":" in a else "") for a in self.addresses]
        return lines + [f"route add {r}" for r in self.routes]


def _veth(a: _LinkEnd, b: _LinkEnd) -> None:
    """Create a veth pair straight into the two namespaces (never the host's) and configure both ends."""
    a.netns.ip_batch(
        [f"link add {a.ifname} type veth peer name {b.ifname} netns {b.netns.name}", *a.lines()],
        f"link {a.ifname} to {b.netns.name}",
    )
    b.netns.ip_batch(b.lines(), f"link {b.ifname} to {a.netns.name}")


def _namespace_inodes() -> dict[int, str]:
    inodes = {}
    for entry in NETNS_DIR.glob(f"{NAME_PREFIX}*"):
        try:
            inodes[entry.stat().st_ino] = entry.name
        except OSError:
            continue
    return inodes


def _pids_in(names: set[str]) -> list[int]:
    """Processes whose network namespace is one of `names` (a namespace outlives `ip netns del` while used)."""
    inodes = {ino for ino, name in _namespace_inodes().items() if name in names}
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "ns" / "net").stat().st_ino in inodes:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _delete_namespaces(names: Iterable[str]) -> list[str]:
    """Kill what still runs in these namespaces, then delete them in one `ip -batch`; returns errors."""
    wanted = [n for n in names if (NETNS_DIR / n).exists()]
    if not wanted:
        return []
    for pid in _pids_in(set(wanted)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    batch = "".join(f"netns del {n}\n" for n in wanted)
    proc = subprocess.run(["ip", "-force", "-batch", "-"], input=batch, capture_output=True, text=True, check=False)
    left = [n for n in wanted if (NETNS_DIR / n).exists()]
    return [f"namespaces not deleted: {', '.join(left)}: {proc.stderr.strip()}"] if left else []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_labs() -> list[str]:
    """Delete namespaces and registry entries of labs whose owner process is gone; return what was removed.

    Only labs with a registry entry are considered, so a namespace that merely looks like ours, or a
    lab of another live test session, is left alone.
    """
    if not REGISTRY_DIR.is_dir():
        return []
    stale = set()
    for entry in REGISTRY_DIR.iterdir():
        try:
            owner = int(entry.read_text().strip() or "0")
        except (OSError, ValueError):
            owner = 0
        if owner <= 0 or not _pid_alive(owner):
            stale.add(entry.name)
    removed = []
    if stale:
        names = [p.name for p in NETNS_DIR.glob(f"{NAME_PREFIX}*") if (m := _LAB_NS.match(p.name)) and m[1] in stale]
        _delete_namespaces(names)
        removed = names
        for lab_id in stale:
            (REGISTRY_DIR / lab_id).unlink(missing_ok=True)
            for tmp in Path(tempfile.gettempdir()).glob(f"cfnft-lab-{lab_id}-*"):
                shutil.rmtree(tmp, ignore_errors=True)
    return removed


# -- probes ------------------------------------------------------------------------------------


def probe_many(
    netns: Netns | str, targets: Iterable[TargetLike], *, timeout: float = DEFAULT_TIMEOUT
) -> list[ProbeResult]:
    """Probe all targets concurrently from inside `netns` with one helper process; results in order."""
    wanted = [Target.of(t) for t in targets]
    if not wanted:
        return []
    name = netns if isinstance(netns, str) else netns.name
    request = {"targets": [[t.proto.value, t.ip, t.port] for t in wanted], "timeout": timeout}
    argv = ["ip", "netns", "exec", name, sys.executable, "-I", "-S", _AGENT, "probe"]
    try:
        proc = subprocess.run(
            argv, input=json.dumps(request), capture_output=True, text=True, timeout=timeout + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"probes from {name} did not finish: {exc}") from None
    if proc.returncode != 0:
        raise LabError(f"probes from {name} failed: {proc.stderr.strip()[-2000:]}")
    verdicts = json.loads(proc.stdout)
    return [ProbeResult(t, Outcome(outcome), detail) for t, (outcome, detail) in zip(wanted, verdicts, strict=True)]


def tcp(netns: Netns | str, ip: Address | str, port: int, *, timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """TCP connect from `netns` to ip:port."""
    return probe_many(netns, [Target(Proto.TCP, str(ip), port)], timeout=timeout)[0].outcome


def udp(netns: Netns | str, ip: Address | str, port: int, *, timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """UDP request/response from `netns` to ip:port (OPEN needs an echoing listener)."""
    return probe_many(netns, [Target(Proto.UDP, str(ip), port)], timeout=timeout)[0].outcome


def icmp(netns: Netns | str, ip: Address | str, *, timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """ICMP (or ICMPv6) echo from `netns` to ip."""
    return probe_many(netns, [Target(Proto.ICMP, str(ip))], timeout=timeout)[0].outcome


def assert_reachability(
    netns: Netns | str, expected: Mapping[TargetLike, Outcome], *, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Probe every target at once; raise AssertionError listing each one whose outcome differs."""
    targets = list(expected)
    results = probe_many(netns, targets, timeout=timeout)
    wrong = [
        f"  {r.target}: expected {expected[t].value}, got {r.outcome.value} ({r.detail})"
        for t, r in zip(targets, results, strict=True)
        if r.outcome is not expected[t]
    ]
    if wrong:
        name = netns if isinstance(netns, str) else netns.name
        raise AssertionError(f"reachability from {name}, {len(wrong)} of {len(targets)} wrong:\n" + "\n".join(wrong))
