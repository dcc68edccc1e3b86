"""A few thousand generated messages against the real reconciler over a real nats-server (seeded, so
a failure replays): valid objects, bad names, forged and mismatched subjects, garbage, duplicates,
random versions, huge rule sets, address and host-port clashes, deletions and whole-stream purges.

The generator keeps its own model of what a correct cell holds: per subject the last *valid*
message (a refused one changes nothing; a list message loses only its bad entries). After each
batch the kernel (FakeNft: the kernel would add nothing to what is compared) must equal the
compile of that model's valid subset — conflicts resolved in favour of the newest registration,
what cannot be enforced left out — and no valid object may be missing from the store.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import nats
from nats.js.client import JetStreamContext

from events import subjects
from events.messages import STATE_KINDS
from events.models import C2CPolicy, CellConfig, CellState, Container, EgressPolicy, SecurityGroup
from events.publisher import StatePublisher
from nft import diff, render_ruleset
from reconciler.admission import Limits, StateCheck
from reconciler.compact import Addresses
from reconciler.compile import TABLE, Compiler
from reconciler.conflicts import NATS_RECORD, Ranked, resolve
from reconciler.planning import plan
from reconciler.units import without
from tests.daemons import Daemon, eventually, running_daemon

SEED = 20240610
BATCHES = 24
PER_BATCH = 110
LIMITS = Limits(max_elements_per_group=300)
CELL = "a"
SENTINEL = "sentinel"


@dataclass
class Model:
    """What the cell must hold: the last valid message per subject, as objects."""

    containers: dict[str, tuple[Container, int]] = field(default_factory=dict)  # handle -> (container, stream seq)
    groups: dict[str, SecurityGroup] = field(default_factory=dict)
    c2c: dict[str, list[C2CPolicy]] = field(default_factory=dict)
    apps: dict[str, list[str]] = field(default_factory=dict)
    egress: list[EgressPolicy] = field(default_factory=list)
    config: CellConfig | None = None

    def state(self) -> CellState:
        kept, _ = resolve(Ranked(c, (NATS_RECORD, seq)) for c, seq in self.containers.values())
        return CellState.model_validate(
            {
                "cell_id": CELL,
                "containers": [c.model_dump(mode="json") for c in sorted(kept, key=lambda c: c.handle)],
                "security_groups": [self.groups[g].model_dump(mode="json") for g in sorted(self.groups)],
                "c2c_policies": [p.model_dump(mode="json") for app in sorted(self.c2c) for p in self.c2c[app]],
                "egress_policies": [p.model_dump(mode="json") for p in self.egress],
                "app_instances": {app: addrs for app, addrs in sorted(self.apps.items())},
                "config": (self.config or CellConfig()).model_dump(mode="json"),
            }
        )


class Generator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.published: list[tuple[str, bytes]] = []  # valid messages, for duplicates

    def guid(self, prefix: str, n: int) -> str:
        return f"{prefix}{self.rng.randrange(n)}"

    def ip(self) -> str:
        return f"10.255.1.{self.rng.randrange(2, 40)}"  # a small pool: clashes happen

    def container(self, handle: str) -> dict[str, Any]:
        c: dict[str, Any] = {
            "handle": handle,
            "ip": self.ip(),
            "app_guid": self.guid("app", 8),
            "space_guid": self.guid("space", 3),
            "workload": self.rng.choice(["app", "app", "task", "staging"]),
        }
        if self.rng.random() < 0.3:
            c["port_mappings"] = [{"host_port": 61000 + self.rng.randrange(6), "container_port": 8080}]
        return c

    def rule(self, huge: bool = False) -> dict[str, Any]:
        protocol = self.rng.choice(["tcp", "udp", "tcp", "all", "icmp"])
        if huge:
            dests = ",".join(f"198.51.100.{i}" for i in range(1, 120, 3))
            return {"protocol": "tcp", "destination": dests, "ports": ",".join(str(p) for p in range(80, 100, 2))}
        net = self.rng.choice(["192.0.2", "198.51.100", "203.0.113"])
        lo = self.rng.randrange(1, 200)
        dest = self.rng.choice([f"{net}.{lo}", f"{net}.{lo}-{net}.{lo + self.rng.randrange(1, 50)}", f"{net}.0/28"])
        rule: dict[str, Any] = {"protocol": protocol, "destination": dest}
        if protocol in ("tcp", "udp"):
            p = self.rng.randrange(1, 60000)
            rule["ports"] = self.rng.choice([str(p), f"{p}-{p + self.rng.randrange(1, 500)}", f"{p},{p + 7}"])
        if protocol == "icmp":
            rule |= {"type": self.rng.choice([-1, 0, 8]), "code": -1}
        return rule

    def group(self, guid: str) -> dict[str, Any]:
        huge = self.rng.random() < 0.05
        rules = [self.rule(huge)] + [self.rule() for _ in range(self.rng.randrange(3))]
        binding = self.rng.choice(["global", "space"])
        group: dict[str, Any] = {"guid": guid, "name": f"group {guid}", "rules": rules}
        if binding == "global":
            group["globally_enabled"] = {"running": True, "staging": self.rng.random() < 0.3}
        else:
            group["relationships"] = {"running_spaces": {"data": [{"guid": self.guid("space", 3)}]}}
        return group

    def policy(self, destination: str) -> dict[str, Any]:
        port = self.rng.randrange(1, 65000)
        return {
            "source": {"id": self.guid("app", 8)},
            "destination": {"id": destination, "protocol": self.rng.choice(["tcp", "udp"]),
                            "ports": {"start": port, "end": port + self.rng.randrange(0, 20)}},
        }  # fmt: skip


@dataclass
class Publisher:
    """Publishes generated messages and keeps the model of what the cell must hold."""

    js: JetStreamContext
    gen: Generator
    model: Model = field(default_factory=Model)

    async def send(self, subject: str, payload: object, *, valid: bool) -> int:
        if isinstance(payload, dict) and self.gen.rng.random() < 0.5:
            payload = {**payload, "version": self.gen.rng.randrange(2**63)}  # random versions mean nothing
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        ack = await self.js.publish(subject, data, stream=subjects.STATE_STREAM)
        if valid:
            self.gen.published.append((subject, data))
        return ack.seq

    async def container(self, handle: str, body: dict[str, Any] | None, cell: str = CELL) -> None:
        msg = {"kind": "container", "cell_id": cell, "handle": handle, "container": body}
        seq = await self.send(subjects.container(cell, handle), msg, valid=True)
        if cell == CELL:
            if body is None:
                self.model.containers.pop(handle, None)
            else:
                self.model.containers[handle] = (Container.model_validate(body), seq)

    async def group(self, guid: str, body: dict[str, Any] | None) -> None:
        await self.send(
            subjects.security_group(guid), {"kind": "asg", "guid": guid, "security_group": body}, valid=True
        )
        if body is None:
            self.model.groups.pop(guid, None)
        else:
            self.model.groups[guid] = SecurityGroup.model_validate(body)

    async def c2c(self, app: str, good: list[dict[str, Any]], bad: list[dict[str, Any]] | None = None) -> None:
        msg = {"kind": "c2c", "destination_app_guid": app, "policies": [*good, *(bad or [])]}
        await self.send(subjects.c2c_policies(app), msg, valid=not bad)
        if good:
            self.model.c2c[app] = [C2CPolicy.model_validate(p) for p in good]
        else:
            self.model.c2c.pop(app, None)

    async def app(self, app: str, good: list[str], bad: list[str] | None = None) -> None:
        msg = {"kind": "app", "app_guid": app, "addresses": [*good, *(bad or [])]}
        await self.send(subjects.app_instances(app), msg, valid=not bad)
        if good:
            self.model.apps[app] = sorted(good)
        else:
            self.model.apps.pop(app, None)

    async def config(self, dns: list[str]) -> None:
        config = {"dns_servers": dns}
        await self.send(subjects.cell_config(CELL), {"kind": "config", "cell_id": CELL, "config": config}, valid=True)
        self.model.config = CellConfig.model_validate(config)

    async def egress(self, policies: list[dict[str, Any]]) -> None:
        await self.send(subjects.EGRESS_POLICIES, {"kind": "egress", "policies": policies}, valid=True)
        self.model.egress = [EgressPolicy.model_validate(p) for p in policies]

    async def step(self) -> None:
        """One generated message: mostly valid, often hostile."""
        g, rng = self.gen, self.gen.rng
        roll = rng.random()
        if roll < 0.22:
            handle = g.guid("h", 30)
            await self.container(handle, g.container(handle) if rng.random() < 0.8 else None)
        elif roll < 0.27:
            handle = g.guid("h", 30)
            await self.container(handle, g.container(handle), cell="b")  # another cell's: never ours
        elif roll < 0.42:
            guid = g.guid("g", 12)
            await self.group(guid, g.group(guid) if rng.random() < 0.8 else None)
        elif roll < 0.50:
            app = g.guid("app", 8)
            good = [g.policy(app) for _ in range(rng.randrange(3))]
            bad = [g.policy("app-elsewhere")] if rng.random() < 0.3 else []  # a forged entry: dropped alone
            await self.c2c(app, good, bad)
        elif roll < 0.57:
            app = g.guid("app", 8)
            good = [f"10.255.{rng.randrange(2, 9)}.{rng.randrange(2, 250)}" for _ in range(rng.randrange(4))]
            await self.app(app, sorted(set(good)), ["fe80::1%eth0"] if rng.random() < 0.2 else [])
        elif roll < 0.60:
            await self.config([f"169.254.0.{rng.randrange(1, 9)}"])
        elif roll < 0.62:
            await self.egress([] if rng.random() < 0.5 else [{
                "source": {"id": g.guid("app", 8)},
                "destination": {"protocol": "tcp", "ips": [{"start": "192.0.2.50", "end": "192.0.2.60"}],
                                "ports": [{"start": 443, "end": 443}]},
            }])  # fmt: skip
        elif roll < 0.70 and g.published:
            subject, data = rng.choice(g.published[-50:])  # a duplicate of an earlier valid message
            await self.replay(subject, data)
        else:
            await self.hostile()

    async def replay(self, subject: str, data: bytes) -> None:
        doc = json.loads(data)
        match doc["kind"]:
            case "container":
                await self.container(doc["handle"], doc["container"], cell=doc["cell_id"])
            case "asg":
                await self.group(doc["guid"], doc["security_group"])
            case "c2c":
                await self.c2c(doc["destination_app_guid"], doc["policies"])
            case "app":
                await self.app(doc["app_guid"], doc["addresses"])
            case "config":
                await self.config([str(d) for d in doc["config"].get("dns_servers", [])])
            case "egress":
                await self.egress(doc["policies"])

    async def hostile(self) -> None:
        """A message the cell must refuse: the model does not change."""
        g, rng = self.gen, self.gen.rng
        handle, guid = g.guid("h", 30), g.guid("g", 12)
        choices: list[tuple[str, object]] = [
            (subjects.container(CELL, handle), {"kind": "container", "cell_id": CELL, "handle": handle,
                                                "container": {**g.container(handle), "app_guid": "bad:app"}}),
            (subjects.container(CELL, handle), {"kind": "container", "cell_id": CELL, "handle": handle,
                                                "container": {**g.container("someone-else")}}),
            (subjects.container(CELL, handle), {"kind": "container", "cell_id": CELL, "handle": handle,
                                                "container": {**g.container(handle), "port_mappings": [
                                                    {"host_port": 22, "container_port": 22}]}}),
            (subjects.container(CELL, handle), {"kind": "container", "cell_id": CELL, "handle": handle,
                                                "container": {**g.container(handle), "ipv6": "fe80::9%eth0"}}),
            (subjects.security_group(guid), {"kind": "asg", "guid": guid, "security_group": g.group("other")}),
            ('cfnft.state.asg.q"uote', {"kind": "asg", "guid": 'q"uote', "security_group": g.group('q"uote')}),
            ("cfnft.state.asg." + "x" * 200, {"kind": "asg", "guid": "x" * 200, "security_group": g.group("x" * 200)}),
            (subjects.security_group(guid), b"\x00\xffgarbage"),
            (subjects.security_group(guid), {"kind": "asg", "guid": guid, "security_group": None, "extra": True}),
            (subjects.c2c_policies("app1"), {"kind": "c2c", "destination_app_guid": "app2", "policies": []}),
            (subjects.cell_config(CELL), {"kind": "config", "cell_id": CELL,
                                          "config": {"dns_servers": ["fe80::1%lo"]}}),
            (subjects.app_instances("bad:app"), {"kind": "app", "app_guid": "bad:app", "addresses": ["10.255.3.3"]}),
            (subjects.EGRESS_POLICIES, {"kind": "egress", "policies": "all of them"}),
        ]  # fmt: skip
        subject, payload = rng.choice(choices)
        await self.send(subject, payload, valid=False)

    async def sentinels(self, batch: int) -> None:
        """One last valid message per consumer filter: once the cell holds them all, it has read the batch."""
        sentinel = {"handle": SENTINEL, "ip": "10.255.1.250", "app_guid": SENTINEL, "space_guid": "space0",
                    "workload": "app", "ports": [batch + 1]}  # fmt: skip
        await self.container(SENTINEL, sentinel)
        await self.group(SENTINEL, {"guid": SENTINEL, "name": f"batch {batch}", "rules": []})
        await self.c2c(SENTINEL, [self.gen.policy(SENTINEL) | {"source": {"id": f"batch-{batch}"}}])
        await self.app(SENTINEL, [f"10.255.9.{batch + 1}"])
        await self.config([f"169.254.1.{batch + 1}"])
        await self.egress([{"source": {"id": SENTINEL},
                            "destination": {"protocol": "tcp", "ips": [{"start": "192.0.2.99", "end": "192.0.2.99"}],
                                            "ports": [{"start": batch + 1, "end": batch + 1}]}}])  # fmt: skip

    async def republish_all(self) -> None:
        """After a purge: publish the model again, then the epoch marker that declares it complete."""
        for handle, (c, _) in sorted(self.model.containers.items()):
            await self.container(handle, c.model_dump(mode="json"))
        for guid, group in sorted(self.model.groups.items()):
            await self.group(guid, group.model_dump(mode="json"))
        for app, policies in sorted(self.model.c2c.items()):
            await self.c2c(app, [p.model_dump(mode="json") for p in policies])
        for app, addrs in sorted(self.model.apps.items()):
            await self.app(app, addrs)


def read_batch(d: Daemon, batch: int) -> bool:
    store = d.rec.store
    sentinel = store.containers.get(SENTINEL)
    group = store.groups.get(SENTINEL)
    return (
        sentinel is not None
        and sentinel.ports == [batch + 1]
        and group is not None
        and group.group().name == f"batch {batch}"
        and store.apps.get(SENTINEL) == Addresses.of([ip_address(f"10.255.9.{batch + 1}")])
        and SENTINEL in store.c2c
        and any(p.source.id == f"batch-{batch}" for p in store.c2c[SENTINEL].policies())
        and store.config is not None
        and [str(a) for a in store.config.dns_servers] == [f"169.254.1.{batch + 1}"]
        and any(p.source.id == SENTINEL and p.destination.ports[0].start == batch + 1 for p in store.egress)
    )


def expected(model: Model) -> tuple[CellState, Any]:
    state = model.state()
    excluded = StateCheck(LIMITS).problems(state)
    planned = plan(Compiler(), without(state, {u.unit for u in excluded if u.unit}), None, rebuild=False, limits=LIMITS)
    return planned.state, planned.desired


def divergence(d: Daemon, wanted: CellState) -> str:
    """Where a failure comes from: the cell's own reference compile of what it admitted, against
    its kernel (the incremental path went wrong) and against the test's model (the intake did)."""
    admitted = d.rec.intake.admitted.state()
    own = plan(Compiler(), admitted, None, rebuild=False, limits=LIMITS).desired
    lines = [f"the cell's reference compile vs its kernel:\n{diff(own, d.kernel.read(TABLE)).render() or '(same)'}"]
    mine = {c.handle: c for c in admitted.containers}
    for c in wanted.containers:
        if mine.get(c.handle) != c:
            lines.append(f"container {c.handle}: model {c!r}, cell {mine.get(c.handle)!r}")
    groups = {g.guid: g for g in admitted.security_groups}
    for g in wanted.security_groups:
        if groups.get(g.guid) != g:
            lines.append(f"group {g.guid}: model {g!r}, cell {groups.get(g.guid)!r}")
    extra = sorted(set(groups) - {g.guid for g in wanted.security_groups})
    if extra:
        lines.append(f"groups only the cell admitted: {extra}")
    for what in ("c2c_policies", "egress_policies", "app_instances", "config"):
        if getattr(admitted, what) != getattr(wanted, what):
            lines.append(f"{what}: model {getattr(wanted, what)!r}, cell {getattr(admitted, what)!r}")
    return "\n".join(lines)


async def test_thousands_of_hostile_messages_leave_exactly_the_valid_subset_enforced(nats_server, tmp_path):
    rng = random.Random(SEED)
    nc = await nats.connect(nats_server.url)
    marker = StatePublisher(nc, "fuzz")
    try:
        pub = Publisher(nc.jetstream(), Generator(rng))
        await marker.mark_complete(STATE_KINDS)  # creates the stream, as a publisher does
        async with running_daemon(tmp_path, nats_server.url, limits=LIMITS, state_check_seconds=0.2) as d:
            sent = 0
            purged = 0
            for batch in range(BATCHES):
                for _ in range(PER_BATCH):
                    await pub.step()
                    sent += 1
                if batch in (8, 17):  # the stream purged under the cell, then published whole again
                    await nc.jetstream().purge_stream(subjects.STATE_STREAM)
                    await eventually(lambda: d.rec.plane.kept, what=f"batch {batch}: the purge noticed")
                    marker = StatePublisher(nc, "fuzz")
                    await pub.republish_all()
                    await marker.mark_complete(STATE_KINDS)
                    purged += 1
                await pub.sentinels(batch)
                await eventually(lambda: read_batch(d, batch), what=f"batch {batch} read")
                # Ready was true before the batch too: wait for the commit of what was read.
                generation = d.rec.generation
                await eventually(
                    lambda: d.rec.ready and d.rec.committed_generation >= generation,
                    what=f"batch {batch} committed",
                )
                state, desired = expected(pub.model)
                kernel = d.kernel.read(TABLE)
                leftover = diff(desired, kernel)
                assert leftover.is_empty, (
                    f"batch {batch}: the kernel is not the valid subset:\n{leftover.render()}\n{divergence(d, state)}"
                )
                assert d.kernel.dump() == render_ruleset(desired)
                assert set(d.rec.store.groups) == set(pub.model.groups), f"batch {batch}: a valid group was lost"
                assert {c.handle for c in state.containers} <= set(d.rec.store.containers)
                assert d.rec.fatal is None
            assert sent >= 2500 and purged == 2
            assert d.metric("cfnft_bad_messages_total") > 300, "the generator's hostile messages arrived"
    finally:
        await nc.close()
