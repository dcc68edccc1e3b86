"""Publishers cannot overwrite what they have not seen, only the lease holder of a watcher kind
publishes, and a stream lost under a watcher is published again — with a real nats-server and the
real BBS watcher against the BBS simulator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client as NatsClient
from prometheus_client import CollectorRegistry

from cfnft.watch import LeasedWatcher, WatchConfig
from events import subjects
from events.bbs.watcher import BbsWatcher, BbsWatcherMetrics
from events.lease import Lease
from events.messages import ContainerMessage, EpochMessage, SecurityGroupMessage
from events.models import SecurityGroup
from events.publisher import PublishConflict, StatePublisher
from lab.natsserver import NatsServer
from lab.pki import Pki
from lab.sim.bbs import BbsSimulator
from tests.daemons import eventually
from tests.test_bbs_watcher import read_state, watcher_config

LEASE_SECONDS = 1.0


def group(guid: str, dest: str) -> SecurityGroup:
    return SecurityGroup.model_validate(
        {"guid": guid, "name": guid, "rules": [{"protocol": "tcp", "destination": dest, "ports": "443"}]}
    )


async def test_a_publisher_cannot_overwrite_what_it_has_not_seen(nats_client: NatsClient) -> None:
    ahead, behind = StatePublisher(nats_client, "a"), StatePublisher(nats_client, "b")
    await behind.load_published()
    assert await ahead.publish(SecurityGroupMessage(guid="g", security_group=group("g", "192.0.2.1")))
    with pytest.raises(PublishConflict, match="cfnft.state.asg.g was written by another publisher"):
        await behind.publish(SecurityGroupMessage(guid="g", security_group=group("g", "192.0.2.99")))
    state = await read_state(nats_client)
    assert state[subjects.security_group("g")]["security_group"]["rules"][0]["destination"] == "192.0.2.1"
    # Having read the subject again, a deliberate decision on current knowledge may publish.
    assert not await behind.publish(SecurityGroupMessage(guid="g", security_group=group("g", "192.0.2.1")))
    assert await behind.publish(SecurityGroupMessage(guid="g", security_group=None))


async def test_an_epoch_marker_names_the_stream_and_what_is_complete(nats_client: NatsClient) -> None:
    publisher = StatePublisher(nats_client, "bbs")
    await publisher.mark_complete(["container", "app"])
    await publisher.mark_complete(["asg"])
    marker = EpochMessage.model_validate((await read_state(nats_client))[subjects.epoch("bbs")])
    info = await nats_client.jetstream().stream_info(subjects.STATE_STREAM)
    assert info.created is not None and marker.stream_created == info.created.isoformat()
    assert marker.complete == ["app", "asg", "container"]


class Replica:
    """One `cfnft watch` replica of the BBS watcher: its own connection, its lease, its guard."""

    def __init__(self, url: str, sim: BbsSimulator, pki: Pki) -> None:
        self.url = url
        metrics = BbsWatcherMetrics.create(CollectorRegistry())
        config = watcher_config(sim.url, pki.client)
        self.settings = WatchConfig(bbs=config, lease_seconds=LEASE_SECONDS, state_check_seconds=0.2)
        self.kind = LeasedWatcher("bbs", lambda publisher: BbsWatcher(config, publisher, metrics=metrics))
        self._task: asyncio.Task[None] | None = None
        self._nc: NatsClient | None = None

    @property
    def leads(self) -> bool:
        return self.kind.current is not None

    async def start(self) -> Replica:
        self._nc = await nats.connect(self.url)
        self._task = asyncio.create_task(self.kind.run(self._nc, self.settings))
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._nc is not None:
            await self._nc.close()


@contextlib.asynccontextmanager
async def replicas(url: str, sim: BbsSimulator, pki: Pki, n: int) -> AsyncIterator[list[Replica]]:
    started = [await Replica(url, sim, pki).start() for _ in range(n)]
    try:
        yield started
    finally:
        for r in started:
            await r.stop()


State = dict[str, dict[str, object]]


def holds(nc: NatsClient, test: Callable[[State], bool]) -> Callable[[], Awaitable[bool]]:
    """A predicate for `eventually`: the stream's current state passes `test`."""

    async def check() -> bool:
        return test(await read_state(nc))

    return check


def containers(state: State) -> set[str]:
    return {s for s, doc in state.items() if s.startswith("cfnft.state.container.") and doc["container"] is not None}


async def test_only_the_lease_holder_publishes_and_a_standby_takes_over(
    nats_server: NatsServer, nats_client: NatsClient, pki: Pki
) -> None:
    async with BbsSimulator(pki.server) as sim:
        sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
        async with replicas(nats_server.url, sim, pki, 2) as (first, second):
            await eventually(lambda: first.leads or second.leads, what="a leader")
            await eventually(holds(nats_client, lambda st: bool(containers(st))), what="the leader published")
            leader, standby = (first, second) if first.leads else (second, first)
            await asyncio.sleep(3 * LEASE_SECONDS)
            assert leader.leads and not standby.leads, "one leader, renewing its lease; one standby"
            await leader.stop()  # releases the lease: the standby takes over without waiting for it to expire
            await eventually(lambda: standby.leads, timeout=5 * LEASE_SECONDS, what="the takeover")
            sim.push_app("app-2", "space-1", "org-1", cells=["cell-b"])
            await eventually(
                holds(nats_client, lambda st: any(".cell-b." in s for s in containers(st))),
                what="the new leader published the change",
            )


async def test_a_stalled_holder_loses_the_lease_and_its_late_publish_is_refused(
    nats_server: NatsServer, nats_client: NatsClient, pki: Pki
) -> None:
    """A holder that stops renewing (paused, cut off) loses the lease when it expires; a replica takes
    over, and what the stalled one publishes when it wakes, from its old view, is refused."""
    stalled = Lease(nats_client, "watch-bbs", ttl=LEASE_SECONDS, holder="stalled")
    await stalled.acquire()
    stale_view = StatePublisher(nats_client, "bbs")
    await stale_view.load_published()
    async with BbsSimulator(pki.server) as sim:
        pg = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
        instance = sim.instance(pg, 0).actual_lrp_instance_key.instance_guid
        subject = subjects.container("cell-a", instance)
        async with replicas(nats_server.url, sim, pki, 1) as (standby,):
            await eventually(lambda: standby.leads, timeout=6 * LEASE_SECONDS, what="the takeover after expiry")
            await eventually(holds(nats_client, lambda st: subject in st), what="the new holder published")
            late = ContainerMessage(cell_id="cell-a", handle=instance, container=None)  # its old view: gone
            with pytest.raises(PublishConflict):
                await stale_view.publish(late)
            assert (await read_state(nats_client))[subject]["container"] is not None


async def test_a_watcher_publishes_everything_again_when_the_stream_is_purged_or_recreated(
    nats_server: NatsServer, nats_client: NatsClient, pki: Pki
) -> None:
    async with BbsSimulator(pki.server) as sim:
        sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
        async with replicas(nats_server.url, sim, pki, 1):
            await eventually(holds(nats_client, lambda st: subjects.epoch("bbs") in st), what="the first marker")
            before = containers(await read_state(nats_client))
            assert before
            js = nats_client.jetstream()
            await js.purge_stream(subjects.STATE_STREAM)
            await eventually(
                holds(nats_client, lambda st: containers(st) == before and subjects.epoch("bbs") in st),
                what="everything, and the marker, again after a purge",
            )
            await js.delete_stream(subjects.STATE_STREAM)
            await eventually(
                holds(nats_client, lambda st: containers(st) == before and subjects.epoch("bbs") in st),
                what="the stream recreated and filled again",
            )
