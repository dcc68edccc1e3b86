"""Failover without loss: a 3-node nats-server cluster (TLS, the role identities) holding the state
stream with three replicas, two cells' reconcilers reading it as their own identities, and a
publisher writing a few hundred changes while the stream leader is killed, brought back, and then
the next leader is killed too.

Every cell ends with every change, applies each object's messages in stream order and each at most once,
and never replays the stream again: each consumer it lost resumes where it was. The cells enforce
into FakeNft (the kernel is not what is under test here).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from events import subjects
from events.connect import connect
from events.messages import AppInstancesMessage, ContainerMessage, Message
from events.models import Container
from events.permissions import Permissions, Role, inbox_prefix
from events.publisher import StatePublisher, ensure_state_stream
from lab.natsconf import Identities, Identity, LameDuck, NatsUser, ServerSettings
from lab.natsserver import NatsCluster, stream_leader
from lab.pki import Pki, make_pki
from nft import FakeNft
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler
from tests.running import running, until

pytestmark = pytest.mark.nats

CELLS = ("a", "b")
CHANGES = 300
APPS = 20


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def identities(tmp_path: Path) -> Identities:
    return Identities(tmp_path / "identities", CELLS)


# As short as nats-server allows (30 s), so that a node leaving in lame duck mode holds the test up
# no longer than it must.
LAME_DUCK = LameDuck(duration_seconds=30, grace_seconds=10)


ADMIN_PASSWORD = "admin-password"


@pytest.fixture
def admin(tmp_path: Path) -> Identity:
    """The test's own hand on the cluster (moving a stream's leadership); no cfnft role has it."""
    password = tmp_path / "admin.password"
    password.write_text(ADMIN_PASSWORD)
    return Identity("admin", password, Permissions(publish=(">",), subscribe=(">",)))


@pytest.fixture
def cluster(tmp_path: Path, pki: Pki, identities: Identities, admin: Identity) -> Iterator[NatsCluster]:
    users = (*identities.users(), NatsUser(admin.user, ADMIN_PASSWORD, admin.permissions))
    settings = ServerSettings(users=users, tls=pki.server, lame_duck=LAME_DUCK)
    with NatsCluster(tmp_path / "cluster", settings=settings) as c:
        yield c


def change(i: int) -> Message:
    """Change i: alternately an app's instance addresses (every cell reads them) and a container of
    one cell (only that cell may read it); its version is i + 1, so versions only grow per object."""
    address = IPv4Address("10.255.0.0") + i + 2
    if i % 2 == 0:
        return AppInstancesMessage(version=i + 1, app_guid=f"app-{i % APPS}", addresses=[address])
    cell = CELLS[(i // 2) % 2]
    container = Container(handle=f"h-{i % 7}", ip=address, app_guid="app-0", space_guid="space", workload="app")
    return ContainerMessage(version=i + 1, cell_id=cell, handle=container.handle, container=container)


class Applied:
    """Every message a reconciler took, in order, per subject."""

    def __init__(self, rec: Reconciler) -> None:
        self.versions: dict[str, list[int | None]] = {}
        self.sequences: dict[str, list[int]] = {}
        take = rec.intake.message  # the feed's sink (the state intake); observed, not replaced

        def observe(msg: Message, seq: int, problems: list[str]) -> None:
            self.versions.setdefault(msg.subject(), []).append(msg.version)
            self.sequences.setdefault(msg.subject(), []).append(seq)
            take(msg, seq, problems)

        rec.intake.message = observe  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def reconcilers(
    cluster: NatsCluster, pki: Pki, identities: Identities, tmp_path: Path
) -> AsyncIterator[dict[str, Reconciler]]:
    recs: dict[str, Reconciler] = {}
    for cell in CELLS:
        cfg = ReconcilerConfig(
            cell_id=cell,
            nats=identities.cell(cell).client(cluster.urls, pki.server, connect_timeout_seconds=1.0),
            socket_path=tmp_path / f"{cell}.sock",
            state_dir=tmp_path / f"state-{cell}",
            drift_probe_seconds=5,
            consumer_heartbeat_seconds=0.5,
            replay_jitter_seconds=0.5,
            retry_max_seconds=1.0,
        )
        recs[cell] = Reconciler(cfg, FakeNft())
    async with running(recs["a"]), running(recs["b"]):
        yield recs


def metric(rec: Reconciler, name: str) -> float:
    return rec.metrics.registry.get_sample_value(name) or 0.0


async def test_killing_the_stream_leader_then_the_next_loses_no_change_and_replays_nothing(
    cluster: NatsCluster, pki: Pki, identities: Identities, tmp_path: Path
) -> None:
    watcher = await connect(
        identities.watcher.client(cluster.urls, pki.server), "watcher", inbox_prefix(Role.WATCHER), forever=True
    )
    publisher = StatePublisher(watcher, "bbs", replicas=3)
    for i in range(20):  # something to replay at start
        await publisher.publish(change(i))
    async with reconcilers(cluster, pki, identities, tmp_path) as recs:
        applied = {cell: Applied(rec) for cell, rec in recs.items()}
        await until(lambda: all(rec.ready for rec in recs.values()), "both cells in sync")

        killed: list[str] = []
        for i in range(20, CHANGES):
            if i in (80, 200):
                leader = await stream_leader(watcher)
                await asyncio.to_thread(cluster.nodes[leader].stop, hard=True)
                killed.append(leader)
            if i in (150, 260):
                # Back, and caught up, before the next node goes: two down would leave no quorum.
                await asyncio.to_thread(cluster.nodes[killed[-1]].start)
            await publisher.publish(change(i))
        assert len(set(killed)) == 2, f"the second kill must hit another node: {killed}"

        await every_change_once_in_order(recs, applied, CHANGES)
        resumed = sum(metric(rec, "cfnft_stream_resumes_total") for rec in recs.values())
        assert resumed >= 1, "no consumer was lost with the killed nodes: the failover was not exercised"
    await watcher.close()


async def test_a_node_leaving_in_lame_duck_mode_hands_the_stream_over_first_and_no_cell_replays(
    cluster: NatsCluster, pki: Pki, identities: Identities, admin: Identity, tmp_path: Path
) -> None:
    """What the cfnft-nats drain script does before BOSH stops a node: the node that leads the
    stream, and serves a cell, goes into lame duck mode while changes flow. Its stream leadership
    moves while it still runs, the cell it served is moved to another node and resumes where it
    was (no replay), and the node then exits by itself."""
    watcher = await connect(
        identities.watcher.client(cluster.urls, pki.server), "watcher", inbox_prefix(Role.WATCHER), forever=True
    )
    publisher = StatePublisher(watcher, "bbs", replicas=3)
    for i in range(20):
        await publisher.publish(change(i))
    async with reconcilers(cluster, pki, identities, tmp_path) as recs:
        applied = {cell: Applied(rec) for cell, rec in recs.items()}
        await until(lambda: all(rec.ready for rec in recs.values()), "both cells in sync")

        leaving = node_of(cluster, recs["a"])
        hand = await connect(admin.client(cluster.urls, pki.server), "admin", "_INBOX.admin", forever=True)
        await lead_from(hand, leaving)
        node = cluster.nodes[leaving]
        node.lame_duck()
        i = 20
        while await stream_leader(watcher) == leaving:
            await publisher.publish(change(i))
            i += 1
        assert node.running, "the node exited before handing its stream over"
        exited = asyncio.create_task(asyncio.to_thread(node.wait_exited, LAME_DUCK.duration_seconds + 20))
        while not exited.done():  # changes keep flowing while its clients are moved away
            await publisher.publish(change(i))
            i += 1
            await asyncio.sleep(0.05)
        await exited
        for _ in range(10):
            await publisher.publish(change(i))
            i += 1

        await every_change_once_in_order(recs, applied, i)
        assert node_of(cluster, recs["a"]) != leaving
        assert metric(recs["a"], "cfnft_stream_resumes_total") >= 1, "cell a did not resume on another node"
        await hand.close()
    await watcher.close()


def node_of(cluster: NatsCluster, rec: Reconciler) -> str:
    """The node a reconciler is connected to."""
    assert rec.nc is not None and rec.nc.connected_url is not None
    port = rec.nc.connected_url.port
    return next(name for name, node in cluster.nodes.items() if node.port == port)


async def lead_from(admin: NATS, node: str) -> None:
    """Ask the stream's leader to step down until `node` leads it (each election picks one of the others)."""
    for _ in range(20):
        leader = await stream_leader(admin)
        if leader == node:
            return
        await admin.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{subjects.STATE_STREAM}", b"", timeout=5)
        while await stream_leader(admin) == leader:
            await asyncio.sleep(0.1)
    raise AssertionError(f"{node} never became the stream leader")


async def every_change_once_in_order(recs: dict[str, Reconciler], applied: dict[str, Applied], changes: int) -> None:
    """Every cell ends with the last of changes 0..`changes`-1 of every object it may read, took
    each object's messages in stream order and none twice, read nothing of another cell, enforces
    exactly its own containers, and never replayed the stream after its first replay."""
    final = {change(i).subject(): i + 1 for i in range(changes)}

    def lost(cell: str) -> dict[str, tuple[int | None, int]]:
        """Each subject whose last change the cell has not taken: (the version it has, the last one)."""
        seen = {s: v[-1] for s, v in applied[cell].versions.items()}
        return {s: (seen.get(s), v) for s, v in final.items() if readable(cell, s) and seen.get(s) != v}

    try:
        await until(lambda: not any(lost(cell) for cell in CELLS), "every change on every cell", timeout=30)
    except AssertionError:
        feeds = {cell: rec.source.feed for cell, rec in recs.items()}
        where = {cell: {c.name: c.position for c in f.consumers} if f else {} for cell, f in feeds.items()}
        raise AssertionError(
            f"changes lost: { ({cell: lost(cell) for cell in CELLS}) }; consumers at {where}"
        ) from None
    await until(lambda: all(rec.ready for rec in recs.values()), "both cells committed")

    for cell, rec in recs.items():
        versions = applied[cell].versions
        assert not [s for s in versions if not readable(cell, s)], f"cell {cell} read another cell's containers"
        for subject, seqs in applied[cell].sequences.items():
            assert seqs == sorted(set(seqs)), f"cell {cell}: {subject} applied out of order or twice: {seqs}"
        state = rec.store.snapshot()
        assert {c.handle: c.ip for c in state.containers} == {
            f"h-{i % 7}": change(i).container.ip  # type: ignore[attr-defined]
            for i in range(changes)
            if i % 2 and CELLS[(i // 2) % 2] == cell
        }
        assert metric(rec, "cfnft_stream_full_replays_total") == 1, f"cell {cell} replayed the stream again"


def readable(cell: str, subject: str) -> bool:
    """What a cell may read: not the containers of another cell."""
    prefix = f"{subjects.STATE_PREFIX}.container."
    return not subject.startswith(prefix) or subject.startswith(f"{prefix}{cell}.")


async def test_a_watcher_started_with_its_cluster_waits_for_jetstream_to_create_the_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A node alone has no JetStream meta leader: it answers stream requests "temporarily
    # unavailable" or not at all. The watcher keeps asking until the other nodes are up.
    nodes = NatsCluster(tmp_path / "cluster")
    first, *others = nodes.nodes.values()
    try:
        first.start(wait=False)
        nc = await nats.connect(first.url, connect_timeout=2, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
        try:
            ensuring = asyncio.create_task(ensure_state_stream(nc, 3, retry_seconds=120))
            await until(lambda: "JetStream not ready yet" in caplog.text, "the watcher to be refused", timeout=30)
            assert not ensuring.done()
            for node in others:
                node.start(wait=False)
            created = await asyncio.wait_for(ensuring, timeout=120)
            info = await nc.jetstream().stream_info(subjects.STATE_STREAM)
            assert info.config.num_replicas == 3
            assert created == info.created.isoformat()
        finally:
            await nc.close()
    finally:
        nodes.stop()
