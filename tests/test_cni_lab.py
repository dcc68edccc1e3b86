"""cfnft-cni end to end: Garden's chain (ptp + host-local, then cfnft-cni) run like libcni, a real reconciler
(`cfnft reconcile`) over a real nats-server, the table in a cell namespace, and real packets.

One lab, one nats-server and one reconciler serve the whole module (each costs seconds to build);
every test adds its own containers and deletes them again, also on failure.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest

from cfnft.publish import publish_state
from cni import pending
from cni.client import ReconcilerClient, Unreachable
from events.models import load_cell_state
from lab.cnirun import CniRuntime, PluginFailed, garden_injection
from lab.natsserver import NatsServer
from lab.netlab import Cell, Lab, Netns, Outcome, assert_reachability, tcp

pytestmark = [pytest.mark.kernel, pytest.mark.nats]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cni" / "cfnft.conflist"
VENV_BIN = Path(sys.executable).parent
CELL_ID = "a"
SPACE = "space-1"
APP, OTHER_APP = "app-1", "app-2"
HOST_PORT, APP_PORT = 61001, 8080

STATE = {
    "cell_id": CELL_ID,
    "containers": [],
    "security_groups": [
        {
            "guid": "sg-web",
            "name": "web",
            "rules": [
                {"protocol": "tcp", "destination": "192.0.2.10", "ports": "80"},
                {"protocol": "udp", "destination": "198.51.100.53", "ports": "53"},
            ],
            "globally_enabled": {"running": False, "staging": False},
            "relationships": {"running_spaces": {"data": [{"guid": SPACE}]}, "staging_spaces": {"data": []}},
        }
    ],
    "config": {"overlay_network": "10.255.0.0/16", "dynamic_asgs": True},
}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll until `condition` holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)


class ReconcilerProcess:
    """`cfnft reconcile` for cell "a", its table in the cell namespace, its socket in a short temp dir."""

    def __init__(self, workdir: Path, cell: Cell, nats_url: str) -> None:
        self.workdir = workdir
        self.socket_path = workdir / "r.sock"
        self.log_path = workdir / "reconciler.log"
        self.config_path = workdir / "reconciler.json"
        config = {
            "cell_id": CELL_ID,
            "nats": {"servers": [nats_url], "connect_timeout_seconds": 1, "insecure": True},
            "netns": cell.name,
            "socket_path": str(self.socket_path),
            "state_dir": str(workdir / "state"),
            "metrics_listen": "",
            # CHECK must see a deleted element as missing: no full read-back repairs it meanwhile.
            "full_check_seconds": 3600,
        }
        self.config_path.write_text(json.dumps(config))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            argv = [str(VENV_BIN / "cfnft"), "reconcile", "--config", str(self.config_path)]
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        client = ReconcilerClient(str(self.socket_path))

        def in_sync() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"cfnft reconcile exited {self.process.returncode}: {self.log_tail()}")
            try:
                return client.status(1.0).body.get("in_sync") is True
            except Unreachable:
                return False

        wait_until(in_sync, "the reconciler is in sync", timeout=30)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@dataclass(frozen=True)
class Ctr:
    """A container a test added: its handle (unique in the module), namespace and overlay IPv4."""

    handle: str
    netns: Netns
    ip: str


@dataclass
class Env:
    """Everything a test needs: the lab, the reconciler, and a libcni-like runtime for the example chain."""

    lab: Lab
    cell: Cell
    reconciler: ReconcilerProcess
    runtime: CniRuntime
    workdir: Path
    containers: list[tuple[str, CniRuntime]] = field(default_factory=list)
    serial: int = 0

    def table(self) -> str:
        """`nft list table inet cfnft` in the cell, without counters."""
        return self.cell.run(["nft", "-s", "list", "table", "inet", "cfnft"]).stdout

    def add(
        self, app: str | None = APP, *, ports: str = "", host_port: int | None = None, runtime: CniRuntime | None = None
    ) -> Ctr:
        """A new container namespace attached by the chain, with Garden's metadata for `app`."""
        self.serial += 1
        handle = f"c{self.serial}"
        # Namespaces stay until the module's lab is torn down; handles are never reused.
        netns = self.lab.add_namespace(f"ctr-{handle}")
        properties = {"space_id": SPACE, "org_id": "org-1", "container_workload": "app", "ports": ports}
        if app is not None:
            properties |= {"app_id": app, "policy_group_id": app}
        mappings = [{"host_port": host_port, "container_port": APP_PORT}] if host_port else []
        runtime = runtime or self.runtime
        self.containers.append((handle, runtime))
        result = runtime.add(handle, f"/run/netns/{netns.name}", inject=garden_injection(properties, mappings))
        ipv4 = next(ip["address"].split("/")[0] for ip in result["ips"] if "." in ip["address"])
        return Ctr(handle, netns, ipv4)

    def delete(self, c: Ctr | str, runtime: CniRuntime | None = None) -> None:
        handle = c if isinstance(c, str) else c.handle
        runtime = runtime or next((r for h, r in self.containers if h == handle), self.runtime)
        runtime.delete(handle, self.netns_path(handle))

    def netns_path(self, handle: str) -> str:
        return f"/run/netns/cfnft-{self.lab.lab_id}-ctr-{handle}"


def example_conflist(version: str, *, ipam_dir: Path, socket_path: Path) -> dict[str, Any]:
    """examples/cni/cfnft.conflist with the lab's subnet, a temp IPAM dir and the test reconciler's socket."""
    conflist = json.loads(EXAMPLE.read_text())
    ptp, cfnft = conflist["plugins"]
    ptp["ipam"] |= {"dataDir": str(ipam_dir), "ranges": [[{"subnet": "10.255.1.0/24"}]]}
    cfnft |= {"socket_path": str(socket_path), "log_file": str(socket_path.parent / "cni.log")}
    return conflist | {"cniVersion": version, "name": "cfnft-lab"}


async def _publish(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=2)
    try:
        await publish_state(nc, load_cell_state(STATE))
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    workdir = Path(tempfile.mkdtemp(prefix="cfnft-cni-"))  # short: a unix socket path has 107 bytes
    try:
        with Lab(ipv6=False) as lab, NatsServer(workdir / "nats") as server:
            cell = lab.add_cell("a")
            lab.add_internet()
            asyncio.run(_publish(server.url))
            reconciler = ReconcilerProcess(workdir, cell, server.url)
            runtime = CniRuntime(
                example_conflist("1.0.0", ipam_dir=workdir / "ipam", socket_path=reconciler.socket_path),
                cni_path=["/usr/lib/cni", VENV_BIN], cache_dir=workdir / "cache", host_netns=cell.name,
            )  # fmt: skip
            try:
                reconciler.start()
                yield Env(lab, cell, reconciler, runtime, workdir)
            finally:
                reconciler.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def cni(env: Env) -> Iterator[Env]:
    """`env`, with every container a test added deleted afterwards and the reconciler left running."""
    try:
        yield env
    finally:
        if env.reconciler.process is None:
            env.reconciler.start()
        for handle, runtime in env.containers:
            try:
                env.delete(handle, runtime)
            except PluginFailed:
                pass
        env.containers.clear()


def test_asgs_are_enforced_the_moment_add_returns(cni: Env) -> None:
    c = cni.add()
    # No wait, no retry: an overlay source without rules is rejected, so OPEN proves the rules were live.
    assert_reachability(c.netns, {
        ("tcp", "192.0.2.10", 80): Outcome.OPEN,
        ("udp", "198.51.100.53", 53): Outcome.OPEN,
        ("tcp", "192.0.2.10", 443): Outcome.REJECTED,
        ("tcp", "203.0.113.5", 80): Outcome.REJECTED,
        ("icmp", "192.0.2.10"): Outcome.REJECTED,
    })  # fmt: skip


def test_the_router_reaches_the_app_by_its_host_port_and_no_policy_means_no_overlay_access(cni: Env) -> None:
    app = cni.add(ports=str(APP_PORT), host_port=HOST_PORT)
    app.netns.listen(tcp=[APP_PORT])
    other = cni.add(OTHER_APP)
    # The internet namespace stands in for the gorouter: it reaches the cell's address and host port.
    assert tcp(cni.lab.internet, cni.cell.host_ip, HOST_PORT) is Outcome.OPEN
    assert tcp(other.netns, app.ip, APP_PORT) is Outcome.REJECTED
    # Nor around the policy through the cell's host port (silk marks only what comes from the underlay).
    assert tcp(other.netns, cni.cell.host_ip, HOST_PORT) is Outcome.REJECTED


def test_del_removes_every_trace_and_succeeds_twice(cni: Env) -> None:
    before = cni.table()
    c = cni.add(ports=str(APP_PORT), host_port=HOST_PORT)
    during = cni.table()
    assert c.ip in during and f"{c.handle} app={APP}" in during and str(HOST_PORT) in during
    assert f"c2c-{APP}" in during
    cni.delete(c)
    assert cni.table() == before
    cni.delete(c)  # libcni's cache is gone now: DEL without prevResult
    assert cni.table() == before


def test_del_while_the_reconciler_is_down_is_cleaned_up_when_it_returns(cni: Env) -> None:
    before = cni.table()
    c = cni.add(host_port=HOST_PORT)
    cni.reconciler.stop()
    cni.delete(c)
    assert pending.pending_handles(cni.reconciler.socket_path) == [c.handle]
    assert c.ip in cni.table()  # nobody removed the rules yet; the address stays fenced off
    cni.reconciler.start()
    wait_until(lambda: cni.table() == before, f"the returning reconciler removes {c.handle}'s rules")
    assert pending.pending_handles(cni.reconciler.socket_path) == []


def test_check_fails_once_someone_deletes_the_containers_rules(cni: Env) -> None:
    c = cni.add(host_port=HOST_PORT)
    cni.runtime.check(c.handle, cni.netns_path(c.handle))
    cni.cell.run(["nft", "delete", "element", "inet", "cfnft", "egress4", "{", c.ip, "}"])
    with pytest.raises(PluginFailed) as failed:
        cni.runtime.check(c.handle, cni.netns_path(c.handle))
    assert failed.value.plugin == "cfnft-cni" and failed.value.code == 100
    assert failed.value.error is not None and f"no egress4 element for {c.ip}" in failed.value.error["details"]


def test_an_add_in_0_4_0_passes_the_result_through_in_0_4_0(cni: Env) -> None:
    legacy = CniRuntime(
        example_conflist("0.4.0", ipam_dir=cni.workdir / "ipam", socket_path=cni.reconciler.socket_path),
        cni_path=["/usr/lib/cni", VENV_BIN], cache_dir=cni.workdir / "cache-040", host_netns=cni.cell.name,
    )  # fmt: skip
    c = cni.add(runtime=legacy)
    result = legacy.cached_result(c.handle)
    assert result is not None and result["cniVersion"] == "0.4.0"
    assert all(ip["version"] == "4" for ip in result["ips"])
    legacy.check(c.handle, cni.netns_path(c.handle))
    assert tcp(c.netns, "192.0.2.10", 80) is Outcome.OPEN


def test_version_status_and_gc_answer_as_the_spec_says(cni: Env) -> None:
    kept, dropped = cni.add(), cni.add()
    # A 1.1.0 list of cfnft-cni alone (the Debian ptp stops at 1.0.0), with its own (empty) result cache,
    # so that GC reaches the plugin instead of libcni DELing cached attachments itself.
    solo = CniRuntime({"cniVersion": "1.1.0", "name": "cfnft-lab", "plugins": [cni.runtime.plugins[1]]},
                      cni_path=[VENV_BIN], cache_dir=cni.workdir / "cache-solo", host_netns=cni.cell.name)  # fmt: skip
    assert solo.version("cfnft-cni") == {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    solo.status()
    assert solo.runs[-1].stdout == ""
    assert solo.gc([(kept.handle, "eth0")]) == []
    assert solo.runs[-1].stdout == ""
    table = cni.table()
    assert kept.ip in table and dropped.ip not in table
    cni.reconciler.stop()
    with pytest.raises(PluginFailed) as failed:
        solo.status()
    assert failed.value.code == 50


def test_bad_invocations_get_spec_errors_and_change_nothing(cni: Env) -> None:
    c = cni.add()
    before = cni.table()
    env = cni.runtime._env("ADD", "c-bad", "/run/netns/none", "eth0")
    conf = cni.runtime._plugin_conf(cni.runtime.plugins[1], cni.runtime.cached_result(c.handle))
    cases: list[tuple[dict[str, str], bytes, int]] = [
        (env, b"{not json", 6),
        ({k: v for k, v in env.items() if k != "CNI_NETNS"}, json.dumps(conf).encode(), 4),
        (env, json.dumps(conf | {"cniVersion": "0.9.9"}).encode(), 1),
        (env, json.dumps({k: v for k, v in conf.items() if k != "prevResult"}).encode(), 7),
        (env, json.dumps(conf | {"metadata": {"ports": "eighty"}}).encode(), 7),
        (env, json.dumps(conf | {"timeout": 3}).encode(), 2),
    ]
    for case_env, stdin, code in cases:
        run = cni.runtime.exec_raw("cfnft-cni", case_env, stdin)
        assert run.returncode != 0 and run.json["code"] == code, (code, run.stdout, run.stderr)
    assert cni.table() == before and c.ip in before
    assert pending.pending_handles(cni.reconciler.socket_path) == []
