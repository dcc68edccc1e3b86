"""How long the plugin takes, as Garden experiences it: from process start to exit, for `cfnft bench`.

    measure_startup(n)                  VERSION (interpreter + imports + answer), beside a bare
                                        interpreter start of the same Python, which is the floor
    measure_add_latency(socket, n)      n ADDs against a running reconciler (e.g. on a full cell),
                                        each for a new container, then their DELs

ADD's time includes the reconciler's commit of the container's rules to the kernel, since ADD
answers only after it. The containers get addresses from `first_ip` on (keep them clear of the
cell's own) and the app/space given; they are DELeted afterwards even when an ADD fails.
Not imported by the plugin itself.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cfnft.errors import OperationError


class BenchError(OperationError):
    """A measured invocation failed; the message carries the plugin's CNI error."""


@dataclass(frozen=True)
class Latency:
    """Wall-clock samples in milliseconds, in the order taken."""

    samples_ms: tuple[float, ...]

    def percentile(self, p: float) -> float:
        """The nearest-rank percentile: p99 of 100 samples is the 99th smallest."""
        ordered = sorted(self.samples_ms)
        rank = max(1, -(-len(ordered) * p // 100))
        return ordered[int(rank) - 1]

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    def summary(self) -> str:
        s = self.samples_ms
        return (f"n={len(s)} p50={self.p50:.1f}ms p99={self.p99:.1f}ms min={min(s):.1f}ms max={max(s):.1f}ms "
                f"mean={statistics.fmean(s):.1f}ms")  # fmt: skip


@dataclass(frozen=True)
class StartupReport:
    """VERSION round trips of the plugin, and bare starts of its interpreter."""

    plugin: Latency
    interpreter: Latency

    def summary(self) -> str:
        return (f"cfnft-cni VERSION: {self.plugin.summary()}\n"
                f"bare interpreter:  {self.interpreter.summary()}\n"
                f"imports + run (p50 difference): {self.plugin.p50 - self.interpreter.p50:.1f}ms")  # fmt: skip


@dataclass(frozen=True)
class AddReport:
    """ADD (to committed rules) and DEL of `n` containers, one at a time."""

    add: Latency
    delete: Latency

    def summary(self) -> str:
        return f"ADD: {self.add.summary()}\nDEL: {self.delete.summary()}"


def default_plugin() -> str:
    """The cfnft-cni next to this interpreter (a venv or the BOSH package), else the one on PATH."""
    beside = Path(sys.executable).with_name("cfnft-cni")
    if beside.is_file():
        return str(beside)
    found = shutil.which("cfnft-cni")
    if found is None:
        raise BenchError(f"no cfnft-cni next to {sys.executable} or on PATH")
    return found


def _timed(argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    started = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False, timeout=300)
    return (time.perf_counter() - started) * 1000, proc


def _interpreter(plugin: str) -> str:
    """The interpreter of a console script (its shebang), to time a bare start of the same Python."""
    with open(plugin, "rb") as f:
        first = f.readline().decode(errors="replace")
    return first[2:].strip().split()[0] if first.startswith("#!") else sys.executable


def measure_startup(n: int = 50, *, plugin: str | None = None) -> StartupReport:
    """Time `n` VERSION invocations and `n` bare starts of the plugin's interpreter, interleaved."""
    plugin = plugin or default_plugin()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "VERSION"}
    python = _interpreter(plugin)
    plugin_ms, bare_ms = [], []
    for _ in range(n):
        ms, proc = _timed([plugin], env, b'{"cniVersion": "1.1.0"}')
        if proc.returncode != 0:
            raise BenchError(f"VERSION failed: {proc.stdout.decode(errors='replace')}")
        plugin_ms.append(ms)
        bare_ms.append(_timed([python, "-c", "pass"], env, b"")[0])
    return StartupReport(Latency(tuple(plugin_ms)), Latency(tuple(bare_ms)))


def measure_add_latency(
    socket_path: str,
    n: int = 100,
    *,
    first_ip: str = "10.255.200.2",
    app_guid: str = "bench-app",
    space_guid: str = "bench-space",
    cni_version: str = "1.0.0",
    timeout_seconds: float = 10.0,
    plugin: str | None = None,
) -> AddReport:
    """ADD `n` new containers one after the other against the reconciler at `socket_path`, then DEL them.

    Each sample is one plugin process from start to exit, its stdin what libcni gives the last plugin
    of a chain: a ptp-shaped prevResult and Garden's metadata. Raises BenchError on the first failure.
    """
    plugin = plugin or default_plugin()
    base = ipaddress.IPv4Address(first_ip)
    conf = {"cniVersion": cni_version, "name": "cfnft-bench", "type": "cfnft-cni", "socket_path": socket_path,
            "timeout_seconds": timeout_seconds}  # fmt: skip
    metadata = {"app_id": app_guid, "policy_group_id": app_guid, "space_id": space_guid, "container_workload": "app",
                "ports": "8080"}  # fmt: skip
    path_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_IFNAME": "eth0", "CNI_ARGS": "",
                "CNI_PATH": str(Path(plugin).parent)}  # fmt: skip
    adds: list[float] = []
    deletes: list[float] = []
    added: list[tuple[str, dict[str, object]]] = []
    try:
        for i in range(n):
            handle = f"cfnft-bench-{i}"
            prev: dict[str, object] = {
                "cniVersion": cni_version,
                "interfaces": [{"name": f"veth{i}"}, {"name": "eth0", "sandbox": f"/run/netns/{handle}"}],
                "ips": [{"address": f"{base + i}/32", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dns": {},
            }
            env = path_env | {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": handle, "CNI_NETNS": f"/run/netns/{handle}"}
            stdin = json.dumps(conf | {"prevResult": prev, "metadata": metadata}).encode()
            added.append((handle, prev))
            ms, proc = _timed([plugin], env, stdin)
            if proc.returncode != 0:
                raise BenchError(f"ADD {handle} failed: {proc.stdout.decode(errors='replace')}")
            adds.append(ms)
    finally:
        for handle, cached in added:
            env = path_env | {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": handle}
            ms, proc = _timed([plugin], env, json.dumps(conf | {"prevResult": cached}).encode())
            if proc.returncode == 0:
                deletes.append(ms)
    if len(deletes) != len(added):
        raise BenchError(f"{len(added) - len(deletes)} of {len(added)} DELs failed")
    return AddReport(Latency(tuple(adds)), Latency(tuple(deletes)))
