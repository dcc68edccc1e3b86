"""The BBS client against the BBS simulator, over real mutual TLS (certificates from trustme).

Covers the list routes, the SSE streams as they come off the wire (headers, framing, ids, the
cell filter), BBS's two ways of failing (error field, bare HTTP status), dropped streams, and
the TLS failures an operator must be able to read: wrong client certificate, wrong server CA,
wrong server name.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from ipaddress import IPv4Address

import aiohttp
import pytest

from events.bbs import bbs_pb2 as pb
from events.bbs.client import RUNNING, BbsClient, EventStream
from events.bbs.errors import BbsApiError, BbsTlsError, BbsUnavailableError
from events.bbs.sse import BbsEvent, EventName
from events.tls import TlsFiles, client_context
from lab.pki import Pki
from lab.sim.bbs import EVACUATING, BbsRoute, BbsSimulator
from lab.sim.bbs_control import add_control_routes
from tests.cffixtures import BBS_SERVER_NAME as SERVER_NAME


@pytest.fixture
async def sim(pki: Pki) -> AsyncIterator[BbsSimulator]:
    async with BbsSimulator(pki.server) as simulator:
        yield simulator


@pytest.fixture
async def bbs(sim: BbsSimulator, pki: Pki) -> AsyncIterator[BbsClient]:
    async with BbsClient(sim.url, client_context(pki.client), server_name=SERVER_NAME, timeout=5) as client:
        yield client


async def next_events(stream: EventStream, count: int) -> list[BbsEvent]:
    events: list[BbsEvent] = []
    iterator = aiter(stream)
    async with asyncio.timeout(5):
        while len(events) < count:
            events.append(await anext(iterator))
    return events


async def test_list_routes_return_what_bbs_holds(sim: BbsSimulator, bbs: BbsClient) -> None:
    """Desired and actual LRPs come back as protobuf with CF's network properties and addresses."""
    rule = pb.SecurityGroupRule(protocol="tcp", destinations=["10.0.11.0/24"], ports=[80, 443])
    pg = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a", "cell-b"], egress_rules=[rule], version="v1")

    desired = await bbs.desired_lrps(domain="cf-apps")
    assert [d.process_guid for d in desired] == ["app-1-v1"]
    assert dict(desired[0].network.properties) == {
        "policy_group_id": "app-1",
        "app_id": "app-1",
        "space_id": "space-1",
        "org_id": "org-1",
        "ports": "8080",
        "container_workload": "app",
    }
    assert list(desired[0].egress_rules) == [rule]

    actual = sorted(await bbs.actual_lrps(), key=lambda lrp: lrp.actual_lrp_key.index)
    assert [(a.actual_lrp_key.process_guid, a.actual_lrp_instance_key.cell_id, a.state) for a in actual] == [
        (pg, "cell-a", RUNNING),
        (pg, "cell-b", RUNNING),
    ]
    for lrp in actual:
        cell = lrp.actual_lrp_instance_key.cell_id
        assert IPv4Address(lrp.actual_lrp_net_info.instance_address) in sim.cell_subnet(cell)
    assert [a.actual_lrp_instance_key.cell_id for a in await bbs.actual_lrps(cell_id="cell-b")] == ["cell-b"]


async def test_lrp_event_stream_carries_the_push_in_order(sim: BbsSimulator, bbs: BbsClient) -> None:
    """ids count from 0; a push is desired_created, created (UNCLAIMED), changed (CLAIMED), changed (RUNNING)."""
    async with bbs.lrp_instance_events() as stream:
        sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
        events = await next_events(stream, 4)
    assert [e.id for e in events] == [0, 1, 2, 3]
    assert [e.name for e in events] == [
        EventName.DESIRED_LRP_CREATED,
        EventName.ACTUAL_LRP_INSTANCE_CREATED,
        EventName.ACTUAL_LRP_INSTANCE_CHANGED,
        EventName.ACTUAL_LRP_INSTANCE_CHANGED,
    ]
    running = events[3].message
    assert isinstance(running, pb.ActualLRPInstanceChangedEvent)
    assert (running.before.state, running.after.state) == ("CLAIMED", "RUNNING")
    assert running.actual_lrp_instance_key.cell_id == "cell-a"
    assert (
        running.after.actual_lrp_net_info.instance_address
        == sim.instance(running.actual_lrp_key.process_guid, 0).actual_lrp_net_info.instance_address
    )


async def test_cell_filter_applies_to_instance_events_only(sim: BbsSimulator, bbs: BbsClient) -> None:
    """A cell-b subscriber sees every desired event but only cell-b's instance events."""
    async with bbs.lrp_instance_events(cell_id="cell-b") as stream:
        sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"], version="v1")
        sim.push_app("app-2", "space-1", "org-1", cells=["cell-b"], version="v1")
        sim.remove_lrp("app-1-v1")
        events = await next_events(stream, 5)
    assert [(e.name, _process_guid(e)) for e in events] == [
        (EventName.DESIRED_LRP_CREATED, "app-1-v1"),
        (EventName.DESIRED_LRP_CREATED, "app-2-v1"),
        (EventName.ACTUAL_LRP_INSTANCE_CHANGED, "app-2-v1"),  # claimed on cell-b
        (EventName.ACTUAL_LRP_INSTANCE_CHANGED, "app-2-v1"),  # running on cell-b
        (EventName.DESIRED_LRP_REMOVED, "app-1-v1"),
    ]


def _process_guid(event: BbsEvent) -> str:
    message = event.message
    if isinstance(message, (pb.DesiredLRPCreatedEvent, pb.DesiredLRPRemovedEvent)):
        return message.desired_lrp.process_guid
    assert isinstance(message, pb.ActualLRPInstanceChangedEvent)
    return message.actual_lrp_key.process_guid


async def test_stream_wire_format_is_bbs_framing(sim: BbsSimulator, pki: Pki) -> None:
    """The bytes exactly as BBS writes them, read off the raw TLS connection: Go's response head,
    then per event one chunk `<hex size>;CRLF` (an empty chunk extension) holding id/event/data lines
    and a blank line, and the terminating chunk when the stream ends."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", int(sim.url.rsplit(":", 1)[1]), ssl=client_context(pki.client), server_hostname=SERVER_NAME
    )
    try:
        body = pb.EventsByCellId().SerializeToString()
        writer.write(
            b"POST /v1/events/lrp_instances.r1 HTTP/1.1\r\nHost: bbs\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        async with asyncio.timeout(5):
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            sim.desire_lrp("app-1", "space-1", "org-1", instances=0, version="v1")
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.removesuffix(b";\r\n"), 16)
            chunk = await reader.readexactly(size + 2)
            sim.drop_streams()
            rest = await reader.read()
    finally:
        writer.close()
    status, *header_lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines if line)
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
    assert headers["Connection"] == "keep-alive"
    assert headers["Transfer-Encoding"] == "chunked"
    assert size_line == b"%x;\r\n" % size
    assert chunk.endswith(b"\r\n") and rest == b"0\r\n\r\n"
    lines = chunk[:-2].decode().split("\n")
    assert lines[:2] == ["id: 0", "event: desired_lrp_created"]
    assert lines[2].startswith("data: ") and lines[3:] == ["", ""]
    message = pb.DesiredLRPCreatedEvent.FromString(base64.b64decode(lines[2].removeprefix("data: "), validate=True))
    assert message.desired_lrp.process_guid == "app-1-v1"


async def test_task_list_and_events(sim: BbsSimulator, bbs: BbsClient) -> None:
    """Tasks carry their cell once running but never an address; staging tasks live in cf-app-staging."""
    async with bbs.task_events() as stream:
        sim.desire_task("task-1", "app-1", "space-1", "org-1")
        sim.desire_task("stage-1", "app-1", "space-1", "org-1", staging=True)
        sim.start_task("task-1", "cell-a")
        events = await next_events(stream, 3)
    assert [e.name for e in events] == [EventName.TASK_CREATED, EventName.TASK_CREATED, EventName.TASK_CHANGED]
    changed = events[2].message
    assert isinstance(changed, pb.TaskChangedEvent)
    assert (changed.before.state, changed.after.state, changed.after.cell_id) == (
        pb.Task.Pending,
        pb.Task.Running,
        "cell-a",
    )
    staging = await bbs.tasks(domain="cf-app-staging")
    assert [t.task_guid for t in staging] == ["stage-1"]
    assert staging[0].task_definition.network.properties["container_workload"] == "staging"
    assert [t.task_guid for t in await bbs.tasks(cell_id="cell-a")] == ["task-1"]


async def test_error_field_becomes_api_error(sim: BbsSimulator, bbs: BbsClient) -> None:
    """HTTP 200 with `error` set is a failure naming the route and BBS's error type."""
    sim.fail_with_error(BbsRoute.ACTUAL_LRPS, times=1, error_type=pb.Error.Deadlock)
    with pytest.raises(BbsApiError) as info:
        await bbs.actual_lrps()
    assert info.value.error_type == "Deadlock"
    assert str(info.value).startswith("bbs /v1/actual_lrps/list: BBS error Deadlock")
    assert await bbs.actual_lrps() == []


async def test_http_500_on_lists_and_streams(sim: BbsSimulator, bbs: BbsClient) -> None:
    sim.fail(None, times=2, status=500)
    with pytest.raises(BbsUnavailableError) as info:
        await bbs.desired_lrps()
    assert info.value.status == 500
    with pytest.raises(BbsUnavailableError, match="HTTP 500"):
        async with bbs.lrp_instance_events():
            pass
    assert await bbs.desired_lrps() == []


@pytest.mark.parametrize(("cut", "reason"), [(False, "ended by the server"), (True, "closed mid-stream")])
async def test_ended_or_cut_stream_raises_unavailable(
    sim: BbsSimulator, bbs: BbsClient, cut: bool, reason: str
) -> None:
    """A stream BBS ends (terminating chunk) or that is cut (no terminator) ends iteration with an
    error saying which, after the events that made it through."""
    async with bbs.lrp_instance_events() as stream:
        sim.desire_lrp("app-1", "space-1", "org-1", instances=0)
        events = await next_events(stream, 1)
        sim.drop_streams(cut=cut)
        with pytest.raises(BbsUnavailableError, match=reason):
            await next_events(stream, 1)
    assert [e.id for e in events] == [0]


async def test_ids_restart_at_zero_on_a_new_connection(sim: BbsSimulator, bbs: BbsClient) -> None:
    for _ in range(2):
        async with bbs.lrp_instance_events() as stream:
            sim.desire_lrp("app-1", "space-1", "org-1", instances=0)
            assert [e.id for e in await next_events(stream, 1)] == [0]


async def test_client_certificate_of_another_ca_is_a_clear_tls_error(sim: BbsSimulator, pki: Pki) -> None:
    """BBS refuses the handshake; the error says our client certificate was rejected."""
    async with BbsClient(sim.url, client_context(pki.client_of_other_ca), server_name=SERVER_NAME) as client:
        with pytest.raises(BbsTlsError) as info:
            await client.actual_lrps()
    assert "rejected our client certificate" in str(info.value), str(info.value)
    assert info.value.reason in {"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE"}


async def test_missing_client_certificate_is_a_clear_tls_error(sim: BbsSimulator, pki: Pki) -> None:
    async with BbsClient(sim.url, client_context(TlsFiles(pki.client.ca)), server_name=SERVER_NAME) as client:
        with pytest.raises(BbsTlsError, match="rejected our client certificate"):
            async with client.lrp_instance_events():
                pass


async def test_server_of_another_ca_or_name_is_a_clear_tls_error(sim: BbsSimulator, pki: Pki) -> None:
    async with BbsClient(sim.url, client_context(pki.trusting_other_ca), server_name=SERVER_NAME) as client:
        with pytest.raises(BbsTlsError, match="server certificate was not accepted") as info:
            await client.actual_lrps()
    assert info.value.reason == "CERTIFICATE_VERIFY_FAILED"
    async with BbsClient(
        sim.url, client_context(pki.client), server_name="policy-server.service.cf.internal"
    ) as client:
        with pytest.raises(BbsTlsError, match="server certificate was not accepted"):
            await client.actual_lrps()


async def test_connection_refused_is_unavailable(pki: Pki) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with BbsClient(f"https://127.0.0.1:{port}", client_context(pki.client), server_name=SERVER_NAME) as client:
        with pytest.raises(BbsUnavailableError):
            await client.actual_lrps()


async def test_evacuating_copy_is_listed_beside_its_replacement(sim: BbsSimulator, bbs: BbsClient) -> None:
    pg = sim.push_app("app-1", "space-1", "org-1", cells=["cell-a"])
    old = sim.instance(pg, 0)
    sim.evacuate(pg, 0)
    listed = await bbs.actual_lrps()
    assert sorted((lrp.presence, lrp.state) for lrp in listed) == [(0, "UNCLAIMED"), (EVACUATING, RUNNING)]
    evacuating = next(lrp for lrp in listed if lrp.presence == EVACUATING)
    assert evacuating.actual_lrp_net_info.instance_address == old.actual_lrp_net_info.instance_address
    sim.start_instance(pg, 0, "cell-b")
    assert [(lrp.presence, lrp.actual_lrp_instance_key.cell_id) for lrp in await bbs.actual_lrps()] == [(0, "cell-b")]


async def test_json_control_endpoint_drives_the_scenario(pki: Pki) -> None:
    """The demo's shell interface: scenario methods as POST /sim/<method>, the state as GET /sim/state."""
    simulator = BbsSimulator(pki.server)
    add_control_routes(simulator)
    async with simulator, aiohttp.ClientSession() as session:
        ctx = client_context(pki.client)

        async def post(method: str, body: object) -> tuple[int, dict[str, object]]:
            async with session.post(
                f"{simulator.url}/sim/{method}", json=body, ssl=ctx, server_hostname=SERVER_NAME
            ) as resp:
                return resp.status, await resp.json()

        rule = {"protocol": "tcp", "destination": "10.0.11.0/24", "ports": "443", "description": "web", "log": True}
        status, body = await post(
            "push_app",
            {"app_guid": "app-1", "space_guid": "s", "org_guid": "o", "cells": ["cell-a"], "egress_rules": [rule]},
        )
        assert status == 200 and isinstance(body["result"], str) and body["result"].startswith("app-1-")
        assert await post("crash", {"process_guid": body["result"], "index": 0}) == (200, {"result": None})
        assert (await post("fail", {"route": "/v1/actual_lrps/list", "times": 1}))[0] == 200
        assert (await post("reboot_cell", {}))[0] == 404
        status, error = await post("scale", {"process_guid": "nope", "instances": 2})
        assert status == 400 and "no desired LRP nope" in str(error["error"])

        async with session.get(f"{simulator.url}/sim/state", ssl=ctx, server_hostname=SERVER_NAME) as resp:
            state = await resp.json()
    assert state["desired_lrps"][0]["egress_rules"] == [
        {"protocol": "tcp", "destinations": ["10.0.11.0/24"], "ports": [443], "log": True}
    ]
    assert [lrp["state"] for lrp in state["actual_lrps"]] == ["UNCLAIMED"]
    assert simulator.requests[BbsRoute.ACTUAL_LRPS] == 0


async def test_slow_bbs_is_a_timeout(sim: BbsSimulator, pki: Pki) -> None:
    sim.delay(BbsRoute.DESIRED_LRPS, 0.5)
    async with BbsClient(sim.url, client_context(pki.client), server_name=SERVER_NAME, timeout=0.05) as client:
        with pytest.raises(BbsUnavailableError, match="timed out"):
            await client.desired_lrps()
