"""The state plane as deployed: a 3-node nats-server cluster with TLS and the role identities.

- Publish -> kernel commit on the full cell, with the state stream on one replica and then, scaled
  up as a watcher with stream_replicas 3 does it, on three, in the same cluster and the same run:
  what replication costs a change.
- Failover: with three replicas, the node leading the stream is stopped, and a watcher (the watcher
  identity, retrying as watchers do) publishes a change at once; measured from the stop to the
  kernel commit on the cell. Once with SIGKILL (a crash: the survivors must notice and elect, which
  nats-server's raft does after 4-9 s), once with SIGTERM (the leader hands over), and once in lame
  duck mode (what the cfnft-nats drain script does before BOSH stops a node: the leader hands over,
  then moves its clients away over 30 s; the node is waited for until it exits).
  The cell reads as its own identity and resumes its consumers after a lost server.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS

from cfnft.publish import publish_state
from events import subjects
from events.connect import connect
from events.messages import C2CPoliciesMessage
from events.models import CellState, load_cell_state
from events.permissions import Role, inbox_prefix
from events.publisher import StatePublisher
from lab.bench.e2e import c2c_change, committed, publish_to_commit
from lab.bench.incremental import Latencies
from lab.bench.kernel import namespace
from lab.bench.running import in_sync
from lab.natsconf import Identities, LameDuck, ServerSettings
from lab.natsserver import NatsCluster, stream_leader
from lab.pki import Pki, make_pki
from nft import NftRunner
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler


class Departure(enum.Enum):
    """How the stream's leader leaves."""

    KILL = "kill -9"
    TERM = "SIGTERM"
    LAME_DUCK = "lame duck (drain)"


@dataclass
class Failover:
    r1: Latencies
    r3: Latencies
    killed: list[float]  # seconds from SIGKILL of the stream leader to the next change committed
    stopped: list[float]  # ... from SIGTERM
    drained: list[float]  # ... from lame duck mode (SIGUSR2)

    @staticmethod
    def median(samples: list[float]) -> float:
        return statistics.median(samples)


def failover(doc: dict, changes: int = 200, kills: int = 3) -> Failover:
    state = load_cell_state(doc)
    with tempfile.TemporaryDirectory(prefix="cfnft-bench-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        ids = Identities(work / "identities", [state.cell_id])
        # Lame duck as short as nats-server allows (BOSH's default is 30 s, with a 10 s grace).
        settings = ServerSettings(users=ids.users(), tls=pki.server, lame_duck=LameDuck(30, 1))
        with NatsCluster(work / "cluster", settings=settings) as cluster:
            return asyncio.run(_measure(state, cluster, ids, pki, work, changes, kills))


async def _measure(
    state: CellState, cluster: NatsCluster, ids: Identities, pki: Pki, work: Path, changes: int, kills: int
) -> Failover:
    nc = await connect(ids.watcher.client(cluster.urls, pki.server), "bench-watcher", inbox_prefix(Role.WATCHER))
    try:
        latencies = {}
        for replicas in (1, 3):
            # The watcher scales the same stream from one replica to three, as a deployment would.
            await publish_state(nc, state, replicas=replicas)
            await _replicas_current(nc, replicas)
            publisher = StatePublisher(nc, "bench")
            await publisher.load_published()  # as a watcher starts: it writes over what it has read

            async def publish(msg: C2CPoliciesMessage) -> None:
                await publisher.publish(msg)

            async with _cell(state, cluster, ids, pki, work, f"r{replicas}") as rec:
                samples = [await publish_to_commit(rec, state, i, publish) for i in range(changes)]
                latencies[replicas] = Latencies(samples)
                lost: dict[Departure, list[float]] = {how: [] for how in Departure}
                if replicas == 3:
                    for k, how in enumerate(how for how in Departure for _ in range(kills)):
                        lost[how].append(await _leader_lost(rec, state, cluster, nc, publisher, k, how))
        return Failover(
            latencies[1], latencies[3], lost[Departure.KILL], lost[Departure.TERM], lost[Departure.LAME_DUCK]
        )
    finally:
        await nc.close()


async def _replicas_current(nc: NATS, replicas: int, timeout: float = 60.0) -> None:
    """Until the stream has `replicas` replicas and every follower has caught up."""
    deadline = time.monotonic() + timeout
    while True:
        info = await nc.jetstream().stream_info(subjects.STATE_STREAM)
        followers = (info.cluster.replicas or []) if info.cluster is not None else []
        caught_up = len(followers) == replicas - 1 and all(p.current for p in followers)
        if info.config.num_replicas == replicas and caught_up:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the state stream did not get {replicas} current replicas")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _cell(
    state: CellState, cluster: NatsCluster, ids: Identities, pki: Pki, work: Path, role: str
) -> AsyncIterator[Reconciler]:
    with namespace(role) as ns, NftRunner(netns=ns) as runner:
        cfg = ReconcilerConfig(
            cell_id=state.cell_id,
            nats=ids.cell(state.cell_id).client(cluster.urls, pki.server),
            netns=ns,
            socket_path=work / f"{role}.sock",
            state_dir=work / f"state-{role}",
            drift_probe_seconds=3600,
            consumer_heartbeat_seconds=0.5,
        )
        async with in_sync(Reconciler(cfg, runner)) as rec:
            yield rec


async def _leader_lost(
    rec: Reconciler,
    state: CellState,
    cluster: NatsCluster,
    nc: NATS,
    publisher: StatePublisher,
    round_no: int,
    how: Departure,
) -> float:
    """Make the stream's leader leave, publish a change at once, and time the departure to the
    commit; then bring the node back and wait until it has caught up."""
    node = cluster.nodes[await stream_leader(nc)]
    msg = c2c_change(state, 0, port=7000 + round_no)  # a policy no earlier round had
    t0 = time.perf_counter()
    if how is Departure.LAME_DUCK:
        node.lame_duck()
    else:
        await asyncio.to_thread(node.stop, hard=how is Departure.KILL)
    await publisher.publish(msg)
    await committed(rec, msg)
    elapsed = time.perf_counter() - t0
    await asyncio.to_thread(node.wait_exited, 90)
    await asyncio.to_thread(node.start)
    return elapsed
