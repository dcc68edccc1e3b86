"""The BBS watcher end to end: BBS simulator over mutual TLS -> watcher -> a real nats-server.

Every assertion reads NATS back the way a reconciler does (a JetStream ordered consumer, last
message per subject) and compares it with the truth computed straight from the simulator's
actual and desired LRPs, so the watcher is checked against BBS's state, not against its own view.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import http_parser
from nats.aio.client import Client as NatsClient
from prometheus_client import CollectorRegistry

from events import subjects
from events.bbs.client import RUNNING
from events.bbs.sse import EventName
from events.bbs.watcher import BbsWatcher, BbsWatcherConfig, BbsWatcherMetrics
from events.messages import ContainerMessage
from events.models import Container, Workload
from events.poller import FatalSourceError
from events.publisher import StatePublisher, ensure_state_stream
from events.tls import TlsFiles
from lab.pki import Pki
from lab.sim.bbs import EVACUATING, SUSPECT, BbsRoute, BbsSimulator, egress_rule
from tests.cffixtures import BBS_SERVER_NAME as SERVER_NAME

State = dict[str, dict[str, Any]]
EVENT_NAMES = [name.value for name in EventName]


@pytest.fixture
async def sim(pki: Pki) -> AsyncIterator[BbsSimulator]:
    async with BbsSimulator(pki.server) as simulator:
        yield simulator


def watcher_config(url: str, client: TlsFiles, **overrides: Any) -> BbsWatcherConfig:
    assert client.cert is not None and client.key is not None
    settings: dict[str, Any] = {"backoff_initial": 0.01, "backoff_max": 0.05, "request_timeout": 5}
    settings.update(overrides)
    return BbsWatcherConfig(
        url=url, ca_file=client.ca, cert_file=client.cert, key_file=client.key, server_name=SERVER_NAME, **settings
    )


@dataclass
class Running:
    """A watcher task and what it was built with."""

    watcher: BbsWatcher
    task: asyncio.Task[None]
    registry: CollectorRegistry

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"cfnft_watcher_bbs_{name}", labels or None) or 0.0

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def start_watcher(
    sim: BbsSimulator, pki: Pki, nats_client: NatsClient
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    started: list[Running] = []

    async def start(client: TlsFiles | None = None, *, wait: bool = True, **overrides: Any) -> Running:
        registry = CollectorRegistry()
        watcher = BbsWatcher(
            watcher_config(sim.url, client or pki.client, **overrides),
            StatePublisher(nats_client, "bbs"),
            metrics=BbsWatcherMetrics.create(registry),
        )
        running = Running(watcher, asyncio.create_task(watcher.run()), registry)
        started.append(running)
        if wait:
            async with asyncio.timeout(10):
                await watcher.in_sync.wait()
        return running

    yield start
    for running in started:
        await running.stop()


async def read_state(nc: NatsClient, subject_filter: str = subjects.STATE_WILDCARD) -> State:
    """Every subject's last message: the subjects from the stream's info, then each subject's last
    message read directly. No consumer, so a watcher publishing meanwhile cannot leave the read
    waiting for a count of pending messages that moved under it."""
    await ensure_state_stream(nc)
    js = nc.jetstream()
    info = await js.stream_info(subjects.STATE_STREAM, subjects_filter=subject_filter)
    state: State = {}
    for subject in sorted(info.state.subjects or {}):
        msg = await js.get_last_msg(subjects.STATE_STREAM, subject)
        assert msg.data is not None
        state[subject] = json.loads(msg.data)
    return state


async def last(nc: NatsClient, subject: str) -> dict[str, Any]:
    """The last message on one subject, read directly (no consumer, so no race with publishing)."""
    msg = await nc.jetstream().get_last_msg(subjects.STATE_STREAM, subject)
    assert msg.data is not None
    return json.loads(msg.data)


async def container_at(nc: NatsClient, cell_id: str, handle: str) -> dict[str, Any] | None:
    """The published container of that handle on that cell; None once it was deleted."""
    return (await last(nc, subjects.container(cell_id, handle)))["container"]


def live(state: State) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """The LRP containers that exist and the non-empty app sets, from a NATS state."""
    containers = {
        s: m["container"]
        for s, m in state.items()
        if m["kind"] == "container" and m["container"] and m["container"]["workload"] == "app"
    }
    apps = {m["app_guid"]: m["addresses"] for m in state.values() if m["kind"] == "app" and m["addresses"]}
    return containers, apps


def truth(sim: BbsSimulator) -> tuple[dict[str, tuple[str, str]], dict[str, list[str]]]:
    """From BBS's own records: container subject -> (ip, app guid), app -> sorted addresses."""
    apps_of = {d.process_guid: d.network.properties["app_id"] for d in sim.desired_lrps()}
    containers: dict[str, tuple[str, str]] = {}
    apps: dict[str, set[str]] = {}
    for lrp in sim.actual_lrps():
        address = lrp.actual_lrp_net_info.instance_address
        app = apps_of.get(lrp.actual_lrp_key.process_guid)
        if lrp.state != RUNNING or not address or app is None:
            continue
        key = lrp.actual_lrp_instance_key
        containers[subjects.container(key.cell_id, key.instance_guid)] = (address, app)
        apps.setdefault(app, set()).add(address)
    return containers, {app: sorted(a, key=lambda ip: tuple(map(int, ip.split(".")))) for app, a in apps.items()}


async def converged(nc: NatsClient, sim: BbsSimulator, timeout: float = 10) -> State:
    """Wait until NATS holds exactly BBS's truth (no extra containers, no missing ones); return the state."""
    want_containers, want_apps = truth(sim)
    seen: tuple[object, ...] = ()
    try:
        async with asyncio.timeout(timeout):
            while True:
                state = await read_state(nc)
                containers, apps = live(state)
                seen = ({s: (c["ip"], c["app_guid"]) for s, c in containers.items()}, apps)
                if seen == (want_containers, want_apps):
                    return state
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"NATS never matched BBS\nwant: {(want_containers, want_apps)}\nlast: {seen}")


async def test_push_publishes_containers_on_their_cells(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]]
) -> None:
    """cf push with two instances: one container state per cell with CF's metadata and rules, one app set."""
    rules = [
        egress_rule("tcp", "10.0.11.0/24", "80,443", annotations=["security_group_id:sg-1"]),
        egress_rule("udp", "8.8.8.8", "53-54"),
        egress_rule("icmp", "0.0.0.0/0", icmp_type=-1, icmp_code=-1, log=True),
    ]
    pg = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a", "cell-b"], egress_rules=rules, ports=(8080, 9090))
    running = await start_watcher()
    await converged(nats_client, sim)

    first = sim.instance(pg, 0)
    subject = subjects.container("cell-a", first.actual_lrp_instance_key.instance_guid)
    message = ContainerMessage.model_validate(await last(nats_client, subject))
    assert message.cell_id == "cell-a"
    assert message.container == Container.model_validate(
        {
            "handle": first.actual_lrp_instance_key.instance_guid,
            "ip": first.actual_lrp_net_info.instance_address,
            "app_guid": "app-1",
            "space_guid": "space-1",
            "org_guid": "org-1",
            "workload": "app",
            "ports": [8080, 9090],
            "egress_rules": [
                {
                    "protocol": "tcp",
                    "destination": "10.0.11.0/24",
                    "ports": "80,443",
                    "description": "security_group_id:sg-1",
                    "log": False,
                },
                {"protocol": "udp", "destination": "8.8.8.8", "ports": "53-54", "log": False},
                {"protocol": "icmp", "destination": "0.0.0.0/0", "type": -1, "code": -1, "log": True},
            ],
            "port_mappings": [
                {"container_port": p.container_port, "host_port": p.host_port} for p in first.actual_lrp_net_info.ports
            ],
        }
    )
    assert running.metric("connected") == 1
    assert running.metric("containers") == 2


async def test_scale_up_and_down(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]]
) -> None:
    pg = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
    running = await start_watcher()
    await converged(nats_client, sim)

    sim.scale(pg, 3, cells=["cell-b", "cell-c"])
    containers, apps = live(await converged(nats_client, sim))
    assert running.metric("events_total", event="desired_lrp_changed") == 1
    assert sorted(s.split(".")[3] for s in containers) == ["cell-a", "cell-b", "cell-c"]
    assert len(apps["app-1"]) == 3

    third = sim.instance(pg, 2).actual_lrp_instance_key
    sim.scale(pg, 1)
    state = await converged(nats_client, sim)
    assert await container_at(nats_client, third.cell_id, third.instance_guid) is None  # explicit deletion
    assert len(live(state)[1]["app-1"]) == 1


async def test_crash_and_restart_gets_a_new_address(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]]
) -> None:
    """The crashed instance's container is deleted; the restarted one is a new container elsewhere."""
    pg = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a", "cell-b"])
    await start_watcher()
    await converged(nats_client, sim)
    old = sim.instance(pg, 0)

    sim.crash(pg, 0)
    state = await converged(nats_client, sim)
    old_subject = subjects.container("cell-a", old.actual_lrp_instance_key.instance_guid)
    assert (await last(nats_client, old_subject))["container"] is None
    assert old.actual_lrp_net_info.instance_address not in live(state)[1]["app-1"]

    sim.start_instance(pg, 0, "cell-b")
    new = sim.instance(pg, 0)
    state = await converged(nats_client, sim)
    assert new.actual_lrp_net_info.instance_address != old.actual_lrp_net_info.instance_address
    restarted = await container_at(nats_client, "cell-b", new.actual_lrp_instance_key.instance_guid)
    assert restarted is not None and restarted["ip"] == new.actual_lrp_net_info.instance_address
    assert (await last(nats_client, old_subject))["container"] is None

    sim.crash(pg, 1, restartable=False)
    containers, apps = live(await converged(nats_client, sim))
    assert list(apps) == ["app-1"] and len(apps["app-1"]) == 1


async def test_evacuating_and_suspect_instances_stay_until_replaced(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]]
) -> None:
    """An evacuating (or suspect) instance keeps its container on its old cell and its address in the
    app set while the replacement is pending; once the replacement runs, only the replacement is left."""
    pg = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a", "cell-b"])
    await start_watcher()
    await converged(nats_client, sim)
    draining, lost = sim.instance(pg, 0), sim.instance(pg, 1)

    sim.evacuate(pg, 0)
    sim.mark_suspect(pg, 1)
    state = await converged(nats_client, sim)
    assert sim.instance(pg, 0, EVACUATING).actual_lrp_instance_key == draining.actual_lrp_instance_key
    assert sim.instance(pg, 1, SUSPECT).actual_lrp_instance_key == lost.actual_lrp_instance_key
    for lrp in (draining, lost):
        key = lrp.actual_lrp_instance_key
        assert await container_at(nats_client, key.cell_id, key.instance_guid) is not None
    assert len(live(state)[1]["app-1"]) == 2

    sim.start_instance(pg, 0, "cell-c")
    sim.start_instance(pg, 1, "cell-c")
    state = await converged(nats_client, sim)
    for lrp in (draining, lost):
        key = lrp.actual_lrp_instance_key
        assert await container_at(nats_client, key.cell_id, key.instance_guid) is None
    containers, apps = live(state)
    assert [s.split(".")[3] for s in containers] == ["cell-c", "cell-c"]


async def test_tasks_are_left_to_the_cells(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]]
) -> None:
    """BBS has no address for task and staging containers: the watcher publishes none, and never
    deletes the ones a cell published for them (workload task/staging), not even on a re-list."""
    sim.desire_task("task-1", "app-1", "space-1", "org-1")
    sim.desire_task("stage-1", "app-1", "space-1", "org-1", staging=True)
    sim.start_task("task-1", "cell-a")
    sim.start_task("stage-1", "cell-b")
    cell_publisher = StatePublisher(nats_client, "cells")
    registered = {}
    for handle, cell, workload, ip in (
        ("task-1", "cell-a", "task", "10.255.1.9"),
        ("stage-1", "cell-b", "staging", "10.255.2.9"),
    ):
        message = ContainerMessage(
            version=1,
            cell_id=cell,
            handle=handle,
            container=Container(
                handle=handle, ip=ip, app_guid="app-1", space_guid="space-1", workload=Workload(workload)
            ),
        )
        await cell_publisher.publish(message)
        registered[message.subject()] = message.container
    pg = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])

    running = await start_watcher()
    await converged(nats_client, sim)
    sim.drop_streams()  # force a re-list, which publishes deletions for vanished LRP containers
    sim.crash(pg, 0)
    sim.complete_task("task-1")
    sim.delete_task("task-1")
    state = await converged(nats_client, sim)
    assert running.metric("relists_total") >= 2
    for subject, container in registered.items():
        assert ContainerMessage.model_validate(await last(nats_client, subject)).container == container
    assert not [
        s
        for s, m in state.items()
        if m["kind"] == "container" and m["container"] and m["container"]["workload"] == "app"
    ]


async def test_every_event_is_applied_from_bbs_framing_with_the_compiled_http_parser(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]]
) -> None:
    """BBS writes each chunk header as `<size>;` (test_bbs_client checks the simulator's bytes), which
    aiohttp's compiled llhttp parser refuses. With that parser loaded — what the vendored wheels give
    every cell — the watcher still follows the stream over mutual TLS and applies every event: after
    the first listing nothing is re-listed, yet NATS tracks BBS through pushes, crashes, scaling,
    evacuation and deletion."""
    assert http_parser.HttpResponseParser is http_parser.HttpResponseParserC, "aiohttp's C parser is not loaded"
    assert os.environ.get("AIOHTTP_NO_EXTENSIONS", "") == ""
    pg1 = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
    running = await start_watcher()
    await converged(nats_client, sim)
    emitted_before = sim.lrp_events

    pg2 = sim.push_app("app-2", "space-2", "org-1", cells=["cell-a", "cell-b"])
    await converged(nats_client, sim)
    sim.crash(pg1, 0)
    sim.start_instance(pg1, 0, "cell-b")
    sim.scale(pg2, 3, cells=["cell-c"])
    sim.evacuate(pg2, 0)
    sim.start_instance(pg2, 0, "cell-c")
    await converged(nats_client, sim)
    sim.remove_lrp(pg1)
    containers, apps = live(await converged(nats_client, sim))
    assert list(apps) == ["app-2"] and len(containers) == 3
    emitted = sim.lrp_events - emitted_before
    assert emitted > 20 and sum(running.metric("events_total", event=name) for name in EVENT_NAMES) == emitted
    assert running.metric("relists_total") == 1 and sim.requests[BbsRoute.LRP_INSTANCE_EVENTS] == 1


async def test_a_silently_stalled_stream_is_found_by_the_relist_and_resubscribed(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]]
) -> None:
    """BBS stops writing but keeps the connection open: no error, no end, no heartbeat to miss. The
    periodic re-list publishes what the stream hid (drift), the stream then stays silent past the
    grace, so the watcher re-subscribes, and events flow again on the new stream."""
    sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
    running = await start_watcher(relist_interval=0.3, request_timeout=1)
    await converged(nats_client, sim)
    assert running.metric("drift_total") == 0

    sim.stall_streams()
    sim.push_app("app-2", "space-1", "org-1", cells=["cell-b"])  # its events go nowhere
    await converged(nats_client, sim)  # repaired by a periodic re-list: the stream still looks connected
    assert running.metric("drift_total") >= 2  # app-2's container and its instance set
    async with asyncio.timeout(10):
        while running.metric("stream_restarts_total", reason="stalled") < 1 or running.metric("connected") < 1:
            await asyncio.sleep(0.02)
    assert sim.requests[BbsRoute.LRP_INSTANCE_EVENTS] == 2  # re-subscribed once, and in sync again

    events_before = sum(running.metric("events_total", event=name) for name in EVENT_NAMES)
    sim.push_app("app-3", "space-1", "org-1", cells=["cell-c"])
    await converged(nats_client, sim)
    async with asyncio.timeout(10):
        while sum(running.metric("events_total", event=name) for name in EVENT_NAMES) < events_before + 4:
            await asyncio.sleep(0.02)


async def test_periodic_relists_of_a_quiet_healthy_stream_change_nothing(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]]
) -> None:
    """An idle foundation costs one listing per relist_interval and nothing else: no drift, no restart,
    no message to NATS."""
    sim.push_app("app-1", "space-1", "org-1", cells=["cell-a", "cell-b"])
    running = await start_watcher(relist_interval=0.05)
    await converged(nats_client, sim)
    published = running.metric("published_total", kind="container") + running.metric("published_total", kind="app")
    async with asyncio.timeout(10):
        while running.metric("relists_total") < 10:
            await asyncio.sleep(0.02)
    assert running.metric("drift_total") == 0
    assert running.metric("stream_restarts_total", reason="stalled") == 0
    assert sim.requests[BbsRoute.LRP_INSTANCE_EVENTS] == 1
    assert running.metric("published_total", kind="container") + running.metric("published_total", kind="app") == (
        published
    )


async def test_events_missed_while_the_stream_was_down_are_caught_by_the_relist(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]]
) -> None:
    """The stream is cut and changes happen before the watcher is back: no replay, the re-list catches them."""
    pg1 = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a", "cell-b"])
    pg2 = sim.push_app("app-2", "space-2", "org-1", cells=["cell-a"])
    running = await start_watcher()
    await converged(nats_client, sim)

    for _ in range(3):
        sim.drop_streams()  # the watcher learns of it only once this test yields to the loop
        sim.crash(pg1, 0)
        sim.start_instance(pg1, 0, "cell-c")
        sim.scale(pg1, 3, cells=["cell-b"])
        sim.remove_lrp(pg2)
        pg2 = sim.push_app("app-2", "space-2", "org-1", cells=["cell-b"])
        sim.scale(pg1, 2)
        state = await converged(nats_client, sim)
    assert running.metric("relists_total") >= 4
    assert live(state)[1].keys() == {"app-1", "app-2"}


@pytest.mark.parametrize("fault", ["http-500", "error-field"])
async def test_failing_bbs_never_empties_the_published_state(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]], fault: str
) -> None:
    """While BBS fails (HTTP 500 everywhere, or the actual-LRP listing answering with its error field
    after the desired listing succeeded), NATS keeps the last state; once BBS recovers, NATS catches up."""
    pg = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a", "cell-b"])
    running = await start_watcher()
    before = live(await converged(nats_client, sim))

    if fault == "http-500":
        sim.fail(None, times=10**6)
    else:
        sim.fail_with_error(BbsRoute.ACTUAL_LRPS, times=10**6)
    sim.drop_streams()
    sim.remove_lrp(pg)  # the truth is now empty, but the watcher cannot see it
    route = BbsRoute.LRP_INSTANCE_EVENTS if fault == "http-500" else BbsRoute.ACTUAL_LRPS
    attempts = sim.requests[route]
    async with asyncio.timeout(10):
        while sim.requests[route] < attempts + 5:
            await asyncio.sleep(0.02)
    assert live(await read_state(nats_client)) == before
    assert running.metric("connected") == 0
    kind = "unavailable" if fault == "http-500" else "api"
    assert running.metric("errors_total", kind=kind) >= 5

    sim.clear_faults()
    assert live(await converged(nats_client, sim)) == ({}, {})
    assert running.metric("connected") == 1


async def test_wrong_client_certificate_is_reported_and_retries_are_bounded(
    sim: BbsSimulator, pki: Pki, start_watcher: Callable[..., Awaitable[Running]], caplog: pytest.LogCaptureFixture
) -> None:
    """A refused client certificate: one clear log line per attempt, backoff between, then the watcher gives up."""
    caplog.set_level(logging.ERROR, logger="events.bbs.watcher")
    running = await start_watcher(pki.client_of_other_ca, wait=False, max_tls_failures=3)
    async with asyncio.timeout(10):
        with pytest.raises(FatalSourceError, match="rejected our client certificate"):
            await running.task
    lines = [r.getMessage() for r in caplog.records if r.name == "events.bbs.watcher"]
    assert len(lines) == 2, lines  # the third failure is the one raised
    assert all("TLS handshake failed" in line and "rejected our client certificate" in line for line in lines)
    assert running.metric("errors_total", kind="tls") == 3
    assert not running.watcher.in_sync.is_set()


async def test_restarted_watcher_publishes_only_differences(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]]
) -> None:
    """A new watcher learns what the last one published: unchanged objects are not republished, and
    objects that vanished while no watcher ran are deleted explicitly."""
    kept = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
    gone = sim.push_app("app-2", "space-1", "org-1", cells=["cell-b"])
    first = await start_watcher()
    await converged(nats_client, sim)
    await first.stop()
    js = nats_client.jetstream()
    kept_key = sim.instance(kept, 0).actual_lrp_instance_key
    kept_subject = subjects.container(kept_key.cell_id, kept_key.instance_guid)
    kept_seq = (await js.get_last_msg(subjects.STATE_STREAM, kept_subject)).seq

    sim.remove_lrp(gone)
    second = await start_watcher()
    await converged(nats_client, sim)
    assert (await js.get_last_msg(subjects.STATE_STREAM, kept_subject)).seq == kept_seq
    assert (await last(nats_client, subjects.app_instances("app-2")))["addresses"] == []
    assert second.metric("published_total", kind="container") == 1  # the deletion of app-2's container
    assert second.metric("published_total", kind="app") == 1


async def test_resync_request_relists(
    sim: BbsSimulator, nats_client: NatsClient, start_watcher: Callable[..., Awaitable[Running]]
) -> None:
    sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
    running = await start_watcher()
    await converged(nats_client, sim)
    running.watcher.resync()
    async with asyncio.timeout(10):
        while running.metric("relists_total") < 2:
            await asyncio.sleep(0.02)
    await converged(nats_client, sim)


async def test_unreadable_tls_files_fail_at_start(
    pki: Pki, sim: BbsSimulator, nats_client: NatsClient, tmp_path: Path
) -> None:
    config = watcher_config(sim.url, TlsFiles(pki.client.ca, tmp_path / "missing.pem", tmp_path / "missing.key"))
    watcher = BbsWatcher(
        config, StatePublisher(nats_client, "bbs"), metrics=BbsWatcherMetrics.create(CollectorRegistry())
    )
    with pytest.raises(Exception, match="missing.pem"):
        await watcher.run()


async def test_bbs_down_at_start_then_up(pki: Pki, nats_client: NatsClient) -> None:
    """Nothing listens where BBS should be: the watcher counts the refusals, publishes nothing, and
    syncs as soon as BBS comes up."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sim = BbsSimulator(pki.server, port=port)
    sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
    registry = CollectorRegistry()
    config = watcher_config(f"https://127.0.0.1:{port}", pki.client)
    async with BbsWatcher(
        config, StatePublisher(nats_client, "bbs"), metrics=BbsWatcherMetrics.create(registry)
    ) as watcher:
        async with asyncio.timeout(10):
            while (registry.get_sample_value("cfnft_watcher_bbs_errors_total", {"kind": "unavailable"}) or 0) < 3:
                await asyncio.sleep(0.02)
        assert not watcher.in_sync.is_set()
        assert live(await read_state(nats_client)) == ({}, {})
        async with sim:
            await converged(nats_client, sim)
            assert registry.get_sample_value("cfnft_watcher_bbs_connected") == 1
