"""`cfnft bench --scenario resume`: many cells resuming at once after a NATS node is lost.

A 3-node cluster with TLS and the role identities holds the state stream on three replicas. Each
simulated cell is what a reconciler is on the NATS side: its own connection as its own identity and
the real state feed (reconciler/feed.py: seven consumers, resumed after a reconnect or missed
heartbeats), into a sink that only records what arrives; there is no kernel. Once every cell is in
sync, the stream's leader is killed (SIGKILL) and a change every cell reads is published at once.

Measured per cell: the moment it holds the change, from the kill (mostly nats-server's election,
which no cell can shorten) and from the stream's acknowledgement of the change (what resuming costs
the cell). With the consumers lost with the node and the connections it held, every cell that had
something there resumes at once (resumes are not jittered; only full replays are). Run side by side
for a small and a larger number of cells, to show how the worst cell's wait grows with the number of
cells resuming together, and counted: the consumers re-created, the warnings the feeds logged while
retrying JetStream (one per new problem, not per attempt), and any full replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from nats.aio.client import Client as NATS

from events.connect import connect
from events.messages import AppInstancesMessage, Message
from events.permissions import Role, inbox_prefix
from events.publisher import StatePublisher
from lab.natsconf import Identities, ServerSettings
from lab.natsserver import NatsCluster, stream_leader
from lab.pki import Pki, make_pki
from reconciler.admission import Limits
from reconciler.feed import StateFeed

PROBE_APP = "resume-probe"


@dataclass
class Resume:
    cells: int
    waits: list[float]  # seconds from the kill to each cell holding the change published after it
    after_ack: list[float]  # ... from the stream acknowledging that change (after the election)
    resumes: int  # consumers re-created without a replay, all cells
    warnings: int  # the feeds' warnings while retrying (each a new problem: they say it once, then retry)
    replays: int  # full replays after the first, all cells

    @property
    def worst(self) -> float:
        return max(self.waits)

    @property
    def worst_after_ack(self) -> float:
        return max(self.after_ack)

    @property
    def p50_after_ack(self) -> float:
        return statistics.median(self.after_ack)


@dataclass
class _Cell:
    """One simulated cell: its feed, and the sink the feed delivers to (when it was in sync, when the
    probe arrived)."""

    in_sync: asyncio.Event = field(default_factory=asyncio.Event)
    probe: asyncio.Event = field(default_factory=asyncio.Event)
    feed: StateFeed | None = None
    probe_at: float = 0.0
    replays: int = 0
    resumes: int = 0

    def replay_started(self) -> None:
        self.replays += 1

    def message(self, msg: Message, seq: int, problems: list[str]) -> None:
        if isinstance(msg, AppInstancesMessage) and msg.app_guid == PROBE_APP:  # published after the kill
            self.probe_at = time.perf_counter()
            self.probe.set()

    def refused(self, subject: str, problems: list[str]) -> None:
        raise AssertionError(f"the benchmark published a message the feed refused: {subject}: {problems}")

    def replay_done(self, stream_created: str) -> None:
        self.in_sync.set()

    def resumed(self) -> None:
        self.resumes += 1

    def stream_missing(self, reason: str) -> None:
        pass


class _WarningCount(logging.Handler):
    """Counts the feeds' warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def resume(cell_counts: tuple[int, ...]) -> list[Resume]:
    """One cluster per count, so that each starts from the same clean state."""
    results = []
    for count in cell_counts:
        with tempfile.TemporaryDirectory(prefix="cfnft-bench-") as tmp:
            work = Path(tmp)
            pki = make_pki(work / "pki")
            cells = [f"c{i:04d}" for i in range(count)]
            ids = Identities(work / "identities", cells)
            with NatsCluster(work / "cluster", settings=ServerSettings(users=ids.users(), tls=pki.server)) as cluster:
                results.append(asyncio.run(_measure(cluster, ids, pki, cells)))
    return results


async def _measure(cluster: NatsCluster, ids: Identities, pki: Pki, cells: list[str]) -> Resume:
    watcher = await connect(ids.watcher.client(cluster.urls, pki.server), "bench-watcher", inbox_prefix(Role.WATCHER))
    feed_log = logging.getLogger("reconciler.feed")
    warnings = _WarningCount()
    try:
        publisher = StatePublisher(watcher, "bench", replicas=3)
        for i in range(50):  # something for every cell to replay
            await publisher.publish(AppInstancesMessage(app_guid=f"app-{i}", addresses=[IPv4Address("10.255.0.2") + i]))
        async with _cells(cluster, ids, pki, cells) as sinks:
            await asyncio.wait_for(asyncio.gather(*(s.in_sync.wait() for s in sinks)), timeout=300)
            node = cluster.nodes[await stream_leader(watcher)]
            probe = AppInstancesMessage(app_guid=PROBE_APP, addresses=[IPv4Address("10.255.255.1")])
            feed_log.addHandler(warnings)
            feed_log.propagate = False  # counted, not printed: a hundred cells say the same
            t0 = time.perf_counter()
            await asyncio.to_thread(node.stop, hard=True)
            await publisher.publish(probe)
            acked = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(s.probe.wait() for s in sinks)), timeout=300)
            return Resume(
                cells=len(cells),
                waits=[s.probe_at - t0 for s in sinks],
                after_ack=[max(0.0, s.probe_at - acked) for s in sinks],
                resumes=sum(s.resumes for s in sinks),
                warnings=warnings.count,
                replays=sum(s.replays - 1 for s in sinks),
            )
    finally:
        feed_log.removeHandler(warnings)
        feed_log.propagate = True
        await watcher.close()


@contextlib.asynccontextmanager
async def _cells(cluster: NatsCluster, ids: Identities, pki: Pki, cells: list[str]) -> AsyncIterator[list[_Cell]]:
    sinks: list[_Cell] = []
    connections: list[NATS] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for cell in cells:
            sink = _Cell()

            async def reconnected(sink: _Cell = sink) -> None:  # as reconciler/source.py does
                if sink.feed is not None:
                    sink.feed.reconnected()

            cfg = ids.cell(cell).client(cluster.urls, pki.server)
            nc = await connect(cfg, f"bench-{cell}", inbox_prefix(Role.CELL, cell), reconnected_cb=reconnected)
            sink.feed = StateFeed(nc, cell, sink, Limits())
            sinks.append(sink)
            connections.append(nc)
            tasks.append(asyncio.create_task(sink.feed.run(), name=f"feed-{cell}"))
        yield sinks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for nc in connections:
            with contextlib.suppress(Exception):
                await nc.close()
