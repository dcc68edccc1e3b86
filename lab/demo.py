"""`cfnft demo`: a small foundation on this machine, and what CF promises, shown with real packets.

Everything runs here, as root, in network namespaces of its own: a cluster of three nats-servers
(TLS, and cfnft's role identities: the watchers write as `watcher`, each cell reads as itself)
holding the state stream with three replicas; the BBS and policy server simulators (real wire
formats, mutual TLS); the BBS and policy watchers; two cells, each with its reconciler and CNI
endpoint; apps whose containers are attached by the real CNI chain (`ptp` + `host-local`, then
`cfnft-cni`) exactly as Garden's external networker calls it; and an "internet" namespace owning
the documentation address ranges. Each step changes something the way CF would, then probes until
the expected outcome holds and prints how long that took; one step kills the NATS node that leads
the stream first.

With --ci it exits 1 if any probe ends other than expected; with --keep it stays up for
inspection until Ctrl-C. Everything it started or created is removed on exit, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from events.bbs.watcher import BbsWatcher, BbsWatcherConfig
from events.connect import connect
from events.permissions import Role, inbox_prefix
from events.policy.spaces import ContainerSpaces
from events.policy.watcher import PolicyWatcher, PolicyWatcherConfig
from events.publisher import StatePublisher
from lab.cnirun import CniRuntime, garden_injection
from lab.natsconf import Identities, ServerSettings
from lab.natsserver import NatsCluster, free_port, stream_leader
from lab.netlab import Cell, Lab, Netns, Outcome, probe_many
from lab.pki import Pki, make_pki
from lab.sim.bbs import BbsSimulator
from lab.sim.policy import C2CPolicySpec, PolicyServerSimulator
from nft import NftRunner
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler
from reconciler.endpoint import start_endpoints

ORG, SPACE = "org-demo", "space-dev"
FRONTEND, BACKEND = "a1111111-0000-4000-8000-00000000f00d", "b2222222-0000-4000-8000-0000000000be"
APP_NAMES = {FRONTEND: "frontend", BACKEND: "backend"}
DNS = "198.51.100.53"
WEB = "192.0.2.10"
SETTLE = 15.0  # the longest a change may take to show, before the demo calls it wrong
# ... when a NATS node was killed first: the stream elects a new leader in 4-9 s (nats-server's raft).
FAILOVER_SETTLE = 30.0


@dataclass
class Instance:
    app: str
    handle: str
    cell: Cell
    netns: Netns
    ip: str

    @property
    def name(self) -> str:
        return f"{APP_NAMES[self.app]} on cell {self.cell.cell_name}"


@dataclass
class Probe:
    source: Instance
    proto: str
    target: str
    port: int | None
    expected: Outcome

    def label(self) -> str:
        where = f"{self.target}:{self.port}" if self.port else self.target
        return f"{self.source.name} -> {self.proto} {where}"


@dataclass
class Result:
    step: str
    probe: Probe
    outcome: Outcome
    seconds: float

    @property
    def ok(self) -> bool:
        return self.outcome is self.probe.expected


@dataclass
class Demo:
    workdir: Path
    lab: Lab
    cluster: NatsCluster
    identities: Identities
    pki: Pki
    bbs: BbsSimulator
    policy: PolicyServerSimulator
    reconcilers: dict[str, Reconciler] = field(default_factory=dict)
    runtimes: dict[str, CniRuntime] = field(default_factory=dict)
    instances: list[Instance] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    process_guids: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ CF actions

    def push(self, app: str, cells: list[Cell]) -> list[Instance]:
        """cf push: BBS desires the LRP; each instance's container is created and attached by the
        CNI chain (which returns only when the container's rules are live), then reported RUNNING."""
        pg = self.bbs.desire_lrp(app, SPACE, ORG, instances=len(cells), ports=(8080,))
        self.process_guids[app] = pg
        out = []
        for index, cell in enumerate(cells):
            handle = str(uuid.uuid4())
            netns = self.lab.add_namespace(f"{APP_NAMES[app][:8]}-{index}")
            properties = {
                "app_id": app,
                "policy_group_id": app,
                "space_id": SPACE,
                "org_id": ORG,
                "container_workload": "app",
                "ports": "8080",
            }
            result = self.runtimes[cell.cell_name].add(
                handle, f"/run/netns/{netns.name}", inject=garden_injection(properties)
            )
            ip = next(i["address"].split("/")[0] for i in result["ips"] if "." in i["address"])
            netns.listen(tcp=[8080])
            self.bbs.start_instance(pg, index, cell.cell_name, instance_guid=handle, instance_address=ip)
            instance = Instance(app, handle, cell, netns, ip)
            self.instances.append(instance)
            out.append(instance)
        return out

    # ------------------------------------------------------------------ probing

    def check(self, step: str, probes: list[Probe], started: float, settle: float = SETTLE) -> None:
        """Probe until every probe gives its expected outcome (or `settle` seconds pass); record each."""
        pending = list(probes)
        while True:
            by_source: dict[str, list[Probe]] = {}
            for p in pending:
                by_source.setdefault(p.source.netns.name, []).append(p)
            still = []
            for ns, group in by_source.items():
                results = probe_many(ns, [(p.proto, p.target, p.port) for p in group], timeout=0.3)
                for p, r in zip(group, results, strict=True):
                    if r.outcome is p.expected:
                        self.results.append(Result(step, p, r.outcome, time.perf_counter() - started))
                    else:
                        still.append((p, r.outcome))
            if not still:
                return
            if time.perf_counter() - started > settle:
                for p, outcome in still:
                    self.results.append(Result(step, p, outcome, time.perf_counter() - started))
                return
            pending = [p for p, _ in still]
            time.sleep(0.02)


def _print_result(r: Result) -> None:
    mark = "ok " if r.ok else "WRONG"
    print(
        f"   [{mark}] {r.probe.label():<52} expected {r.probe.expected.value:<9} got {r.outcome.value:<9} "
        f"after {r.seconds * 1000:7.0f} ms",
        flush=True,
    )


async def _step(
    demo: Demo,
    title: str,
    change: Callable[[], Awaitable[None] | None] | None,
    probes: list[Probe],
    settle: float = SETTLE,
) -> None:
    print(f"\n== {title}", flush=True)
    started = time.perf_counter()
    if change is not None:
        outcome = change()
        if asyncio.iscoroutine(outcome):
            await outcome
    before = len(demo.results)
    await asyncio.to_thread(demo.check, title, probes, started, settle)
    for r in demo.results[before:]:
        _print_result(r)


async def run(ci: bool, keep: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="cfnft-demo-"))
    try:
        with Lab(ipv6=False) as lab:
            return await _run(workdir, lab, ci, keep)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _run(workdir: Path, lab: Lab, ci: bool, keep: bool) -> int:
    print("cfnft demo: building a two-cell foundation in network namespaces ...", flush=True)
    cells = [lab.add_cell("a"), lab.add_cell("b")]
    lab.add_internet()
    pki = make_pki(workdir / "pki", "bbs.service.cf.internal", "policy-server.service.cf.internal")
    identities = Identities(workdir / "nats-identities", [cell.cell_name for cell in cells])
    cluster = NatsCluster(workdir / "nats", settings=ServerSettings(users=identities.users(), tls=pki.server))
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.to_thread(cluster.start)
        stack.callback(cluster.stop)
        bbs = await stack.enter_async_context(BbsSimulator(pki.server))
        policy = await stack.enter_async_context(PolicyServerSimulator(pki.server))
        demo = Demo(workdir, lab, cluster, identities, pki, bbs, policy)
        nc = await connect(
            identities.watcher.client(cluster.urls, pki.server), "cfnft-watcher", inbox_prefix(Role.WATCHER)
        )
        stack.push_async_callback(nc.close)
        client = pki.client

        bbs_watcher = BbsWatcher(
            BbsWatcherConfig(url=bbs.url, ca_file=client.ca, cert_file=client.cert, key_file=client.key),
            StatePublisher(nc, "bbs", replicas=3),
        )
        spaces = await stack.enter_async_context(ContainerSpaces(nc, replicas=3))
        policy_watcher = PolicyWatcher(
            PolicyWatcherConfig(
                url=policy.url,
                ca_file=client.ca,
                cert_file=client.cert,
                key_file=client.key,
                poll_interval=0.2,
                asg_poll_interval=0.2,
            ),
            StatePublisher(nc, "policy", replicas=3),
            spaces,
        )
        await stack.enter_async_context(bbs_watcher)
        await stack.enter_async_context(policy_watcher)

        for cell in cells:
            await _start_cell(demo, stack, cell)
        print(
            f"   nats {', '.join(cluster.urls)} (stream with 3 replicas); BBS {bbs.url}; policy server {policy.url}",
            flush=True,
        )
        for cell in cells:
            metrics = demo.reconcilers[cell.cell_name].config.metrics_listen
            print(
                f"   cell {cell.cell_name}: namespace {cell.name}, overlay {cell.overlay_subnet}, "
                f"reconciler metrics http://{metrics}/metrics",
                flush=True,
            )

        print("\n== cf push frontend (cell a) and backend (cell b): containers attached by ptp + cfnft-cni", flush=True)
        (front,) = await asyncio.to_thread(demo.push, FRONTEND, [cells[0]])
        (back,) = await asyncio.to_thread(demo.push, BACKEND, [cells[1]])
        print(f"   frontend {front.ip} (handle {front.handle}), backend {back.ip} (handle {back.handle})")

        rejected, allowed = Outcome.REJECTED, Outcome.OPEN
        await _step(
            demo,
            "default deny: no security group, no policy",
            None,
            [
                Probe(front, "udp", DNS, 53, rejected),
                Probe(front, "tcp", WEB, 443, rejected),
                Probe(front, "tcp", back.ip, 8080, rejected),
            ],
        )
        await _step(
            demo,
            "a DNS security group, running default (policy server -> watcher -> NATS -> cells)",
            lambda: policy.add_security_group(
                "dns", [{"protocol": "udp", "destination": DNS, "ports": "53"}], guid="sg-dns", running_default=True
            ),
            [
                Probe(front, "udp", DNS, 53, allowed),
                Probe(back, "udp", DNS, 53, allowed),
                Probe(front, "tcp", WEB, 443, rejected),
            ],
        )
        await _step(
            demo,
            "c2c policy frontend -> backend tcp 8080 (cells a -> b)",
            lambda: policy.add_c2c_policy(C2CPolicySpec(FRONTEND, BACKEND, "tcp", 8080, 8080)),
            [
                Probe(front, "tcp", back.ip, 8080, allowed),
                Probe(back, "tcp", front.ip, 8080, rejected),
            ],
        )
        await _step(
            demo,
            "dynamic ASG: bind 'public-https' to the running space, no restart",
            lambda: policy.add_security_group(
                "public-https",
                [{"protocol": "tcp", "destination": "192.0.2.0/24", "ports": "443"}],
                guid="sg-https",
                running_spaces=[SPACE],
            ),
            [
                Probe(front, "tcp", WEB, 443, allowed),
                Probe(front, "tcp", WEB, 80, rejected),
            ],
        )
        leader = await stream_leader(nc)
        await _step(
            demo,
            f"kill -9 NATS node {leader}, the stream's leader; then a c2c policy backend -> frontend tcp 8080",
            lambda: _kill_then(cluster, leader, policy, C2CPolicySpec(BACKEND, FRONTEND, "tcp", 8080, 8080)),
            [
                Probe(back, "tcp", front.ip, 8080, allowed),
                Probe(front, "tcp", back.ip, 8080, allowed),
                Probe(front, "udp", DNS, 53, allowed),
            ],
            settle=FAILOVER_SETTLE,
        )
        await asyncio.to_thread(cluster.nodes[leader].start)
        print(f"   node {leader} is back and has caught up with the stream", flush=True)
        await _step(
            demo,
            "someone flushes table inet cfnft on cell a: the reconciler repairs it",
            lambda: cells[0].run(["nft", "flush", "table", "inet", "cfnft"]),
            [
                Probe(front, "tcp", WEB, 80, rejected),
                Probe(front, "tcp", WEB, 443, allowed),
            ],
        )

        wrong = [r for r in demo.results if not r.ok]
        print(f"\n{len(demo.results) - len(wrong)} of {len(demo.results)} probes as expected", flush=True)
        if keep:
            _explain(demo, cells)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
        return 1 if (wrong and ci) else 0


async def _kill_then(cluster: NatsCluster, node: str, policy: PolicyServerSimulator, spec: C2CPolicySpec) -> None:
    """A NATS node dies (SIGKILL), and CF changes something right after."""
    await asyncio.to_thread(cluster.nodes[node].stop, hard=True)
    policy.add_c2c_policy(spec)


async def _start_cell(demo: Demo, stack: contextlib.AsyncExitStack, cell: Cell) -> None:
    socket = demo.workdir / f"cell-{cell.cell_name}.sock"
    cfg = ReconcilerConfig(
        cell_id=cell.cell_name,
        nats=demo.identities.cell(cell.cell_name).client(demo.cluster.urls, demo.pki.server),
        netns=cell.name,
        socket_path=socket,
        state_dir=demo.workdir / f"state-{cell.cell_name}",
        metrics_listen=f"127.0.0.1:{free_port()}",
        drift_probe_seconds=0.5,
        # A lost NATS node shows within 1.5 s (three missed heartbeats); the consumer resumes elsewhere.
        consumer_heartbeat_seconds=0.5,
    )
    runner = NftRunner(netns=cell.name)
    stack.callback(runner.close)
    rec = Reconciler(cfg, runner)
    demo.reconcilers[cell.cell_name] = rec
    for site in await start_endpoints(rec, socket, cfg.metrics_listen):
        stack.push_async_callback(site.cleanup)
    task = asyncio.create_task(rec.run(), name=f"reconciler-{cell.cell_name}")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
    bin_dir = Path(sys.executable).parent
    conflist = {
        "cniVersion": "1.0.0",
        "name": "cfnft-demo",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(cell.overlay_subnet)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(demo.workdir / f"ipam-{cell.cell_name}"),
                },
            },
            {"type": "cfnft-cni", "socket_path": str(socket), "timeout_seconds": 10},
        ],
    }
    demo.runtimes[cell.cell_name] = CniRuntime(
        conflist,
        cni_path=["/usr/lib/cni", bin_dir],
        cache_dir=demo.workdir / f"cni-cache-{cell.cell_name}",
        host_netns=cell.name,
    )


def _explain(demo: Demo, cells: list[Cell]) -> None:
    print("\nThe foundation stays up until Ctrl-C. To look inside:")
    for cell in cells:
        print(f"  ip netns exec {cell.name} nft list table inet cfnft")
    operator = demo.identities.operator
    urls = " ".join(f"--nats-url {url}" for url in demo.cluster.urls)
    print(
        f"  cfnft status --cell a {urls} --nats-ca {demo.pki.client.ca} --nats-user {operator.user} "
        f"--nats-password-file {operator.password_file}"
    )
    for name, rec in demo.reconcilers.items():
        print(f"  curl http://{rec.config.metrics_listen}/metrics        (cell {name})")
    for i in demo.instances:
        print(f"  ip netns exec {i.netns.name} ...   ({i.name}, {i.ip})")
    print("Ctrl-C removes everything.", flush=True)
