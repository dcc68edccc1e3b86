"""`cfnft bench --scenario foundation`: one cell of a large foundation (docs/design.md §5).

The stream holds the whole foundation (`lab.bench.generate.foundation`: 30,000 apps with 90,000
addresses, 2,000 security groups, 4,000 c2c policies) and the cell's 250 containers, in a real
nats-server. Measured side by side in one run:

  publish      `cfnft publish` of the foundation into an empty stream, beside raw JetStream
               publishing of the same payloads from the same client (nats-py's async publishing,
               and one acknowledged publish at a time)
  process      a `cfnft reconcile` process: start to /readyz on an empty kernel, and again after a
               restart (table and saved state in place), then until the whole stream is replayed
               too; its RSS then; then its CPU per app-address update that does not concern the
               cell, beside a bare nats-py JetStream subscriber process receiving the same updates
               (`lab.bench.jsclient`)
  in process   a reconciler in this process (so the commit moment is known exactly): a container
               added (register -> commit) and a global security group edited (NATS publish ->
               commit) at 250 and at 1,000 local containers; a c2c change (publish -> commit)
               while another process publishes 1,000 irrelevant updates per second

CPU is read from /proc (user + system, all threads) before and after the updates, less what the
process spends idle over the same time (measured just before).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from cfnft.publish import publish_state, state_messages
from events import subjects
from events.connect import NatsConfig
from events.messages import AppInstancesMessage, C2CPoliciesMessage, Message, SecurityGroupMessage
from events.models import C2CPolicy, CellState, SecurityGroup, load_cell_state
from events.publisher import ensure_state_stream
from lab.bench.generate import FoundationShape, foundation, foundation_address, irrelevant_apps
from lab.bench.incremental import Latencies
from lab.bench.jsclient import Payload, paced_publish, raw_publish
from lab.bench.kernel import namespace
from lab.bench.process import ReconcileProcess, cpu_seconds, reconcile_process, rss, write_config
from lab.bench.running import in_sync
from lab.natsserver import NatsServer
from nft import NftRunner
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler

FLOOD_RATE = 1000.0  # irrelevant updates per second, as in a foundation-wide rolling restart
WINDOW = 1000  # acks in flight for raw JetStream publishing


@dataclass
class Publishing:
    objects: int
    cfnft_s: float
    raw_s: float
    raw_sequential_s: float


@dataclass
class Process:
    ready_first_s: float  # start to ready: the replay of the whole stream
    rss_first: int
    ready_restart_s: float  # restart to ready: on the saved state
    replayed_restart_s: float  # restart to ready with the whole stream replayed
    rss_restart: int
    updates: int
    cpu_per_update_s: float
    bare_cpu_per_update_s: float


@dataclass
class Changes:
    add: Latencies
    edit: Latencies


@dataclass
class FoundationResult:
    shape: FoundationShape
    publishing: Publishing
    process: Process
    at_250: Changes
    at_1000: Changes
    relevant_under_flood: Latencies


def foundation_bench(quick: bool) -> FoundationResult:
    shape = FoundationShape()
    if quick:  # a tenth of the foundation: a smoke run
        shape = FoundationShape(apps=3_000, spaces=300, groups=200, c2c_policies=400)
    big = FoundationShape(**{**shape.__dict__, "containers": 1000})
    n = 20 if quick else 100
    with tempfile.TemporaryDirectory(prefix="cfnft-bench-") as tmp, NatsServer(Path(tmp) / "nats") as server:
        return asyncio.run(_run(server.url, Path(tmp), shape, big, n, quick))


async def _run(url: str, tmp: Path, shape: FoundationShape, big: FoundationShape, n: int, quick: bool):
    doc = foundation(shape)
    state = load_cell_state(doc)
    payloads = _payloads(state)
    updates = _irrelevant_updates(doc, 2_000 if quick else 10_000)
    nc = await nats.connect(url)
    try:
        publishing = await _publishing(nc, state, payloads)  # leaves the foundation in the stream
        process = await asyncio.to_thread(_process, url, tmp, state.cell_id, len(payloads), updates)
        at_250, relevant = await _in_process(url, tmp, state, n, updates)
        big_state = load_cell_state(foundation(big))
        await _load(nc, _payloads(big_state))
        at_1000, _ = await _in_process(url, tmp, big_state, n, None)
    finally:
        await nc.close()
    return FoundationResult(shape, publishing, process, at_250, at_1000, relevant)


def _payloads(state: CellState) -> list[Payload]:
    return [(m.subject(), m.model_dump_json().encode()) for m in state_messages(state)]


def _irrelevant_updates(doc: dict, count: int) -> list[Payload]:
    """App-address updates (an instance moves, as in a rolling restart) of apps that do not concern the cell."""
    apps = irrelevant_apps(doc)
    out = []
    for i in range(count):
        app = apps[i % len(apps)]
        addresses = [*doc["app_instances"][app][1:], str(foundation_address(1 + i % 999, 1000 + i % 20))]
        msg = AppInstancesMessage.model_validate({"version": time.time_ns(), "app_guid": app, "addresses": addresses})
        out.append((msg.subject(), msg.model_dump_json().encode()))
    return out


async def _fresh_stream(nc: NATS) -> None:
    with contextlib.suppress(NotFoundError):
        await nc.jetstream().delete_stream(subjects.STATE_STREAM)
    await ensure_state_stream(nc)


async def _load(nc: NATS, payloads: list[Payload]) -> None:
    await _fresh_stream(nc)
    await raw_publish(nc, payloads, WINDOW)


async def _publishing(nc: NATS, state: CellState, payloads: list[Payload]) -> Publishing:
    async def timed(coro) -> float:
        await _fresh_stream(nc)
        t = time.perf_counter()
        await coro
        return time.perf_counter() - t

    raw_s = await timed(raw_publish(nc, payloads, WINDOW))
    raw_sequential_s = await timed(raw_publish(nc, payloads, 1))
    cfnft_s = await timed(publish_state(nc, state))
    return Publishing(len(payloads), cfnft_s, raw_s, raw_sequential_s)


# ---------------------------------------------------------------------------------------------- a process


def _process(url: str, tmp: Path, cell_id: str, objects: int, updates: list[Payload]) -> Process:
    """RSS is read once the stream is taken in and the process idles again."""
    with namespace("foundation") as ns:
        config = tmp / "reconciler.json"
        # Only the messages' cost is measured: no drift probes meanwhile.
        port = write_config(config, cell_id, url, ns, drift_probe_seconds=3600, full_check_seconds=3600)
        with reconcile_process(config, port) as first:
            first.wait_replayed(objects)
            _settle(first.pid)
            rss_first = rss(first.pid)
        with reconcile_process(config, port) as restarted:
            replayed = restarted.wait_replayed(objects)
            _settle(restarted.pid)
            rss_restart = rss(restarted.pid)
            ours, bare = _cpu_per_update(url, restarted, updates)
    return Process(first.ready_s, rss_first, restarted.ready_s, replayed, rss_restart, len(updates), ours, bare)


def _cpu_per_update(url: str, reconciler: ReconcileProcess, updates: list[Payload]) -> tuple[float, float]:
    """CPU per update of the reconciler and of a bare subscriber receiving the same updates."""
    bare = subprocess.Popen(
        [sys.executable, "-m", "lab.bench.jsclient", "subscribe", url, f"{subjects.STATE_PREFIX}.app.*",
         str(len(updates))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert bare.stdout is not None and bare.stdin is not None
    try:
        if bare.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare subscriber did not start")
        pids = (reconciler.pid, bare.pid)
        idle_rate = [_settle(p) for p in pids]
        t0, cpu0 = time.perf_counter(), [cpu_seconds(p) for p in pids]
        received0 = reconciler.messages_received()
        asyncio.run(_publish_paced(url, updates, FLOOD_RATE))
        if bare.stdout.readline().strip() != "done":
            raise RuntimeError("the bare subscriber did not receive every update")
        deadline = time.perf_counter() + 60
        while reconciler.messages_received() < received0 + len(updates):
            if time.perf_counter() > deadline:
                raise RuntimeError("the reconciler did not receive every update")
            time.sleep(0.25)
        _settle(reconciler.pid)  # whatever the last updates set off
        t1, cpu1 = time.perf_counter(), [cpu_seconds(p) for p in pids]
        ours, theirs = ((c1 - c0 - rate * (t1 - t0)) / len(updates) for c0, c1, rate in zip(cpu0, cpu1, idle_rate))
        return ours, theirs
    finally:
        bare.stdin.close()
        bare.wait(timeout=10)


def _settle(pid: int, window: float = 1.0, timeout: float = 60.0) -> float:
    """Wait until process `pid` idles (less than 2% of a CPU over `window` seconds, e.g. done with
    saving its state after it got ready); return its CPU seconds per second then."""
    deadline = time.perf_counter() + timeout
    while True:
        before = cpu_seconds(pid)
        time.sleep(window)
        rate = (cpu_seconds(pid) - before) / window
        if rate < 0.02 or time.perf_counter() > deadline:
            return rate


async def _publish_paced(url: str, payloads: list[Payload], rate: float) -> None:
    nc = await nats.connect(url)
    try:
        await paced_publish(nc, payloads, rate, rounds=1)
    finally:
        await nc.close()


# ---------------------------------------------------------------------------------------------- in process


@contextlib.asynccontextmanager
async def _reconciler(url: str, tmp: Path, state: CellState) -> AsyncIterator[tuple[Reconciler, _Tap]]:
    with namespace("foundation") as ns, NftRunner(netns=ns) as runner:
        cfg = ReconcilerConfig(
            cell_id=state.cell_id,
            nats=NatsConfig(servers=[url], insecure=True),
            netns=ns,
            socket_path=tmp / "in-process.sock",
            state_dir=tmp / f"in-process-{len(state.containers)}",
            metrics_listen="",
            drift_probe_seconds=3600,
        )
        rec = Reconciler(cfg, runner)
        tap = _Tap(rec)
        async with in_sync(rec, timeout=300):
            yield rec, tap


async def _in_process(
    url: str, tmp: Path, state: CellState, n: int, updates: list[Payload] | None
) -> tuple[Changes, Latencies]:
    nc = await nats.connect(url)
    try:
        async with _reconciler(url, tmp, state) as (rec, tap):
            adds = await _adds(rec, state, n)
            edits = await _edits(nc, tap, state, max(10, n // 2))
            relevant = Latencies([])
            if updates is not None:
                relevant = await _relevant_under_flood(url, nc, tap, state, n * 2, updates, tmp)
    finally:
        await nc.close()
    return Changes(adds, edits), relevant


async def _adds(rec: Reconciler, state: CellState, n: int) -> Latencies:
    """A container of a local app registered (as the CNI endpoint does) until committed; each taken
    away again untimed, so that every sample meets a cell of the same size."""
    template = state.containers[0]
    ip = foundation_address(0, len(state.containers) + 5)
    samples = []
    for i in range(n):
        container = template.model_copy(update={"handle": f"bench-add-{i}", "ip": ip})
        t = time.perf_counter()
        await rec.wait_committed(rec.register(container), 10)
        samples.append(time.perf_counter() - t)
        await rec.wait_committed(rec.unregister(container.handle), 10)
    return Latencies(samples)


class _Tap:
    """Tells when the reconciler takes in a given message, and the generation that holds it: what
    to wait for to see that message committed, whatever arrives after it."""

    def __init__(self, rec: Reconciler) -> None:
        self._waiting: dict[tuple[str, int], asyncio.Future[int]] = {}
        intake = rec.intake
        take_in = intake._take_message  # where a message reaches the store (after a running compile, if one is)

        def tapped(msg: Message, seq: int) -> None:
            take_in(msg, seq)
            fut = self._waiting.pop((msg.subject(), msg.version), None)
            if fut is not None:
                fut.set_result(intake.generation)

        intake._take_message = tapped  # type: ignore[method-assign]  # before run(): the feed takes it from there
        self._rec = rec

    async def committed(self, nc: NATS, msg: Message) -> None:
        """Publish `msg` and wait until the reconciler has committed it."""
        fut = self._waiting[(msg.subject(), msg.version)] = asyncio.get_running_loop().create_future()
        await nc.jetstream().publish(msg.subject(), msg.model_dump_json().encode())
        await self._rec.wait_committed(await asyncio.wait_for(fut, 10), 10)


async def _edits(nc: NATS, tap: _Tap, state: CellState, n: int) -> Latencies:
    """A rule added to a global running group (it applies to every local app container), published
    on NATS until committed."""
    raw = next(g for g in state.security_groups if g.globally_enabled.running).model_dump(mode="json")
    samples = []
    for i in range(n):
        raw["rules"].append({"protocol": "tcp", "destination": f"100.126.{i % 250}.{i // 250}", "ports": "443"})
        msg = SecurityGroupMessage(version=time.time_ns(), guid=raw["guid"], security_group=SecurityGroup(**raw))
        t = time.perf_counter()
        await tap.committed(nc, msg)
        samples.append(time.perf_counter() - t)
    return Latencies(samples)


async def _relevant_under_flood(
    url: str, nc: NATS, tap: _Tap, state: CellState, n: int, updates: list[Payload], tmp: Path
) -> Latencies:
    """c2c changes towards a local app (a policy added, then removed), publish -> commit, while another
    process publishes irrelevant updates at FLOOD_RATE."""
    file = tmp / "flood.json"
    file.write_text(json.dumps([[s, d.decode()] for s, d in updates]))
    flood = subprocess.Popen(
        [sys.executable, "-m", "lab.bench.jsclient", "flood", url, str(FLOOD_RATE), str(file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert flood.stdout is not None
    try:
        if await asyncio.to_thread(flood.stdout.readline) != "ready\n":
            raise RuntimeError("the flood publisher did not start")
        await asyncio.sleep(1.0)
        target = state.containers[0]
        existing = [p for p in state.c2c_policies if p.destination.id == target.app_guid]
        extra = C2CPolicy.model_validate(
            {
                "source": {"id": state.containers[1].app_guid},
                "destination": {"id": target.app_guid, "protocol": "tcp", "ports": {"start": 7777, "end": 7777}},
            }
        )
        samples = []
        for i in range(n):
            policies = existing + ([extra] if i % 2 == 0 else [])
            msg = C2CPoliciesMessage(version=time.time_ns(), destination_app_guid=target.app_guid, policies=policies)
            t = time.perf_counter()
            await tap.committed(nc, msg)
            samples.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)
        return Latencies(samples)
    finally:
        flood.terminate()
        flood.wait(timeout=10)
