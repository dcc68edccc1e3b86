"""The reconciler's feed against a real nats-server, into FakeNft: a stream that does not exist yet
is waited for (never created, never read as "no policy"), and a stream recreated while the cell was
away is replayed whole, after a jittered wait, replacing what the cell knew only once complete.
(Resuming where it stopped is shown in test_reconciler.py's outage test and test_nats_cluster.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from cfnft.publish import publish_state
from events.connect import NatsConfig
from events.models import CellState, load_cell_state
from lab.natsserver import NatsServer, wait_connection
from nft import FakeNft
from reconciler.config import ReconcilerConfig
from reconciler.daemon import Reconciler
from tests.running import running, until

pytestmark = pytest.mark.nats


def state(*groups: str) -> CellState:
    return load_cell_state(
        {
            "cell_id": "a",
            "containers": [
                {"handle": "web-0", "ip": "10.255.1.2", "app_guid": "web", "space_guid": "s", "workload": "app"}
            ],
            "security_groups": [
                {
                    "guid": g,
                    "name": g,
                    "globally_enabled": {"running": True, "staging": False},
                    "rules": [{"protocol": "tcp", "destination": "192.0.2.1", "ports": "443"}],
                }
                for g in groups
            ],
        }
    )


async def publish(url: str, doc: CellState) -> None:
    nc = await nats.connect(url)
    try:
        await publish_state(nc, doc, prune=True)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def reconciler(server: NatsServer, tmp_path: Path) -> AsyncIterator[Reconciler]:
    cfg = ReconcilerConfig(
        cell_id="a",
        nats=NatsConfig(servers=[server.url], insecure=True),
        socket_path=tmp_path / "a.sock",
        state_dir=tmp_path / "state",
        consumer_heartbeat_seconds=0.5,
        replay_jitter_seconds=0.5,
        retry_max_seconds=0.5,
    )
    async with running(Reconciler(cfg, FakeNft())) as rec:
        yield rec


def groups(rec: Reconciler) -> set[str]:
    return set(rec.store.groups)


def replays(rec: Reconciler) -> float:
    return rec.metrics.registry.get_sample_value("cfnft_stream_full_replays_total") or 0


async def test_a_missing_stream_is_waited_for_not_created(nats_server: NatsServer, tmp_path: Path) -> None:
    async with reconciler(nats_server, tmp_path) as rec:
        await asyncio.sleep(1.0)
        assert not rec.ready and replays(rec) == 0
        nc = await nats.connect(nats_server.url)
        assert (await nc.jetstream().streams_info()) == [], "the reconciler created the stream"
        await nc.close()
        await publish(nats_server.url, state("g1"))
        await until(lambda: rec.ready, "in sync once the stream exists")
        assert groups(rec) == {"g1"}


async def test_a_stream_recreated_while_away_is_replayed_whole(nats_server: NatsServer, tmp_path: Path) -> None:
    await publish(nats_server.url, state("g1", "g2"))
    async with reconciler(nats_server, tmp_path) as rec:
        await until(lambda: rec.ready, "in sync")
        assert rec.nc is not None
        await asyncio.to_thread(nats_server.stop)
        await wait_connection(rec.nc, connected=False)
        await asyncio.to_thread(nats_server.remove_store)
        await asyncio.to_thread(nats_server.start)
        await wait_connection(rec.nc, connected=True)
        await asyncio.sleep(1.0)
        # No stream: the cell keeps what it knew (absence is not permission), and says so.
        assert groups(rec) == {"g1", "g2"}
        assert not rec.ready and "does not exist" in (rec.not_ready_reason or "")
        await publish(nats_server.url, state("g3"))
        await until(lambda: replays(rec) == 2 and groups(rec) == {"g3"}, "the new stream replayed whole")
        await until(lambda: rec.ready, "in sync with the new stream")


async def test_a_stream_deleted_and_recreated_under_the_cell_is_replayed_whole(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Its consumers go with the stream; resuming finds a stream created at another time."""
    await publish(nats_server.url, state("g1", "g2"))
    async with reconciler(nats_server, tmp_path) as rec:
        await until(lambda: rec.ready, "in sync")
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().delete_stream("CFNFT_STATE")
        await nc.close()
        await publish(nats_server.url, state("g3"))
        await until(lambda: replays(rec) == 2 and groups(rec) == {"g3"}, "the recreated stream replayed whole")
