"""The state plane as the reconciler sees it: ordering by stream sequence (no clock decides), a lost,
purged or recreated stream never applied as the truth, a stream the reconciler never creates, and
NATS or JetStream trouble retried, never fatal. The real reconciler over a real nats-server; the
kernel of a lab cell where what is enforced is the point, FakeNft elsewhere."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from nats.js.errors import NotFoundError

from events import subjects
from lab.natsserver import NatsServer, wait_connection
from lab.netlab import Lab, Outcome, probe_many
from reconciler.compile import TABLE
from tests.daemons import Daemon, eventually, jetstream, publish_doc, publish_raw, running_daemon

OPEN, REJECTED = Outcome.OPEN, Outcome.REJECTED


def sg(guid, dest, ports="80"):
    return {
        "guid": guid,
        "name": guid,
        "rules": [{"protocol": "tcp", "destination": dest, "ports": ports}],
        "globally_enabled": {"running": True, "staging": False},
    }


def doc(*groups, ip="10.255.1.2"):
    return {
        "cell_id": "a",
        "containers": [{"handle": "web0", "ip": str(ip), "app_guid": "web", "space_guid": "s", "workload": "app"}],
        "security_groups": list(groups),
    }


async def stream_exists(url) -> bool:
    async with jetstream(url) as js:
        try:
            await js.stream_info(subjects.STATE_STREAM)
            return True
        except NotFoundError:
            return False


def groups_in(d: Daemon) -> set[str]:
    return {n[3:].removesuffix("-ports4") for n in d.kernel.read(TABLE).sets if n.startswith("sg-")}


async def probe(netns, target):
    return (await asyncio.to_thread(probe_many, netns, [target], timeout=0.5))[0].outcome


# --- ordering without clocks --------------------------------------------------------------------


async def test_a_stepped_back_clock_still_revokes_and_a_forged_version_pins_nothing(nats_server, tmp_path):
    await publish_doc(nats_server.url, doc())
    async with running_daemon(tmp_path, nats_server.url) as d:
        await eventually(lambda: d.rec.ready, what="in sync")
        group = {"kind": "asg", "guid": "g", "security_group": sg("g", "192.0.2.1")}
        await publish_raw(nats_server.url, (subjects.security_group("g"), {**group, "version": 2**62}))
        await eventually(lambda: groups_in(d) == {"g"}, what="the group")
        # The publisher's clock stepped back: a lower version, published later, still revokes.
        deletion = {"kind": "asg", "guid": "g", "security_group": None, "version": 1}
        await publish_raw(nats_server.url, (subjects.security_group("g"), deletion))
        await eventually(lambda: groups_in(d) == set(), what="revoked by a lower version")
        await publish_raw(nats_server.url, (subjects.security_group("g"), {**group, "version": 0}))
        await eventually(lambda: groups_in(d) == {"g"}, what="the object was not pinned")


async def test_a_restarted_reconciler_agrees_with_one_that_kept_running(nats_server, tmp_path):
    """Random contents, random versions, deletions: whatever the payloads say, the running reconciler
    and one started from the stream afterwards hold the same groups: the stream's last messages."""
    await publish_doc(nats_server.url, doc())
    rng = random.Random(1010)
    last: dict[str, dict | None] = {}
    async with running_daemon(tmp_path / "running", nats_server.url) as running:
        await eventually(lambda: running.rec.ready, what="in sync")
        async with jetstream(nats_server.url) as js:
            for _ in range(300):
                guid = f"g{rng.randrange(12)}"
                group = sg(guid, f"192.0.2.{rng.randrange(1, 250)}") if rng.random() < 0.7 else None
                payload = {"kind": "asg", "guid": guid, "security_group": group, "version": rng.randrange(2**62)}
                await js.publish(subjects.security_group(guid), json.dumps(payload).encode())
                last[guid] = group
        wanted = {guid for guid, group in last.items() if group is not None}
        await eventually(lambda: set(running.rec.store.groups) == wanted, what="the running one follows")
        await eventually(lambda: running.rec.ready, what="committed")
        async with running_daemon(tmp_path / "restarted", nats_server.url) as restarted:
            await eventually(lambda: restarted.rec.ready, what="the restarted one in sync")
            assert restarted.rec.store.groups == running.rec.store.groups
            assert restarted.kernel.dump() == running.kernel.dump()
            for guid in wanted:
                rules = restarted.rec.store.groups[guid].group().rules
                assert rules[0].destination == last[guid]["rules"][0]["destination"]


# --- a lost stream is not the truth --------------------------------------------------------------


@pytest.fixture
def cell_lab():
    with Lab(ipv6=False) as lab:
        cell = lab.add_cell("a")
        lab.add_internet()
        yield cell, cell.add_container("web0")


async def test_a_purged_stream_keeps_the_last_good_state_until_it_is_published_again(nats_server, cell_lab, tmp_path):
    cell, web = cell_lab
    await publish_doc(nats_server.url, doc(sg("public", "192.0.2.10"), sg("old", "192.0.2.11"), ip=web.ip))
    async with running_daemon(tmp_path, nats_server.url, netns=cell.name) as d:
        await eventually(lambda: d.rec.ready, what="in sync")
        async with jetstream(nats_server.url) as js:
            await js.purge_stream(subjects.STATE_STREAM)
        await eventually(lambda: not d.rec.ready, what="the purge noticed")
        status, body = await d.ops("/readyz")
        assert (
            status == 503 and "no complete view" in body["error"] and "enforcing their last good state" in body["error"]
        )
        assert d.metric("cfnft_state_plane_complete") == 0
        assert set(d.rec.status()["state_plane"]["kept_from_before"]) >= {"asg", "container"}
        # Fail closed would be a foundation-wide outage; the last good state keeps enforcing.
        assert await probe(web, ("tcp", "192.0.2.10", 80)) is OPEN
        assert await probe(web, ("tcp", "192.0.2.11", 80)) is OPEN
        # A publisher fills the stream again (without `old`): its marker makes the replay the truth again.
        await publish_doc(nats_server.url, doc(sg("public", "192.0.2.10"), ip=web.ip))
        await eventually(lambda: d.rec.ready, what="whole again")
        assert await probe(web, ("tcp", "192.0.2.11", 80)) is REJECTED, "what is gone from the stream is gone"
        assert await probe(web, ("tcp", "192.0.2.10", 80)) is OPEN
        assert d.metric("cfnft_state_plane_complete") == 1


async def test_the_reconciler_never_creates_the_stream_and_keeps_enforcing_without_it(nats_server, cell_lab, tmp_path):
    cell, web = cell_lab
    await publish_doc(nats_server.url, doc(sg("public", "192.0.2.10"), ip=web.ip))
    async with running_daemon(tmp_path, nats_server.url, netns=cell.name) as d:
        await eventually(lambda: d.rec.ready, what="in sync")
        async with jetstream(nats_server.url) as js:
            await js.delete_stream(subjects.STATE_STREAM)
        await eventually(lambda: not d.rec.ready, what="the deletion noticed")
        assert "does not exist" in (d.rec.not_ready_reason or "") or "deleted" in (d.rec.not_ready_reason or "")
        await asyncio.sleep(1.0)  # several stream checks (state_check_seconds 0.3)
        assert not await stream_exists(nats_server.url), "the reconciler must not create it"
        assert await probe(web, ("tcp", "192.0.2.10", 80)) is OPEN
        await publish_doc(nats_server.url, doc(sg("public", "192.0.2.12"), ip=web.ip), prune=True)
        await eventually(lambda: d.rec.ready, what="replayed the recreated stream")
        assert await probe(web, ("tcp", "192.0.2.12", 80)) is OPEN


async def test_a_fresh_reconciler_waits_for_a_stream_that_does_not_exist(nats_server, tmp_path):
    async with running_daemon(tmp_path, nats_server.url) as d:
        await eventually(lambda: "does not exist" in (d.rec.not_ready_reason or ""), what="says what it waits for")
        status, body = await d.ops("/readyz")
        assert status == 503 and "waiting for the state stream" in body["error"]
        await asyncio.sleep(1.0)
        assert not await stream_exists(nats_server.url)
        await publish_doc(nats_server.url, doc(sg("public", "192.0.2.10")))
        await eventually(lambda: d.rec.ready, what="in sync once published")
        assert groups_in(d) == {"public"}


# --- NATS and JetStream trouble is retried -------------------------------------------------------


async def test_jetstream_api_errors_are_retried_and_never_fatal(nats_server: NatsServer, tmp_path):
    """JetStream answering nothing but errors (as during a meta-leader election) while core NATS works:
    the reconciler keeps enforcing, keeps trying, and catches up once JetStream is back."""
    await publish_doc(nats_server.url, doc(sg("public", "192.0.2.10")))
    async with running_daemon(tmp_path, nats_server.url) as d:
        await eventually(lambda: d.rec.ready, what="in sync")
        before = d.kernel.dump()
        await asyncio.to_thread(nats_server.stop)
        nats_server.jetstream = False
        await asyncio.to_thread(nats_server.start)
        assert d.rec.nc is not None
        await wait_connection(d.rec.nc, connected=True)
        await asyncio.sleep(1.5)  # replays fail and are retried with backoff
        assert d.rec.fatal is None and d.kernel.dump() == before
        await asyncio.to_thread(nats_server.stop)
        nats_server.jetstream = True
        await asyncio.to_thread(nats_server.start)
        await publish_doc(nats_server.url, doc(sg("public", "192.0.2.10"), sg("later", "192.0.2.20")))
        await eventually(lambda: groups_in(d) == {"public", "later"}, timeout=20, what="caught up")
        assert d.rec.fatal is None and d.rec.ready


async def test_a_reconciler_started_while_jetstream_is_down_keeps_trying(nats_server: NatsServer, tmp_path):
    await asyncio.to_thread(nats_server.stop)
    nats_server.jetstream = False
    await asyncio.to_thread(nats_server.start)
    async with running_daemon(tmp_path, nats_server.url) as d:
        await asyncio.sleep(1.0)
        assert d.rec.fatal is None and not d.rec.ready
        await asyncio.to_thread(nats_server.stop)
        nats_server.jetstream = True
        await asyncio.to_thread(nats_server.start)
        await publish_doc(nats_server.url, doc(sg("public", "192.0.2.10")))
        await eventually(lambda: d.rec.ready, timeout=20, what="in sync once JetStream answers")
